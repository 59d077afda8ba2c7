"""Simulation throughput: env steps/s per task (low-dim and with cameras) and evaluation episodes/s with
1 and 2 worker processes.

    flock /tmp/robopolicy-train.lock python bench/env_speed.py [--steps 200] [--camera-steps 60] [--episodes 8]
        [--checkpoint bench/results/suite/metaworld-push-v3-diffusion-cpu-1000/latest] [--quick]

Env steps are timed in one process with random actions from the action space (seeded), resetting at
episode ends; the clock covers ``env.step`` (and its observation) only. Modes:

    lowdim        the state vector
    rgb           + one camera's image (84 x 84; quadrotor: its chase camera)
    rgbd_points   + that camera's depth and a 512-point world-frame cloud (arm tasks only)

Evaluation throughput runs ``sim.evaluate`` on one checkpoint with 1 and then 2 worker processes,
same episodes and seeds. Prints tables, writes bench/results/env_speed.json (with the machine and the
load average: other jobs share the cores) and bench/results/env_speed.md (+ a plot).
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.benchmarks_md import output_path  # noqa: E402
from bench.machine import machine_info  # noqa: E402

RESULTS = Path(__file__).parent / "results"
CHECKPOINT = RESULTS / "suite" / "metaworld-push-v3-diffusion-cpu-1000" / "latest"
TASKS = ["metaworld-push-v3", "metaworld-pick-place-v3", "robosuite-Lift-v0", "robosuite-Lift-joint-v0",
         "robosuite-Stack-v0", "quadrotor-hover-v0", "quadrotor-track-v0", "quadrotor-hover-motors-v0"]
IMAGE_SIZE, NUM_POINTS = 84, 512


def mode_kwargs(task: str, mode: str) -> dict | None:
    """Env options for a mode, or None where the task does not offer it."""
    if mode == "lowdim":
        return {}
    arm = not task.startswith("quadrotor")
    if mode == "rgb":
        return {"render": True, "image_size": IMAGE_SIZE}
    if mode == "rgbd_points" and arm:
        return {"render": True, "image_size": IMAGE_SIZE, "depth": True, "points": True, "num_points": NUM_POINTS}
    return None


def env_steps_per_s(task: str, kwargs: dict, steps: int, seed: int = 0) -> dict:
    import sim

    env = sim.make(task, **kwargs)
    rng = np.random.default_rng(seed)
    space = env.action_space
    low, high = np.maximum(space.low, -1.0), np.minimum(space.high, 1.0)
    obs, _ = env.reset(seed=seed)
    for _ in range(3):  # warm-up: renderers and caches are made on first use
        obs, *_ = env.step(rng.uniform(low, high).astype(np.float32))
    stepping, resets, episode = 0.0, 0, 0
    for _ in range(steps):
        action = rng.uniform(low, high).astype(np.float32)
        t0 = time.perf_counter()
        obs, _, terminated, truncated, _ = env.step(action)
        stepping += time.perf_counter() - t0
        if terminated or truncated:
            resets += 1
            episode += 1
            env.reset(seed=seed + episode)
    shapes = {k: list(np.shape(v)) for k, v in obs.items()}
    env.close()
    return {"steps": steps, "seconds": stepping, "steps_per_s": steps / stepping, "resets": resets, "obs": shapes}


def eval_throughput(checkpoint: Path, task: str, episodes: int, workers: int) -> dict:
    import sim
    from robopolicy.runtime import CheckpointPolicy
    from robopolicy.train.checkpoint import read_config

    config = read_config(checkpoint)
    t0 = time.perf_counter()
    result = sim.evaluate(CheckpointPolicy(checkpoint), task, episodes, workers=workers, progress=False,
                          expect=(config["action_semantics"], config["policy_config"]["action_dim"]))
    seconds = time.perf_counter() - t0
    steps = sum(e.steps for e in result.per_episode)
    busy = sum(e.seconds for e in result.per_episode)  # inside the workers' episodes, without start-up
    return {"workers": workers, "episodes": episodes, "seconds": seconds, "episodes_per_s": episodes / seconds,
            "steady_episodes_per_s": workers * episodes / busy, "env_steps": steps,
            "env_steps_per_s": steps / seconds, "success_rate": result.success_rate,
            "per_episode": [[e.seed, e.success, e.steps] for e in result.per_episode],
            "summary": result.summary_line()}


def write_markdown(path: Path, result: dict, plot: str | None) -> None:
    m, load = result["machine"], result["load_avg"]
    lines = [
        "## Simulation throughput",
        "",
        f"`python bench/env_speed.py` on {m['cpu']} ({m['cores']} cores), torch {m['torch']}, commit "
        f"{m.get('commit', '?')}. Load average (1 min) {load['before'][0]:.2f} before, {load['after'][0]:.2f} "
        "after: other jobs shared the cores, so the numbers are lower bounds.",
        "",
        "### Env steps per second (one process, random actions, `env.step` only)",
        "",
        f"RGB: one {IMAGE_SIZE}x{IMAGE_SIZE} camera (arm tasks: agentview / corner; quadrotor: chase). "
        f"RGB-D + points: that camera's depth and a {NUM_POINTS}-point world-frame cloud (crop + farthest-point "
        "sampling). MuJoCo renders on the CPU (osmesa).",
        "",
        "| task | low-dim | RGB | RGB-D + points |",
        "|---|---:|---:|---:|",
    ]
    for row in result["env_steps"]:
        cells = [f"{row[m]['steps_per_s']:.0f}" if row.get(m) else "n/a" for m in ("lowdim", "rgb", "rgbd_points")]
        lines.append(f"| {row['task']} | " + " | ".join(cells) + " |")
    lines += ["", "### Evaluation throughput (`sim.evaluate`, one checkpoint)", "",
              f"Checkpoint `{result['eval']['checkpoint']}` (Diffusion Policy, cpu preset, DDIM-10) on "
              f"{result['eval']['task']}, {result['eval']['rows'][0]['episodes']} episodes, seeds 1000+.", "",
              "Wall time includes starting the worker processes (each imports torch and MuJoCo and loads the "
              "checkpoint); *steady* counts only the time inside episodes (workers x episodes / summed episode "
              "time).", "",
              "| workers | episodes/s (wall) | episodes/s (steady) | env steps/s (wall) | wall (s) | success |",
              "|---:|---:|---:|---:|---:|---:|"]
    for r in result["eval"]["rows"]:
        lines.append(f"| {r['workers']} | {r['episodes_per_s']:.3f} | {r['steady_episodes_per_s']:.3f} | "
                     f"{r['env_steps_per_s']:.0f} | {r['seconds']:.1f} | {r['success_rate']:.2f} |")
    rows = result["eval"]["rows"]
    if len(rows) == 2:
        same = "identical" if rows[0]["per_episode"] == rows[1]["per_episode"] else "NOT identical"
        lines += ["", f"2 workers vs 1: {rows[1]['episodes_per_s'] / rows[0]['episodes_per_s']:.2f}x episodes/s "
                  f"(wall), {rows[1]['steady_episodes_per_s'] / rows[0]['steady_episodes_per_s']:.2f}x (steady). "
                  f"Per-episode results (seed, success, steps) with 1 and 2 workers: {same}."]
    if plot:
        lines += ["", f"![env steps per second]({plot})"]
    path.write_text("\n".join(lines) + "\n")


def plot_steps(path: Path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [("lowdim", "low-dim"), ("rgb", "RGB"), ("rgbd_points", "RGB-D + points")]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(10, 4))
    for j, (mode, label) in enumerate(modes):
        ax.bar(x + (j - 1) * 0.27, [r[mode]["steps_per_s"] if r.get(mode) else 0 for r in rows], 0.27, label=label)
    ax.set_xticks(x, [r["task"] for r in rows], rotation=25, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("env steps / s (one process)")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    parser.add_argument("--steps", type=int, default=200, help="timed steps per task, low-dim")
    parser.add_argument("--camera-steps", type=int, default=60, help="timed steps per task with cameras")
    parser.add_argument("--episodes", type=int, default=24, help="evaluation episodes per worker count")
    parser.add_argument("--checkpoint", default=str(CHECKPOINT))
    parser.add_argument("--eval-task", default="metaworld-push-v3")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few steps, 2 episodes")
    parser.add_argument("--out", help="JSON path (default bench/results/env_speed.json; --quick: a temp folder)")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.camera_steps, args.episodes = 20, 5, 2
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    load_before = os.getloadavg()

    rows = []
    for task in args.tasks:
        row = {"task": task}
        for mode in ("lowdim", "rgb", "rgbd_points"):
            kwargs = mode_kwargs(task, mode)
            if kwargs is not None:
                row[mode] = env_steps_per_s(task, kwargs, args.steps if mode == "lowdim" else args.camera_steps)
        rows.append(row)
        print(f"{task:<28} " + "  ".join(f"{m}={row[m]['steps_per_s']:8.1f}/s" for m in row if m != "task"),
              flush=True)

    checkpoint = Path(args.checkpoint)
    evals = [eval_throughput(checkpoint, args.eval_task, args.episodes, w) for w in (1, 2)]
    print(f"\n{'workers':>7} {'episodes/s':>11} {'env steps/s':>12} {'wall':>7}  summary")
    for r in evals:
        print(f"{r['workers']:>7} {r['episodes_per_s']:>11.3f} {r['env_steps_per_s']:>12.0f} {r['seconds']:>6.1f}s  "
              f"{r['summary']}")

    result = {"benchmark": "env_speed", "machine": machine_info(),
              "load_avg": {"before": list(load_before), "after": list(os.getloadavg())},
              "image_size": IMAGE_SIZE, "num_points": NUM_POINTS, "args": vars(args), "env_steps": rows,
              "eval": {"checkpoint": os.path.relpath(checkpoint, Path(__file__).parent.parent),
                       "task": args.eval_task, "rows": evals}}
    out = output_path("env_speed", args.out, args.quick)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    plot = None
    if not args.quick:
        plot_steps(out.parent / "plots" / "env_speed.png", rows)
        plot = "plots/env_speed.png"
    write_markdown(out.with_suffix(".md"), result, plot)
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
