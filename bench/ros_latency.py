"""Latency and control rate of the ROS 2 policy node, closed loop with the sim bridge, over DDS on loopback.

    flock /tmp/robopolicy-train.lock .venv/bin/python bench/ros_latency.py [--seconds 20]

For each robot and checkpoint, the sim bridge and the policy node run as separate processes (own ROS
domain, localhost only) and the node runs at a fixed control rate:

| robot | task / profile | rate | profile's rate | bridge speed |
|---|---|---|---|---|
| arm | ``robosuite-Lift-joint-v0`` / ``sim_panda`` | 50 Hz | 20 Hz | 2.5x real time |
| quadrotor | ``quadrotor-hover-v0`` / ``sim_quadrotor`` | 100 Hz | 50 Hz | 2x real time |

The node's rate is set with its ``control_rate_hz`` parameter; the bridge steps faster than real time
(``rate_scale``) so that its sensors arrive at that rate too.

and two checkpoints each: Diffusion Policy sampled with DDIM-10 (the suite's ``cpu`` checkpoints, 1000
steps) and a flow policy sampled with 4 Euler steps (``cpu`` preset, 300 steps on the same store; trained
here when absent: quality is not what is measured).

Measured over ``--seconds`` after a warm-up:

- observation-to-command latency: the node's own end-to-end figure, from the stamp of the observation a
  chunk was predicted from to the publish of that chunk's first command (p50 / p99), and its inference time;
- the achieved control rate and jitter, from the commands as the robot receives them: rate, std and p99
  of the inter-command intervals (from the receive times and from the publish stamps), ticks missed
  (an arm publishes nothing on a held tick), and the DDS delay (receive time - publish stamp);
- the load average before and after, since the 2 cores are shared.

Writes bench/results/ros_latency.json and .md (its BENCHMARKS.md section) and
bench/results/plots/ros_latency.png.
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
ROBOTS = {
    "arm": {"task": "robopolicy/robosuite-Lift-joint-v0", "profile": "sim_panda", "rate_hz": 50.0},
    "quadrotor": {"task": "robopolicy/quadrotor-hover-v0", "profile": "sim_quadrotor", "rate_hz": 100.0},
}
INFERENCE = {"worker": "the node's inference worker process (inference_process:=true, the default)",
             "in-process": "a thread of the node's own process (inference_process:=false)"}
POLICIES = {  # name: (policy, run dir suffix, sampler, steps, more node parameters)
    "DP DDIM-10": ("diffusion", "diffusion-cpu-1000", "ddim", 10, {}),
    # the compiled bf16 fast path (fast_unet.compile_step): the node's warm-up compiles it, 1-3 min
    "DP DDIM-10 compiled bf16": ("diffusion", "diffusion-cpu-1000", "ddim", 10, {"precision": "bf16", "compile": True}),
    "flow Euler-4": ("flow", "flow-cpu-300", "euler", 4, {}),
}
FLOW_STEPS = 300


def checkpoint(robot: str, policy_label: str) -> Path:
    """The run's latest checkpoint; a missing flow one is trained here (cpu preset, FLOW_STEPS steps)."""
    policy, suffix, *_ = POLICIES[policy_label]
    name = ROBOTS[robot]["task"].removeprefix("robopolicy/")
    run = SUITE / f"{name}-{suffix}"
    if not (run / "latest" / "config.json").is_file():
        if policy != "flow":
            raise FileNotFoundError(f"{run}/latest is missing: run bench/suite.py for {name} first")
        from robopolicy.train.trainer import train

        print(f"training {run} ({FLOW_STEPS} steps)", flush=True)
        train(str(SUITE / f"{name}.zarr"), str(run), policy_name="flow", preset="cpu",
              train_overrides={"steps": FLOW_STEPS}, progress=False, cpu=True)
    return run / "latest"


