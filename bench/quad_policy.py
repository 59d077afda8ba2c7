"""A learned quadrotor tracker: DART demonstrations -> flow policy -> closed-loop tracking, motor and velocity level.

    flock /tmp/robopolicy-train.lock .venv/bin/python bench/quad_policy.py [--runs motors velocity]
        [--episodes 20] [--workers 2]

Per run: collect expert demonstrations with execution noise (the env perturbs what it executes, the store keeps
the expert's corrective label; DART), train, then fly the policy on evaluation seeds 1000+i and report what
"tracks" means in numbers: crashes, airborne fraction, RMS / mean position error from 1 s on, the task's
success (RMS < 5 cm), beside the scripted expert, the same expert without its velocity integral (the best a
memoryless policy can hope for: the integral is the only part of the expert that the state does not show) and
a hover-in-place baseline, all on the same seeds. The figure-eight is the headline reference; the task's own
mixed references (half figure-eights, half waypoints) are reported too.

Design, from what fails at the motor level (see the README section written to bench/results/quad_policy.md):
- the transformer backbone: it embeds the state linearly, so reference minus position (the tracking error) is
  one linear feature; the U-Net's FiLM puts each raw input through a Mish first, which blurs that difference.
- short chunks (H=4, To=2, Ta=2 at 100 Hz): 20 ms open loop, shorter than the 20-50 ms motor lag.
- flow matching sampled with one Euler step: the conditional mean of the expert's action, cheap per step.
- a small network trained long (8000 steps): the motor labels are a stiff, precise function of the rates.

Resumable: stores, checkpoints and per-case results live under bench/results/quadrotor/quad_policy/ and each
stage is skipped when its output exists. Writes bench/results/quad_policy.{json,md} and a top-view plot.
"""

import argparse
import json
import multiprocessing as mp
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.machine import machine_info  # noqa: E402

RESULTS = ROOT / "bench" / "results"
WORK = RESULTS / "quadrotor" / "quad_policy"
EVAL_SEED = 1000  # collection seeds are 0..demos-1 (DESIGN §4)


@dataclass
class Run:
    """One collect -> train -> eval experiment."""

    task: str
    demos: int
    action_noise: tuple[float, float]  # DART execution noise std range, drawn per episode
    policy: str
    preset: str
    steps: int
    policy_overrides: dict = field(default_factory=dict)
    train_overrides: dict = field(default_factory=dict)
    eval_nfe: tuple[int, ...] = (1,)  # Euler steps to evaluate the one checkpoint with
    before: str | None = None  # an earlier checkpoint for the same task, evaluated beside it ("before")


# One policy shape for both levels (a preset to add, see the markdown): a small causal transformer, 4-step chunks
# of which 2 run, 1 Euler step (the conditional mean: sampling noise is noise on the motors).
QUAD_POLICY = dict(n_layer=2, n_emb=64, horizon=4, n_obs_steps=2, n_action_steps=2, num_inference_steps=1)
RUNS = {
    "motors": Run("quadrotor-track-motors-v0", demos=100, action_noise=(0.0, 0.3), policy="flow",
                  preset="cpu-transformer", steps=8000, policy_overrides=QUAD_POLICY),
    "velocity": Run("quadrotor-track-v0", demos=100, action_noise=(0.0, 0.2), policy="flow",
                    preset="cpu-transformer", steps=4000, policy_overrides=QUAD_POLICY,
                    before="bench/results/suite/quadrotor-track-v0-diffusion-cpu-1000/latest"),
}


