"""Measure the robosuite waypoint experts: success over seeded episodes, episode lengths, env speed.

    python -m bench.experts_robosuite [--episodes 100] [--cap 400] [--tasks Lift Stack-joint ...]
                                      [--workers 1] [--speed-steps 200] [--json PATH]

For every task and action variant: the expert's success rate over seeds 0..N-1 under a generous cap
and under the registered one, the successful episodes' length (mean, p95, max) and the step cap that
sim/robosuite_tasks.py derives from them (1.5 x p95 rounded up to a multiple of 50). Then env steps/s
with a random policy, low-dim and with one 84x84 ``agentview`` camera (MUJOCO_GL=osmesa on a CPU).
Prints a table and writes JSON (default bench/results/experts_robosuite.json).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

RESULTS = os.path.join(os.path.dirname(__file__), "results", "experts_robosuite.json")


def bench_task(name: str, episodes: int, cap: int, seed: int = 0) -> dict:
    import sim
    from sim.robosuite_tasks import register_robosuite_tasks

    register_robosuite_tasks()
    spec = sim.task_spec(name)
    env, expert = sim.make(name, max_steps=cap), sim.make_expert(name)
    lengths, failed, steps = [], [], 0
    t0 = time.perf_counter()
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        expert.reset()
        while True:
            obs, _, term, trunc, info = env.step(expert(obs))
            if term or trunc:
                break
        steps += info["steps"]
        if info["success"]:
            lengths.append(info["steps"])
        else:
            failed.append(seed + i)
    secs = time.perf_counter() - t0
    env.close()
    ok = np.array(lengths) if lengths else np.array([0])
    p95 = float(np.percentile(ok, 95))
    suggested = int(50 * math.ceil(1.5 * p95 / 50))
    return {
        "task": spec.name,
        "episodes": episodes,
        "success_rate": len(lengths) / episodes,
        "success_at_registered_cap": float(np.sum(ok <= spec.max_steps) / episodes) if lengths else 0.0,
        "registered_cap": spec.max_steps,
        "suggested_cap": suggested,
        "success_at_suggested_cap": float(np.sum(ok <= suggested) / episodes) if lengths else 0.0,
        "len_mean": float(ok.mean()),
        "len_p95": p95,
        "len_max": int(ok.max()),
        "failed_seeds": failed,
        "expert_steps_per_s": steps / secs,
        "lengths": [int(x) for x in lengths],
    }


def env_speed(name: str, steps: int, camera: bool) -> float:
    """Env steps/s under uniformly random actions (the expert's own cost excluded)."""
    import sim

    env = sim.make(name, render=camera, camera="agentview", image_size=84) if camera else sim.make(name)
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    env.step(env.action_space.sample())  # first render / first step outside the clock
    t0 = time.perf_counter()
    for t in range(steps):
        low, high = env.action_space.low, env.action_space.high
        mid, half = (low + high) / 2, (high - low) / 2
        # Small random moves around the centre keep the arm in its workspace.
        _, _, term, trunc, _ = env.step(mid + 0.1 * half * rng.uniform(-1, 1, low.shape) if "joint" in name
                                        else rng.uniform(-1, 1, low.shape))
        if term or trunc:
            env.reset(seed=t)
    secs = time.perf_counter() - t0
    env.close()
    return steps / secs


def main(argv: list[str] | None = None) -> None:
    from sim.gl import default_gl_backend

    default_gl_backend()
    from sim.robosuite_tasks import TASKS, VARIANTS, task_name

    all_names = [task_name(t, v) for t in TASKS for v in VARIANTS]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--cap", type=int, default=400)
    p.add_argument("--tasks", nargs="*", default=None, help="e.g. Lift Lift-joint PickPlaceCan (default: all six)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--speed-steps", type=int, default=200)
    p.add_argument("--json", default=RESULTS)
    a = p.parse_args(argv)
    names = all_names if not a.tasks else [f"robopolicy/robosuite-{t}-v0" for t in a.tasks]

    header = (f"{'task':44s} {'success':>7s} {'@cap':>6s} {'cap':>5s} {'sugg':>5s} {'mean':>6s} {'p95':>6s} "
              f"{'max':>5s} {'steps/s':>8s}")
    print(header, flush=True)
    rows, speed = [], {}
    with ProcessPoolExecutor(a.workers) as ex:
        for r in ex.map(bench_task, names, [a.episodes] * len(names), [a.cap] * len(names)):
            rows.append(r)
            print(_row(r), flush=True)
            _write(a.json, a.episodes, a.cap, rows, speed)  # a partial run still leaves its numbers
    if a.speed_steps > 0:
        from sim.robosuite_tasks import register_robosuite_tasks

        register_robosuite_tasks()
        for name in (task_name("Lift", "ee_delta"), task_name("Lift", "joint_pos")):
            speed[name] = {"lowdim": env_speed(name, a.speed_steps, False),
                           "agentview_84": env_speed(name, a.speed_steps, True)}

    for name, s in speed.items():
        print(f"env steps/s {name}: low-dim {s['lowdim']:.1f}, with an 84x84 agentview camera {s['agentview_84']:.1f}")
    _write(a.json, a.episodes, a.cap, rows, speed)


def _row(r: dict) -> str:
    return (f"{r['task']:44s} {r['success_rate']:7.2f} {r['success_at_registered_cap']:6.2f} "
            f"{r['registered_cap']:5d} {r['suggested_cap']:5d} {r['len_mean']:6.1f} {r['len_p95']:6.1f} "
            f"{r['len_max']:5d} {r['expert_steps_per_s']:8.1f}")


def _write(path: str | None, episodes: int, cap: int, rows: list, speed: dict) -> None:
    if not path:
        return
    from bench.machine import machine_info

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"machine": machine_info(), "load_avg_1min": os.getloadavg()[0], "episodes": episodes,
                   "cap": cap, "rows": rows, "env_steps_per_s": speed}, f, indent=2)


if __name__ == "__main__":
    main()