def measure(robot: str, policy_label: str, ckpt: Path, seconds: float, warmup_s: float, log_dir: Path,
            inference: str = "worker") -> dict:
    """One closed-loop run: bridge + policy node; the commands and the node's metrics over ``seconds``."""
    from geometry_msgs.msg import TwistStamped
    from std_msgs.msg import String
    from trajectory_msgs.msg import JointTrajectory

    from ros_nodes import convert
    from ros_nodes.harness import NodeProcess, SpunNode, stop_all, wait_alive

    spec, (_, _, sampler, steps, params) = ROBOTS[robot], POLICIES[policy_label]
    import sim

    task_rate = sim.task_spec(spec["task"]).control_rate_hz
    is_arm = robot == "arm"
    ros = SpunNode(f"bench_latency_{robot}")
    commands = ros.collect(JointTrajectory if is_arm else TwistStamped, "joint_trajectory" if is_arm else "cmd_vel",
                           100)
    metrics = ros.collect(String, "policy/metrics", 10)
    tag = f"{robot}-{policy_label.replace(' ', '_')}-{inference}"
    nodes = [NodeProcess("robopolicy-sim-bridge", {"task": spec["task"], "rate_scale": spec["rate_hz"] / task_rate,
                                                   "max_steps": 1_000_000}, log_dir / f"latency-{tag}-bridge.log"),
             NodeProcess("robopolicy-policy-node", {"checkpoint": ckpt, "profile": spec["profile"],
                                                    "control_rate_hz": spec["rate_hz"], "sampler": sampler,
                                                    "num_inference_steps": steps, "torch_threads": 1,
                                                    "inference_process": inference == "worker", **params},
                         log_dir / f"latency-{tag}-policy.log")]
    try:
        wait_alive(lambda: len(commands) > 20, 600 if params.get("compile") else 180, "commands", *nodes)
        time.sleep(warmup_s)
        processes = [nodes[0].process.pid, nodes[1].process.pid, *_children(nodes[1].process.pid)]
        load_before, cpu_before = os.getloadavg(), [_cpu_seconds(pid) for pid in processes]
        start_metrics = json.loads(metrics[-1][1].data)
        mark, t_mark = len(commands), time.monotonic()
        time.sleep(seconds)
        window = commands[mark:]
        load_after, cpu_after = os.getloadavg(), [_cpu_seconds(pid) for pid in processes]
        wall = time.monotonic() - t_mark
        n_metrics = len(metrics)
        wait_alive(lambda: len(metrics) > n_metrics, 5, "metrics", *nodes)
        end_metrics = json.loads(metrics[-1][1].data)
    finally:
        stop_all(nodes)
        ros.close()

    received = np.array([t for t, _ in window])
    stamps = np.array([convert.stamp_to_seconds(m.header.stamp) for _, m in window])
    # the receive clock is monotonic, the stamps wall time: the DDS delay needs one clock, wall time
    offset = time.time() - time.monotonic()
    delay_ms = (received + offset - stamps) * 1e3
    period = 1.0 / spec["rate_hz"]
    new = end_metrics["e2e_latency_ms"]["n"] - start_metrics["e2e_latency_ms"]["n"]
    samples = end_metrics["e2e_latency_samples_ms"][-new:] if new > 0 else []
    counters = {k: end_metrics["counters"].get(k, 0) - start_metrics["counters"].get(k, 0)
                for k in end_metrics["counters"]}
    return {
        "robot": robot, "policy": policy_label, "inference": inference, "task": spec["task"], "profile": spec["profile"],
        "checkpoint": str(ckpt), "rate_hz": spec["rate_hz"], "seconds": seconds, "commands": len(window),
        "e2e_latency_ms": _stats(samples), "e2e_latency_samples_ms": samples,
        "e2e_latency_window_ms": end_metrics["e2e_latency_ms"],  # the node's own, over its last 2000 chunks
        "inference_ms": end_metrics["inference_ms"],
        "interval_received_ms": _stats(np.diff(received) * 1e3), "interval_stamp_ms": _stats(np.diff(stamps) * 1e3),
        "interval_ms_samples": np.round(np.diff(received) * 1e3, 2).tolist(),
        "achieved_rate_hz": (len(window) - 1) / (received[-1] - received[0]) if len(window) > 1 else 0.0,
        "missed_ticks": int(np.sum(np.maximum(np.round(np.diff(stamps) / period) - 1, 0))),
        "dds_delay_ms": _stats(delay_ms), "counters": counters,
        "load_avg_before": list(load_before), "load_avg_after": list(load_after),
        # CPU each process used over the window, in cores (1.0 = one core busy all the time)
        # (the node's inference worker, when it has one, is its child process)
        "cpu_cores": {"bridge": round((cpu_after[0] - cpu_before[0]) / wall, 3),
                      "policy_node": round((cpu_after[1] - cpu_before[1]) / wall, 3),
                      "inference_worker": round((sum(cpu_after[2:]) - sum(cpu_before[2:])) / wall, 3)},
    }


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    """Child process ids of ``pid`` (the policy node's inference worker)."""
    return [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]