# ----------------------------------------------------------------------------------------- collect
def collect_dart(task: str, episodes: int, out: Path, action_noise: tuple[float, float]) -> dict:
    """Expert episodes (seeds 0..episodes-1) into a store; the env executes the expert's action plus noise.

    ``sim.collect.collect`` records exactly what it executes, so the noisy rollout needs its own short loop.
    """
    from robopolicy.store import EpisodeWriter
    from sim.registry import canonical_name, make, make_expert, task_spec

    name = canonical_name(task)
    spec = task_spec(name)
    env, expert = make(name, action_noise=action_noise), make_expert(name)
    attrs = {"action_key": "action", "obs_keys": ["state"], "action_semantics": spec.action_semantics,
             "control_rate_hz": float(spec.control_rate_hz)}
    t0, kept, steps = time.perf_counter(), [], 0
    with EpisodeWriter(out, attrs=attrs) as writer:
        writer.set_attrs(task=name, expert=f"{expert} + DART noise U{list(action_noise)}",
                         provenance={"source": "scripted_expert", "generator": "bench/quad_policy.py",
                                     "action_noise": list(action_noise)})
        for seed in range(episodes):
            obs, _ = env.reset(seed=seed)
            expert.reset()
            for t in range(env.max_steps):
                action = expert(obs)
                timestamp = np.float64(t / spec.control_rate_hz)
                writer.add_step({"state": obs["state"], "action": action, "timestamp": timestamp})
                obs, _, terminated, truncated, info = env.step(action)
                if terminated or truncated:
                    break
            if info["crashed"]:
                writer.discard()
                continue
            writer.commit()
            kept.append(seed)
            steps += t + 1
        writer.set_attrs(collection_seeds=kept)
    env.close()
    return {"episodes": len(kept), "crashed": episodes - len(kept), "steps": steps, "seconds": time.perf_counter() - t0}


# ----------------------------------------------------------------------------------------- rollouts
_WORKER: dict = {}


def _controller(kind: str, task: str, checkpoint: str | None, nfe: int | None):
    """The thing that flies: a trained policy, or one of the reference controllers (expert, memoryless, hover)."""
    from sim.quadrotor.control import Gains
    from sim.quadrotor.expert import QuadrotorExpert

    action = "motor_commands" if "motors" in task else "velocity_setpoint"
    if kind in ("policy", "before"):
        from robopolicy.runtime import PolicyRunner

        return PolicyRunner.from_checkpoint(checkpoint, num_inference_steps=nfe)
    gains = Gains(vel_i=0.0) if kind == "memoryless" else Gains()
    return QuadrotorExpert("track", action, gains=gains)


def _hover_in_place(obs: dict) -> dict:
    """The state with the reference frozen at the figure's centre and start point: hovering where it began."""
    state = obs["state"].copy()
    state[13:15], state[16:19] = 0.0, 0.0
    return {"state": state}


def rollout(job: tuple) -> dict:
    """One evaluation episode; returns its tracking metrics (and the top-view path when asked)."""
    kind, task, checkpoint, nfe, reference, seed, keep_path = job
    key = (kind, task, checkpoint, nfe, reference)
    if _WORKER.get("key") != key:
        import torch

        from sim.registry import make

        torch.set_num_threads(1)
        controller = _controller(kind, task, checkpoint, nfe)
        _WORKER.update(key=key, env=make(task, reference=reference), controller=controller)
    env, controller = _WORKER["env"], _WORKER["controller"]
    obs, reset_info = env.reset(seed=seed)
    if kind in ("policy", "before"):
        controller.reset(seed=seed)  # reproducible sampling noise per episode
    else:
        controller.reset()
    errors, path, t0 = [], [], time.perf_counter()
    while True:
        if kind in ("policy", "before"):
            action = controller.act(obs)
        else:
            action = controller(_hover_in_place(obs) if kind == "hover" else obs)
        obs, _, terminated, truncated, info = env.step(action)
        errors.append(info["position_error"])
        if keep_path:
            path.append(obs["state"][[0, 1, 13, 14]].tolist())  # x, y, reference x, reference y
        if terminated or truncated:
            break
    settled = np.asarray(errors[int(round(1.0 * env.control_rate_hz)) - 1:])  # as the env's RMS: from 1 s on
    return {"seed": seed, "reference": reset_info["reference"], "success": bool(info["success"]),
            "crashed": bool(info["crashed"]), "steps": info["steps"], "airborne": info["steps"] / env.max_steps,
            "rms_m": info["rms_position_error"], "mean_m": float(settled.mean()) if len(settled) else float("nan"),
            "max_m": float(settled.max()) if len(settled) else float("nan"), "seconds": time.perf_counter() - t0,
            "path": path or None}


