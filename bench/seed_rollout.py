"""SeedPolicy's cost per chunk over a long rollout: latency and memory stay flat (its memory is a fixed-size state).

    python bench/seed_rollout.py [--checkpoints CKPT ...] [--task robosuite-Lift-v0] [--steps 1000]

Drives a real simulated task through PolicyRunner for `--steps` control steps without resetting the policy:
when the env's episode ends it is reset, but the policy's latent state is carried on, so by the end the state
has been updated once per chunk for the whole rollout (125 updates at Ta = 8). At every chunk it records the
latency of the step that plans (batch 1, one torch thread), the process's resident memory (RSS), the size of
the carried state and, on a GPU, torch's allocated memory. Flatness is the slope of latency and RSS against the
step, and the median of the last 20% of chunks against the first 20% (after warm-up).

Default checkpoints: the grid's SeedPolicy cells (bench/results/grid/<task>/seed-To2-5min, seed-To16-5min);
`--random-init` measures untrained policies of those presets instead (the cost does not depend on the weights).
Writes bench/results/seed_rollout.json, .md and plots/seed_rollout.png.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.machine import machine_info  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
GRID = RESULTS / "grid"


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def random_init_runner(task: str, preset: str, device: str):
    """An untrained SeedPolicy of `preset`, normalised with the grid store's statistics of `task`."""
    from robopolicy.policies import build_config, get_policy_class
    from robopolicy.runtime import PolicyRunner
    from robopolicy.store import DemoStore, Normalizer

    store = DemoStore.open(GRID / f"{task}.zarr")
    keys = [store.action_key, *store.obs_keys]
    normalizer = Normalizer.from_store_stats({k: store.stats(k) for k in keys}, {k: "minmax" for k in keys})
    shapes = {k: list(store.load([k])[k].shape[1:]) for k in store.obs_keys}
    action_dim = store.load([store.action_key])[store.action_key].shape[-1]
    torch.manual_seed(0)
    policy = get_policy_class("seed")(build_config("seed", preset, shapes, action_dim)).to(device)
    return PolicyRunner(policy, normalizer, {"action_key": store.action_key}, device, seed=0)


def rollout(runner, task: str, steps: int, device: str) -> dict:
    import sim

    env = sim.make(f"robopolicy/{task}")
    obs, _ = env.reset(seed=1000)
    runner.reset(seed=0)
    rows, episodes = [], 1
    for step in range(steps):
        plans = not runner.queue
        t0, cpu0 = time.perf_counter(), time.thread_time()
        action = runner.act(obs)
        if device == "cuda":
            torch.cuda.synchronize()
        latency, cpu = time.perf_counter() - t0, time.thread_time() - cpu0
        if plans:
            state = runner.policy.state
            # CPU time of this thread (torch runs on it alone) is what the chunk costs, whatever else the
            # shared machine runs meanwhile; wall-clock latency also counts the waits for a core.
            rows.append({"step": step, "latency_ms": 1e3 * latency, "cpu_ms": 1e3 * cpu, "rss_mb": rss_mb(),
                         "state_bytes": int(state.numel() * state.element_size()),
                         "cuda_allocated_mb": torch.cuda.memory_allocated() / 2**20 if device == "cuda" else None})
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:  # a new episode for the env; the policy keeps its state on purpose
            obs, _ = env.reset(seed=1000 + episodes)
            episodes += 1
    env.close()
    return {"chunks": rows, "env_episodes": episodes}