def _stats(x) -> dict:
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return {"n": 0, "mean": None, "std": None, "p50": None, "p99": None, "max": None}
    return {"n": int(x.size), "mean": round(float(x.mean()), 3), "std": round(float(x.std()), 3),
            "p50": round(float(np.percentile(x, 50)), 3), "p99": round(float(np.percentile(x, 99)), 3),
            "max": round(float(x.max()), 3)}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    for r in rows:
        label = f"{r['robot']} {r['rate_hz']:g} Hz, {r['policy']}, {r.get('inference', 'in-process')}"
        e2e = np.sort(r["e2e_latency_samples_ms"])
        if len(e2e):
            a.plot(e2e, np.linspace(0, 1, len(e2e)), label=label)
        b.plot(np.sort(r["interval_ms_samples"]), np.linspace(0, 1, len(r["interval_ms_samples"])), label=label)
    a.set_xlabel("observation stamp -> first command of its chunk (ms)")
    b.set_xlabel("interval between received commands (ms)")
    b.set_xscale("log")
    for ax in (a, b):
        ax.set_ylabel("fraction")
        ax.grid(alpha=0.3)
    a.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_markdown(result: dict, path: Path, plot_path: Path) -> None:
    m = result["machine"]
    lines = ["## ROS 2 policy node: latency and control rate", "",
             f"`flock /tmp/robopolicy-train.lock python bench/ros_latency.py --seconds {result['seconds']:g}` on "
             f"{m.get('cpu')} ({m.get('cores')} cores, shared with other jobs: load average in the table), torch "
             f"{m.get('torch')}, one torch thread for inference. Closed loop: the sim bridge and the policy node are "
             "separate processes over DDS on loopback; the node runs at the rate shown (the bridge steps faster than "
             "real time to publish at that rate), naive executor; the diffusion U-Net runs its fast path (fp32, as in "
             "the speed tables: `PolicyRunner.from_checkpoint(..., fast=True)`), and in the 'compiled bf16' rows "
             "the inductor-compiled bf16 step (`precision:=bf16 compile:=true`). Inference runs either in the node's worker "
             "process (the default) or in a thread of the node itself (`inference_process:=false`), side by side "
             "in one run. Latency is the node's: from the stamp of the "
             "observation a chunk was predicted from to the publish of that chunk's first command. Rate and jitter "
             "are the robot's view: intervals between commands as received.", "",
             "| robot | rate | policy | inference | obs -> command p50 / p99 (ms) | inference p50 / p95 (ms) | "
             "achieved rate (Hz) | interval std / p99 (ms) | missed ticks | DDS delay p50 / p99 (ms) | "
             "load avg (1 min) | CPU cores node / worker / bridge |",
             "|---|---:|---|---|---|---|---:|---|---:|---|---|---|"]
    for r in result["rows"]:
        e, i, iv, d = r["e2e_latency_ms"], r["inference_ms"], r["interval_received_ms"], r["dds_delay_ms"]
        cpu = r["cpu_cores"]
        lines.append(f"| {r['robot']} ({r['profile']}) | {r['rate_hz']:g} Hz | {r['policy']} | {r['inference']} | "
                     f"{e['p50']} / {e['p99']} | {i['p50']} / {i['p95']} | {r['achieved_rate_hz']:.1f} | {iv['std']} / {iv['p99']} | "
                     f"{r['missed_ticks']} of {r['commands'] + r['missed_ticks']} | {d['p50']} / {d['p99']} | "
                     f"{r['load_avg_before'][0]:.2f} -> {r['load_avg_after'][0]:.2f} | "
                     f"{cpu['policy_node']:.2f} / {cpu['inference_worker']:.2f} / {cpu['bridge']:.2f} |")
    rel = Path(os.path.relpath(plot_path, path.parent)).as_posix()
    lines += ["", "Missed ticks are ticks without a command, counted from the gaps between publish stamps: ticks the "
                  "publisher thread skipped because it woke more than a period late (a busy machine), and, for an "
                  "arm, ticks without an action (the chunk ran out before the next one landed) or held, when it "
                  "publishes nothing; a quadrotor publishes hover on those. The publish-stamp intervals (node side) "
                  "are in the JSON beside the received ones.", "",
              f"![latency and command intervals]({rel})", ""]
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window per case")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of running before the window")
    parser.add_argument("--robots", nargs="+", default=list(ROBOTS), choices=list(ROBOTS))
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    parser.add_argument("--inference", nargs="+", default=list(INFERENCE), choices=list(INFERENCE),
                        help="where the node runs the model: its worker process (the default) or in-process")
    parser.add_argument("--markdown-only", action="store_true", help="rewrite the .md and plot from the JSON")
    parser.add_argument("--merge", action="store_true",
                        help="keep the JSON's other rows, replacing only the cases measured now")
    args = parser.parse_args()
    out = RESULTS / "ros_latency.json"
    plot_path = RESULTS / "plots" / "ros_latency.png"
    if args.markdown_only:
        result = json.loads(out.read_text())
        plot(result["rows"], plot_path)
        write_markdown(result, RESULTS / "ros_latency.md", plot_path)
        print(f"wrote {RESULTS / 'ros_latency.md'} from {out}")
        return
    from ros_nodes.harness import isolate

    isolate()
    log_dir = RESULTS / "ros"
    log_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for robot in args.robots:
        for label in args.policies:
            ckpt = checkpoint(robot, label)
            for inference in args.inference:
                print(f"{robot} at {ROBOTS[robot]['rate_hz']:g} Hz, {label}, {inference}: {ckpt}", flush=True)
                row = measure(robot, label, ckpt, args.seconds, args.warmup, log_dir, inference)
                rows.append(row)
                e, iv = row["e2e_latency_ms"], row["interval_received_ms"]
                print(f"  e2e p50/p99 {e['p50']}/{e['p99']} ms, rate {row['achieved_rate_hz']:.1f} Hz, "
                      f"interval std/p99 {iv['std']}/{iv['p99']} ms, missed {row['missed_ticks']}", flush=True)

    if args.merge and out.exists():
        measured = {(r["robot"], r["policy"], r["inference"]) for r in rows}
        rows = [r for r in json.loads(out.read_text())["rows"]
                if (r["robot"], r["policy"], r["inference"]) not in measured] + rows
        order = {k: i for i, k in enumerate(ROBOTS)} | {k: i for i, k in enumerate(POLICIES)}
        rows.sort(key=lambda r: (order.get(r["robot"], 99), order.get(r["policy"], 99)))
    result = {"benchmark": "ros_latency", "seconds": args.seconds, "machine": machine_info(), "rows": rows}
    out.write_text(json.dumps(result, indent=2))
    plot(rows, plot_path)
    write_markdown(result, RESULTS / "ros_latency.md", plot_path)

    print(f"\n{'robot':<10}{'rate':>6}  {'policy':<14}{'inference':<12}{'e2e p50':>9}{'e2e p99':>9}{'infer p50':>10}{'rate Hz':>9}"
          f"{'int std':>9}{'int p99':>9}{'missed':>8}{'load':>7}")
    for r in rows:
        e, iv = r["e2e_latency_ms"], r["interval_received_ms"]
        print(f"{r['robot']:<10}{r['rate_hz']:>6g}  {r['policy']:<14}{r['inference']:<12}{e['p50']!s:>9}{e['p99']!s:>9}"
              f"{r['inference_ms']['p50']!s:>10}{r['achieved_rate_hz']:>9.1f}{iv['std']!s:>9}{iv['p99']!s:>9}"
              f"{r['missed_ticks']:>8}{r['load_avg_before'][0]:>7.2f}")
    print(f"wrote {out} and {RESULTS / 'ros_latency.md'}")


if __name__ == "__main__":
    main()