def evaluate_case(kind: str, task: str, reference: str, episodes: int, workers: int, checkpoint: str | None = None,
                  nfe: int | None = None, keep_path: int = 1) -> dict:
    """``episodes`` seeded episodes (seeds 1000+i) of one controller; per-episode rows plus the aggregates."""
    from sim.evaluate import wilson_ci

    jobs = [(kind, task, checkpoint, nfe, reference, EVAL_SEED + i, i < keep_path) for i in range(episodes)]
    with mp.get_context("spawn").Pool(workers) as pool:
        rows = pool.map(rollout, jobs, chunksize=1)
    k = sum(r["success"] for r in rows)
    flown = [r for r in rows if not r["crashed"]]
    label = {"policy": f"policy (euler-{nfe})", "before": "before: suite diffusion cpu"}.get(kind, kind)
    return {
        "controller": label, "task": task, "reference": reference,
        "episodes": episodes, "success_rate": k / episodes, "ci95": list(wilson_ci(k, episodes)),
        "crashes": sum(r["crashed"] for r in rows), "airborne_fraction": float(np.mean([r["airborne"] for r in rows])),
        "rms_mean_m": float(np.mean([r["rms_m"] for r in flown])) if flown else None,
        "rms_median_m": float(np.median([r["rms_m"] for r in flown])) if flown else None,
        "rms_max_m": float(np.max([r["rms_m"] for r in flown])) if flown else None,
        "mean_error_m": float(np.mean([r["mean_m"] for r in flown])) if flown else None,
        "seconds_per_episode": float(np.mean([r["seconds"] for r in rows])),
        "per_episode": rows,
    }