def flatness(rows: list[dict], key: str, warmup: int = 3) -> dict:
    """Slope per 1,000 steps (least squares) and last-20% median / first-20% median, after `warmup` chunks."""
    rows = rows[warmup:]
    x = np.array([r["step"] for r in rows], dtype=float)
    y = np.array([r[key] for r in rows], dtype=float)
    fifth = max(1, len(y) // 5)
    return {"slope_per_1000_steps": float(np.polyfit(x, y, 1)[0] * 1000), "first_median": float(np.median(y[:fifth])),
            "last_median": float(np.median(y[-fifth:])), "last_over_first": float(np.median(y[-fifth:]) /
                                                                                  np.median(y[:fifth])),
            "min": float(y.min()), "max": float(y.max())}


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for i, run in enumerate(runs):
        steps = [r["step"] for r in run["chunks"]]
        color = f"C{i}"
        axes[0].plot(steps, [r["latency_ms"] for r in run["chunks"]], ".-", ms=3, lw=0.8, color=color,
                     label=f"{run['label']} (wall)")
        axes[0].plot(steps, [r["cpu_ms"] for r in run["chunks"]], "--", lw=1.2, color=color, alpha=0.7,
                     label="  CPU time")
        axes[1].plot(steps, [r["rss_mb"] for r in run["chunks"]], ".-", ms=3, lw=0.8, color=color,
                     label=run["label"])
    axes[0].set(xlabel="control step", ylabel="ms per planning step", title="latency per chunk (wall and CPU)")
    axes[1].set(xlabel="control step", ylabel="resident memory (MiB)", title="process memory per chunk")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylim(bottom=0)
    fig.suptitle("SeedPolicy over one long rollout: the state is updated every chunk, never reset", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def markdown(result: dict, plot_rel: str) -> str:
    lines = ["## SeedPolicy: latency and memory over a 1,000-step rollout (`bench/seed_rollout.py`)", "",
             f"Task {result['task']}, {result['steps']} control steps through PolicyRunner, batch 1, one torch "
             "thread, the policy's state carried across the whole rollout (the env is reset when its episode "
             "ends, the policy is not). Medians over the first and last fifth of the chunks, after 3 warm-up "
             f"chunks. Machine: {result['machine'].get('cpu', '?')} (shared with other jobs).", "",
             "| policy | chunks | state | latency first → last (ms) | latency slope / 1k steps | CPU ms first → last "
             "| RSS first → last (MiB) | RSS slope / 1k steps |", "|---|---|---|---|---|---|---|---|"]
    for run in result["runs"]:
        lat, cpu, rss = run["latency"], run["cpu"], run["rss"]
        lines.append(f"| {run['label']} | {len(run['chunks'])} | {run['chunks'][-1]['state_bytes'] / 1024:.1f} KiB "
                     f"| {lat['first_median']:.1f} → {lat['last_median']:.1f} | {lat['slope_per_1000_steps']:+.2f} ms "
                     f"| {cpu['first_median']:.1f} → {cpu['last_median']:.1f} "
                     f"| {rss['first_median']:.0f} → {rss['last_median']:.0f} | {rss['slope_per_1000_steps']:+.1f} MiB |")
    lines += ["", f"![SeedPolicy latency and memory per chunk]({plot_rel})", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="robosuite-Lift-v0")
    parser.add_argument("--checkpoints", nargs="*", help="SeedPolicy checkpoints (default: the grid's seed cells)")
    parser.add_argument("--random-init", action="store_true", help="untrained cpu / cpu-long SeedPolicies")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(RESULTS / "seed_rollout.json"))
    args = parser.parse_args()
    task = args.task.removeprefix("robopolicy/")
    torch.set_num_threads(1)

    from robopolicy.runtime import PolicyRunner

    if args.random_init:
        runners = [(f"{preset} (untrained)", random_init_runner(task, preset, args.device))
                   for preset in ("cpu", "cpu-long")]
    else:
        paths = args.checkpoints or [p for p in (GRID / task / "seed-To2-5min" / "latest",
                                                 GRID / task / "seed-To16-5min" / "latest") if p.exists()]
        if not paths:
            raise SystemExit(f"no SeedPolicy checkpoint for {task} in {GRID}: run bench/grid.py first, pass "
                             "--checkpoints, or use --random-init")
        runners = [(Path(p).parent.name, PolicyRunner.from_checkpoint(p, args.device, seed=0)) for p in paths]

    runs = []
    for label, runner in runners:
        c = runner.config
        run = {"label": f"{label}: To={c.n_obs_steps}, H={c.horizon}, Ta={c.n_action_steps}, {runner.sampler}"}
        run.update(rollout(runner, task, args.steps, args.device))
        run.update(latency=flatness(run["chunks"], "latency_ms"), cpu=flatness(run["chunks"], "cpu_ms"),
                   rss=flatness(run["chunks"], "rss_mb"),
                   state_bytes_constant=len({r["state_bytes"] for r in run["chunks"]}) == 1)
        runs.append(run)
        print(f"{run['label']:<60} latency {run['latency']['first_median']:.1f} -> "
              f"{run['latency']['last_median']:.1f} ms (slope {run['latency']['slope_per_1000_steps']:+.2f} ms/1k "
              f"steps), CPU {run['cpu']['first_median']:.1f} -> {run['cpu']['last_median']:.1f} ms, "
              f"RSS {run['rss']['first_median']:.0f} -> {run['rss']['last_median']:.0f} MiB, state "
              f"{run['chunks'][-1]['state_bytes']} B constant={run['state_bytes_constant']}")

    out = Path(args.out)
    plot_path = out.parent / "plots" / "seed_rollout.png"
    plot(runs, plot_path)
    result = {"benchmark": "seed_rollout", "task": task, "steps": args.steps, "device": args.device,
              "machine": machine_info(), "runs": runs}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(markdown(result, os.path.relpath(plot_path, out.parent)))
    print(f"wrote {out}, {out.with_suffix('.md')} and {plot_path}")


if __name__ == "__main__":
    main()
