"""Real-time chunking vs naive chunking under inference delay, in simulation, on one flow checkpoint.

    flock /tmp/robopolicy-train.lock .venv/bin/python bench/rtc.py [--checkpoint DIR] [--task NAME]
                                                                   [--delays 0 1 2 3] [--episodes 20]

A robot does not wait for inference: while a chunk is computed, the previous one keeps running. This
benchmark plays that out exactly, tick by tick, with the ROS node's executors (robopolicy/runtime/executors.py):
a chunk requested at tick k (from the observation of tick k) lands at tick k + d, and the ticks in between
run on the chunk before. `naive` then switches to the new chunk as it stands; `rtc` has sampled it inpainted
onto the running one (its guide: weight 1 on the d ticks of delay, decaying to 0 where the running chunk
ends). The delay is simulated, so the comparison does not depend on how loaded the machine is.

Measured per executor and delay, over the same seeds (1000+i): success with a Wilson 95% interval; the jump
at a switch, |a_new(l) - a_old(l)| at the landing tick l (what the robot feels when the plan changes,
in action units, averaged over switches and action dimensions); the mean |a(t+1) - a(t)| over all steps;
and the time per chunk (a guided Euler step adds a vector-Jacobian product).

Default checkpoint: the policy grid's flow cell on robosuite-Lift-v0 (bench/grid.py).
Writes bench/results/rtc.json and .md (its BENCHMARKS.md section).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.machine import machine_info  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_CHECKPOINT = RESULTS / "grid" / "robosuite-Lift-v0" / "flow-5min" / "latest"
DEFAULT_TASK = "robopolicy/robosuite-Lift-v0"


class DelayedChunking:
    """A policy with `act(obs)` whose chunks land `delay` ticks after the observation they came from."""

    def __init__(self, runner, executor: str, delay: int, max_guidance: float):
        from robopolicy.runtime.executors import make_executor

        c = runner.config
        kwargs = {"max_guidance": max_guidance} if executor == "rtc" else {}
        self.runner, self.delay = runner, delay
        self.executor = make_executor(executor, c.n_obs_steps, c.n_action_steps, c.horizon, **kwargs)
        self.jumps: list[float] = []
        self.chunk_seconds: list[float] = []
        self.reset(0)

    def reset(self, seed: int) -> None:
        self.runner.reset(seed)
        self.executor.reset()
        self.tick, self.pending = 0, None
        self.frames: list[dict] = []
        self.actions: list[np.ndarray] = []  # this episode's

    def act(self, obs: dict) -> np.ndarray:
        t = self.tick
        self.frames = (self.frames + [obs])[-self.runner.config.n_obs_steps:]
        if self.pending is None and self.executor.needs_chunk(t, self.delay):
            guide = self.executor.guide(t, self.delay) if hasattr(self.executor, "guide") else None
            start = time.perf_counter()
            chunk = self.runner.predict_from(self.frames, guide)
            self.chunk_seconds.append(time.perf_counter() - start)
            self.pending = (chunk, t, t + self.delay)
        if self.pending is not None and t >= self.pending[2]:
            before = self.executor.action(t) if self.executor.chunk is not None else None
            chunk, obs_tick, _ = self.pending
            self.executor.add(chunk, obs_tick, t)
            self.pending = None
            after = self.executor.action(t)
            if before is not None and after is not None:
                self.jumps.append(float(np.abs(after - before).mean()))
        action = self.executor.action(t)
        if action is None:  # before the first chunk lands: keep still (delta actions) or repeat the last
            action = self.actions[-1] if self.actions else np.zeros(self.runner.action_dim, np.float32)
        self.actions.append(action)
        self.tick += 1
        return action


def run(checkpoint: Path, task: str, executor: str, delay: int, episodes: int, max_guidance: float) -> dict:
    import sim
    from robopolicy.runtime import PolicyRunner
    from sim.evaluate import run_episode, wilson_ci

    runner = PolicyRunner.from_checkpoint(checkpoint, seed=0)
    policy = DelayedChunking(runner, executor, delay, max_guidance)
    spec = sim.task_spec(task)
    env = sim.make(task)
    successes, smoothness = [], []
    for i in range(episodes):
        success, *_ = run_episode(env, policy, spec, 1000 + i)
        successes.append(bool(success))
        smoothness.append(float(np.abs(np.diff(np.asarray(policy.actions), axis=0)).mean()))
    env.close()
    k = sum(successes)
    return {"executor": executor, "delay_ticks": delay, "episodes": episodes, "success_rate": k / episodes,
            "ci95": list(wilson_ci(k, episodes)), "successes": successes,
            "switch_jump": float(np.mean(policy.jumps)) if policy.jumps else None, "switches": len(policy.jumps),
            "mean_action_change": float(np.mean(smoothness)),
            "chunk_ms_p50": float(np.median(policy.chunk_seconds) * 1e3), "sampler": runner.sampler}


def write_markdown(result: dict, path: Path) -> None:
    m = result["machine"]
    lines = ["## Real-time chunking under inference delay (`bench/rtc.py`)", "",
             f"One flow checkpoint (`{result['checkpoint_label']}`, {result['sampler']}) on `{result['task']}`, "
             f"{result['episodes']} episodes per row on the same seeds (1000+i), {m.get('cpu')}. A chunk requested "
             "at tick k lands at k + d (simulated, so machine load does not enter); meanwhile the running chunk "
             "goes on. `naive` switches to the new chunk as sampled; `rtc` samples it inpainted onto the running one "
             f"(β = {result['max_guidance']:g}, exponential prefix weights). Switch jump: |a_new - a_old| at the "
             "landing tick, mean over switches and action dimensions; action change: mean |a(t+1) - a(t)|.", "",
             "| delay d (ticks) | executor | success | 95% CI | switch jump | action change | ms / chunk |",
             "|---:|---|---|---|---:|---:|---:|"]
    for r in result["rows"]:
        k = sum(r["successes"])
        jump = "—" if r["switch_jump"] is None else f"{r['switch_jump']:.4f}"
        lines.append(f"| {r['delay_ticks']} | {r['executor']} | {r['success_rate']:.2f} ({k}/{r['episodes']}) | "
                     f"[{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}] | {jump} | {r['mean_action_change']:.4f} | "
                     f"{r['chunk_ms_p50']:.1f} |")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--task", default=DEFAULT_TASK)
    parser.add_argument("--delays", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--max-guidance", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not (args.checkpoint / "config.json").is_file():
        sys.exit(f"no checkpoint at {args.checkpoint}: train one (bench/grid.py --tasks robosuite-Lift-v0 "
                 f"--cells flow) or pass --checkpoint")
    import torch

    torch.set_num_threads(1)
    rows = []
    for delay in args.delays:
        for executor in ("naive", "rtc"):
            t0 = time.time()
            row = run(args.checkpoint, args.task, executor, delay, args.episodes, args.max_guidance)
            rows.append(row)
            jump = "-" if row["switch_jump"] is None else f"{row['switch_jump']:.4f}"
            print(f"d={delay} {executor:<6} success {row['success_rate']:.2f} "
                  f"[{row['ci95'][0]:.2f}, {row['ci95'][1]:.2f}]  jump {jump}  change "
                  f"{row['mean_action_change']:.4f}  {row['chunk_ms_p50']:.1f} ms/chunk  ({time.time() - t0:.0f} s)",
                  flush=True)
    try:
        label = str(args.checkpoint.resolve().relative_to(RESULTS))
    except ValueError:
        label = str(args.checkpoint)
    result = {"benchmark": "rtc", "task": args.task, "checkpoint": str(args.checkpoint), "checkpoint_label": label,
              "episodes": args.episodes, "max_guidance": args.max_guidance, "sampler": rows[0]["sampler"],
              "machine": machine_info(), "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rtc.json").write_text(json.dumps(result, indent=2))
    write_markdown(result, args.out / "rtc.md")
    print(f"wrote {args.out / 'rtc.json'} and {args.out / 'rtc.md'}")


if __name__ == "__main__":
    main()