# ----------------------------------------------------------------------------------------- stages
def cached(path: Path, make):
    """The JSON at ``path``, computed by ``make()`` and written there first if it is missing (resumability)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(make()))
        tmp.rename(path)
    return json.loads(path.read_text())


def run_experiment(name: str, run: Run, episodes: int, workers: int) -> dict:
    from robopolicy.train.trainer import train

    work = WORK / name
    store, ckpt = work / "demos.zarr", work / "checkpoint"
    collect = cached(work / "collect.json", lambda: collect_dart(run.task, run.demos, store, run.action_noise))
    print(f"[{name}] demos: {collect}", flush=True)

    def do_train():
        t0 = time.perf_counter()
        summary = train(str(store), str(ckpt), run.policy, run.preset, {"steps": run.steps, **run.train_overrides},
                        run.policy_overrides, cpu=True, progress=False)
        return {"seconds": time.perf_counter() - t0, "summary": summary}

    training = cached(work / "train.json", do_train)
    print(f"[{name}] trained in {training['seconds']:.0f}s", flush=True)

    cases = []
    # The figure-eight gets every controller; the task's mixed references the policy's first sampler and the expert.
    plan = [("figure8", "policy", n) for n in run.eval_nfe]
    plan += [("figure8", kind, None) for kind in ("expert", "memoryless", "hover")]
    plan += [("mixed", "policy", run.eval_nfe[0]), ("mixed", "expert", None)]
    if run.before:
        plan += [("figure8", "before", None)]
    for reference, kind, nfe in plan:
        if True:
            label = f"{kind}{nfe or ''}-{reference}"
            checkpoint = str(ROOT / run.before) if kind == "before" else str(ckpt / "latest")
            case = cached(work / f"eval-{label}.json",
                          lambda: evaluate_case(kind, run.task, reference, episodes, workers, checkpoint, nfe))
            print(f"[{name}] {label}: crashes {case['crashes']} airborne {case['airborne_fraction']:.3f} "
                  f"rms {_cm(case['rms_mean_m'])} success {case['success_rate']:.2f}", flush=True)
            cases.append(case)
    return {"run": name, "config": asdict(run), "collect": collect, "train_seconds": training["seconds"],
            "cases": cases}


# ----------------------------------------------------------------------------------------- report
def _cm(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def table(result: dict) -> list[str]:
    lines = ["| reference | controller | crashes | airborne | RMS mean (cm) | RMS median | RMS max | mean error (cm) "
             "| success (RMS < 5 cm) | 95% CI |", "|---|---|---|---|---|---|---|---|---|---|"]
    for c in result["cases"]:
        lines.append(f"| {c['reference']} | {c['controller']} | {c['crashes']}/{c['episodes']} "
                     f"| {c['airborne_fraction']:.3f} | {_cm(c['rms_mean_m'])} | {_cm(c['rms_median_m'])} "
                     f"| {_cm(c['rms_max_m'])} | {_cm(c['mean_error_m'])} | {c['success_rate']:.2f} "
                     f"| [{c['ci95'][0]:.2f}, {c['ci95'][1]:.2f}] |")
    return lines


def plot_top_view(result: dict, png: Path) -> None:
    """Seed 1000's figure-eight from above: the reference, the expert, and the policy with each sampler."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    ref_drawn = False
    for c in result["cases"]:
        if c["reference"] != "figure8" or c["controller"] in ("hover", "memoryless") or not c["per_episode"][0]["path"]:
            continue
        p = np.asarray(c["per_episode"][0]["path"])
        if not ref_drawn:
            ax.plot(p[:, 2], p[:, 3], "k--", lw=2, label="reference")
            ref_drawn = True
        ax.plot(p[:, 0], p[:, 1], lw=1, label=c["controller"])
        if c["per_episode"][0]["crashed"]:
            ax.plot(p[-1, 0], p[-1, 1], "rx", ms=10)
    ax.set(xlabel="x (m, east)", ylabel="y (m, north)", aspect="equal",
           title=f"{result['config']['task']}, seed {EVAL_SEED}, top view")
    ax.legend(fontsize=8)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def write_markdown(results: list[dict], path: Path) -> None:
    lines = ["## Learned quadrotor tracking (motor commands and velocity set points)", "",
             "`bench/quad_policy.py`: DART demonstrations (expert labels, noisy execution) -> flow policy "
             "(transformer backbone) -> 15 s episodes on evaluation seeds 1000+i, domain-randomised vehicle and "
             "wind. RMS and mean position error from 1 s on, over the episodes that did not crash. *memoryless* is "
             "the expert without its velocity integral (the part of the expert the state does not show); *hover* "
             "holds the start point (the figure's centre).", "",
             "Reading: at the motor level no episode crashes and the policy follows the eight at 6-7 cm RMS "
             "against the expert's 0.9 cm and hovering's 74 cm. Its floor is the *memoryless* row: the expert's "
             "velocity integral learns each randomised vehicle's thrust deficit, which a policy conditioned on two "
             "states cannot see (mass x0.8-1.2, thrust x0.85-1.15 move the hover command by up to +-0.22), so "
             "half of those episodes already miss the 5 cm bar. At the velocity level the onboard cascade holds "
             "the integral and the expert is a function of the state; there the same recipe cuts the suite "
             "checkpoint's 23 cm to 6 cm.", ""]
    for r in results:
        c = r["config"]
        po = c["policy_overrides"]
        lines += [f"### `{c['task']}`", "",
                  f"{r['collect']['episodes']} demonstrations (DART noise std U{c['action_noise']}), "
                  f"`{c['policy']}` `{c['preset']}` H={po['horizon']} To={po['n_obs_steps']} "
                  f"Ta={po['n_action_steps']}, {c['steps']} steps ({r['train_seconds']:.0f} s).", "", *table(r), ""]
        png = RESULTS / "plots" / f"quad_policy_{r['run']}.png"
        plot_top_view(r, png)
        lines += [f"![{r['run']} figure-eight, top view](plots/{png.name})", ""]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    results = [run_experiment(name, RUNS[name], args.episodes, args.workers) for name in args.runs]
    for r in results:
        print(f"\n{r['config']['task']}")
        print("\n".join(table(r)))
    slim = [{**r, "cases": [{k: v for k, v in c.items() if k != "per_episode"}
                            | {"per_episode": [{k: v for k, v in e.items() if k != "path"} for e in c["per_episode"]]}
                            for c in r["cases"]]} for r in results]
    (RESULTS / "quad_policy.json").write_text(json.dumps({"machine": machine_info(), "args": vars(args),
                                                          "results": slim}, indent=1))
    write_markdown(results, RESULTS / "quad_policy.md")


if __name__ == "__main__":
    main()
