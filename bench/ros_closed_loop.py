"""Closed loop through ROS 2 vs direct simulation, same checkpoint, same seeds.

    flock /tmp/robopolicy-train.lock python bench/ros_closed_loop.py [--episodes 20] [--tasks arm quadrotor track]

For each task, the sim bridge and the policy node run as separate processes over DDS on loopback
(their own ROS domain, localhost only), in real time; every episode is ``sim/reset`` (seed 1000 + i)
-> ``policy/reset`` -> ``sim/start``, and the bridge reports success and the task's metrics. The same
checkpoint is then evaluated directly with ``sim.evaluate`` over the same seeds. Also reported: the
policy node's end-to-end latency (stamp of the observation a chunk was predicted from -> publish of
its first command) and inference time, from its ``policy/metrics``.

- arm: ``robopolicy/robosuite-Lift-joint-v0`` (profile ``sim_panda``), a diffusion ``cpu`` checkpoint
  trained like ``bench/suite.py`` does (50 expert demos, 1000 steps; reused when present);
- quadrotor: ``robopolicy/quadrotor-hover-v0`` (profile ``sim_quadrotor``), the suite's checkpoint;
- track: ``robopolicy/quadrotor-track-v0`` (profile ``sim_quadrotor``; the bridge publishes the reference on
  ``setpoint``, the node differences it for the reference velocity), the best velocity-level tracking
  checkpoint there is: ``bench/quad_policy.py``'s learned tracker if it has been trained, else the suite's.
  Tracking error is compared through ROS and direct: mean position error per step (minus the return over
  the steps, the same on both paths) and, through ROS, the task's RMS error from 1 s on.

Writes bench/results/ros/ros_closed_loop.json and .md (its BENCHMARKS.md section) and a latency plot
under bench/results/plots/. Running a subset of ``--tasks`` replaces those rows and keeps the others.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.machine import machine_info  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SUITE = RESULTS / "suite"
TASKS = {
    "arm": {"task": "robopolicy/robosuite-Lift-joint-v0", "profile": "sim_panda",
            "run": SUITE / "robosuite-Lift-joint-v0-diffusion-cpu-1000"},
    "quadrotor": {"task": "robopolicy/quadrotor-hover-v0", "profile": "sim_quadrotor",
                  "run": SUITE / "quadrotor-hover-v0-diffusion-cpu-1000"},
    "track": {"task": "robopolicy/quadrotor-track-v0", "profile": "sim_quadrotor",
              "run": SUITE / "quadrotor-track-v0-diffusion-cpu-1000",
              "better": RESULTS / "quadrotor" / "quad_policy" / "velocity" / "checkpoint"},
}


def ensure_checkpoint(kind: str) -> Path:
    """The task's checkpoint: a better one where the task names it and it exists, else the suite's (trained
    like bench/suite.py does, collect 50 and 1000 steps, if absent)."""
    better = TASKS[kind].get("better")
    if better is not None and (better / "latest" / "config.json").is_file():
        return better / "latest"
    run = TASKS[kind]["run"]
    if not (run / "latest" / "config.json").is_file():
        from bench.suite import bench_task

        bench_task(TASKS[kind]["task"], "diffusion", "cpu", 50, 1000, 20, 2, SUITE)
    return run / "latest"


def ros_episodes(ckpt: Path, kind: str, episodes: int, seed: int, log_dir: Path) -> dict:
    """Run ``episodes`` episodes through the bridge and the policy node; per-episode reports and metrics."""
    from std_msgs.msg import String
    from std_srvs.srv import Trigger

    from ros_nodes.harness import NodeProcess, SpunNode, isolate, wait_until
    from ros_nodes.qos import STATUS_QOS

    isolate()
    spec = TASKS[kind]
    ros = SpunNode(f"bench_{kind}")
    reports = ros.collect(String, "sim/episode", STATUS_QOS)
    metrics = ros.collect(String, "policy/metrics", 10)
    bridge = NodeProcess("robopolicy-sim-bridge", {"task": spec["task"], "seed": seed, "auto_start": False},
                         log_dir / f"{kind}-bridge.log")
    policy = NodeProcess("robopolicy-policy-node", {"checkpoint": ckpt, "profile": spec["profile"],
                                                    "torch_threads": 1}, log_dir / f"{kind}-policy.log")

    def latest():
        if not (bridge.running() and policy.running()):
            raise RuntimeError(f"a node died:\n{bridge.log()[-2000:]}\n{policy.log()[-2000:]}")
        return json.loads(reports[-1][1].data) if reports else {}

    rows = []
    try:
        wait_until(lambda: metrics and latest().get("state") == "ready", 180, "both nodes to come up")
        for i in range(episodes):
            if i > 0:
                assert ros.call(Trigger, "sim/reset", timeout=30, resend_s=10).success
                wait_until(lambda: latest().get("episode") == i and latest()["state"] == "ready", 30, "reset")
            assert ros.call(Trigger, "policy/reset", resend_s=10).success
            assert ros.call(Trigger, "sim/start", resend_s=10).success
            cap_s = latest()["max_steps"] / _rate(spec["task"])
            wait_until(lambda: latest().get("episode") == i and latest()["state"] == "done", 3 * cap_s + 60,
                       f"episode {i}", period=0.05)
            r = latest()
            rows.append({"episode": i, "seed": r["seed"], "success": r["success"], "steps": r["steps"],
                         "return": r["return"], "commands": r["commands"], "overruns": r["overruns"],
                         "wall_s": r["wall_s"], "info": r["info"]})
            print(f"  ros {kind} episode {i} seed {r['seed']}: success={r['success']} steps={r['steps']} "
                  f"commands={r['commands']} overruns={r['overruns']}", flush=True)
        time.sleep(1.5)  # one more metrics message after the last episode
        final = json.loads(metrics[-1][1].data)
    finally:
        policy.stop()
        bridge.stop()
        ros.close()
    return {"episodes": rows, "metrics": final}


def _spec(task: str):
    import sim

    return sim.task_spec(task)


def _rate(task: str) -> float:
    return _spec(task).control_rate_hz


def direct_episodes(ckpt: Path, task: str, episodes: int, seed: int) -> dict:
    from robopolicy.runtime.runner import CheckpointPolicy
    from sim.evaluate import evaluate

    result = evaluate(CheckpointPolicy(ckpt), task, episodes, seed=seed, workers=2, progress=False)
    return {"success_rate": result.success_rate, "ci95": list(result.ci95),
            "episodes": [{"seed": e.seed, "success": e.success, "steps": e.steps, "return": e.reward}
                         for e in result.per_episode]}


def summarize(kind: str, ros: dict, direct: dict) -> dict:
    from sim.evaluate import wilson_ci

    eps = ros["episodes"]
    n, k = len(eps), sum(e["success"] for e in eps)
    ros_ci = wilson_ci(k, n)
    by_seed = {e["seed"]: e for e in direct["episodes"]}
    agree = sum(by_seed[e["seed"]]["success"] == e["success"] for e in eps if e["seed"] in by_seed)
    m = ros["metrics"]
    row = {
        "kind": kind, "task": TASKS[kind]["task"], "episodes": n,
        "ros_success": k / n, "ros_ci95": list(ros_ci),
        "direct_success": direct["success_rate"], "direct_ci95": direct["ci95"],
        "ros_within_direct_ci": direct["ci95"][0] <= k / n <= direct["ci95"][1],
        # The two are samples of one success rate if their intervals overlap (a stricter reading: each point
        # estimate inside the other's interval; 20/20 next to 18/20 fails that and passes this).
        "cis_overlap": ros_ci[0] <= direct["ci95"][1] and direct["ci95"][0] <= ros_ci[1],
        "same_outcome_per_seed": agree,
        "e2e_latency_ms": m["e2e_latency_ms"], "inference_ms": m["inference_ms"],
        "overruns": sum(e["overruns"] for e in eps),
        "commands_per_step": sum(e["commands"] for e in eps) / max(sum(e["steps"] for e in eps), 1),
        "policy_counters": m["counters"], "e2e_latency_samples_ms": m.get("e2e_latency_samples_ms", []),
    }
    if TASKS[kind]["profile"] == "sim_quadrotor":  # tracking error: mean position error (m) = -return / steps
        row["ros_mean_position_error_m"] = float(np.mean([-e["return"] / e["steps"] for e in eps]))
        row["direct_mean_position_error_m"] = float(np.mean([-e["return"] / e["steps"]
                                                             for e in direct["episodes"]]))
        row["ros_rms_position_error_m"] = float(np.mean([e["info"].get("rms_position_error", np.nan) for e in eps]))
        cap = _spec(TASKS[kind]["task"]).max_steps  # a quadrotor episode ends early only by crashing
        row["ros_crashes"] = sum(e["steps"] < cap for e in eps)
        row["direct_crashes"] = sum(e["steps"] < cap for e in direct["episodes"])
    return row


def plot_latency(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for r in rows:
        samples = np.sort(r["e2e_latency_samples_ms"])
        if len(samples):
            ax.plot(samples, np.linspace(0, 1, len(samples)), label=r["task"].removeprefix("robopolicy/"))
    ax.set_xlabel("observation stamp -> command publish (ms)")
    ax.set_ylabel("fraction of chunks")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_markdown(result: dict, path: Path, plot: Path) -> None:
    machine = result["machine"]
    lines = ["## ROS 2 closed loop vs direct simulation", "",
             f"`python bench/ros_closed_loop.py --episodes {result['episodes']}` on {machine.get('cpu')} "
             f"({machine.get('cores')} cores), torch {machine.get('torch')}. The sim bridge and the policy node run "
             "as separate processes over DDS on loopback in real time; the same checkpoint is evaluated directly "
             "with `sim.evaluate` over the same seeds (1000+). Success with Wilson 95% intervals; latency is "
             "the policy node's, from the stamp of the observation a chunk was predicted from to the publish "
             "of its first command.", "",
             "| task | episodes | ROS success | 95% CI | direct success | 95% CI | ROS in direct CI / CIs overlap | "
             "same outcome per seed | e2e latency p50 / p90 / p99 (ms) | inference p50 / p95 (ms) | bridge overruns |",
             "|---|---:|---:|---|---:|---|---|---:|---|---|---:|"]
    for r in result["rows"]:
        e, inf = r["e2e_latency_ms"], r["inference_ms"]
        lines.append(f"| {r['task'].removeprefix('robopolicy/')} | {r['episodes']} | {r['ros_success']:.2f} | "
                     f"[{r['ros_ci95'][0]:.2f}, {r['ros_ci95'][1]:.2f}] | {r['direct_success']:.2f} | "
                     f"[{r['direct_ci95'][0]:.2f}, {r['direct_ci95'][1]:.2f}] | "
                     f"{_yes(r['ros_within_direct_ci'])} / {_yes(r['cis_overlap'])} | "
                     f"{r['same_outcome_per_seed']}/{r['episodes']} | "
                     f"{e['p50']} / {e['p90']} / {e['p99']} | {inf['p50']} / {inf['p95']} | {r['overruns']} |")
    lines += ["", "What the node did (counters over all episodes; a busy shared machine shows up as inference spikes, "
                  "stale frames, chunks landing after their horizon and starved ticks, i.e. ticks without an action: "
                  "an arm then sends nothing, a quadrotor hovers):", "",
              "| task | commands per sim step | chunks | chunks stale on landing | stale frames | starved ticks | "
              "held ticks (stale input) | inference max (ms) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        c = r["policy_counters"]
        lines.append(f"| {r['task'].removeprefix('robopolicy/')} | {r['commands_per_step']:.2f} | {c.get('chunks', 0)} | "
                     f"{c.get('chunks_stale', 0)} | {c.get('frames_stale', 0)} | {c.get('starved_ticks', 0)} | "
                     f"{c.get('held_held_stale', 0)} | {r['inference_ms']['max']} |")
    quad = [r for r in result["rows"] if "ros_mean_position_error_m" in r]
    if quad:
        lines += ["", "Quadrotor position error (m): mean per step over the episode (minus the return over the steps, "
                      "both paths), and through ROS the task's RMS from 1 s on; crashes end an episode early.", "",
                  "| task | checkpoint | mean error ROS | mean error direct | RMS ROS | crashes ROS / direct |",
                  "|---|---|---:|---:|---:|---|"]
        for q in quad:
            ckpt = Path(q.get("checkpoint", "")).parent  # the run directory, relative to bench/results
            ckpt = ckpt.relative_to(RESULTS).as_posix() if ckpt.is_relative_to(RESULTS) else ckpt.name
            lines.append(f"| {q['task'].removeprefix('robopolicy/')} | {ckpt} | "
                         f"{q['ros_mean_position_error_m']:.4f} | {q['direct_mean_position_error_m']:.4f} | {q['ros_rms_position_error_m']:.4f} | "
                         f"{q.get('ros_crashes', '-')} / {q.get('direct_crashes', '-')} |")
    rel = Path(os.path.relpath(plot, path.parent))
    lines += ["", f"![end-to-end latency]({rel.as_posix()})", ""]
    path.write_text("\n".join(lines))


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--out", default=str(RESULTS / "ros"))
    parser.add_argument("--render-only", action="store_true", help="rewrite the .md and plot from the JSON")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot = out.parent / "plots" / "ros_closed_loop_latency.png"  # results/plots for the default --out
    if args.render_only:
        result = json.loads((out / "ros_closed_loop.json").read_text())
        for r in result["rows"]:
            direct = {"success_rate": r["direct_success"], "ci95": r["direct_ci95"], "episodes": r["direct_episodes"]}
            ros = {"episodes": r["ros_episodes"], "metrics": {"e2e_latency_ms": r["e2e_latency_ms"],
                   "inference_ms": r["inference_ms"], "counters": r["policy_counters"],
                   "e2e_latency_samples_ms": r["e2e_latency_samples_ms"]}}
            r.update(summarize(r["kind"], ros, direct))
        (out / "ros_closed_loop.json").write_text(json.dumps(result, indent=2))
        plot_latency(result["rows"], plot)
        write_markdown(result, out / "ros_closed_loop.md", plot)
        return

    rows = []
    for kind in args.tasks:
        ckpt = ensure_checkpoint(kind)
        print(f"{kind}: {TASKS[kind]['task']} through ROS ({args.episodes} episodes, checkpoint {ckpt})", flush=True)
        t0 = time.perf_counter()
        ros = ros_episodes(ckpt, kind, args.episodes, args.seed, out)
        ros_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        direct = direct_episodes(ckpt, TASKS[kind]["task"], args.episodes, args.seed)
        row = summarize(kind, ros, direct)
        row.update(ros_seconds=ros_s, direct_seconds=time.perf_counter() - t0, checkpoint=str(ckpt),
                   ros_episodes=ros["episodes"], direct_episodes=direct["episodes"])
        rows.append(row)

    previous = out / "ros_closed_loop.json"
    if previous.is_file():  # keep the rows of the tasks not run this time
        run_kinds = {r["kind"] for r in rows}
        kept = [r for r in json.loads(previous.read_text())["rows"] if r["kind"] not in run_kinds]
        rows = sorted(kept + rows, key=lambda r: list(TASKS).index(r["kind"]))
    result = {"benchmark": "ros_closed_loop", "episodes": args.episodes, "seed": args.seed,
              "machine": machine_info(), "rows": rows}
    (out / "ros_closed_loop.json").write_text(json.dumps(result, indent=2))
    plot_latency(rows, plot)
    write_markdown(result, out / "ros_closed_loop.md", plot)  # the BENCHMARKS.md section (bench/benchmarks_md.py)

    print(f"\n{'task':<28}{'ROS':>6}{'direct':>8}  {'direct CI':<14}{'within':>7}  {'e2e p50/p90/p99 ms':<22}"
          f"{'infer p50 ms':>12}")
    for r in rows:
        e = r["e2e_latency_ms"]
        print(f"{r['task'].removeprefix('robopolicy/'):<28}{r['ros_success']:>6.2f}{r['direct_success']:>8.2f}  "
              f"[{r['direct_ci95'][0]:.2f},{r['direct_ci95'][1]:.2f}]   {str(r['ros_within_direct_ci']):>6}  "
              f"{e['p50']}/{e['p90']}/{e['p99']:<10}{r['inference_ms']['p50']:>12}")
    print(f"wrote {out / 'ros_closed_loop.json'} and {out / 'ros_closed_loop.md'}")


if __name__ == "__main__":
    main()
