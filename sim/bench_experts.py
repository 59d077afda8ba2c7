"""Measure the shipped scripted experts: success rate and episode length per task, env steps/s.

    python -m sim.bench_experts [--episodes 50] [--cap 500] [--tasks push-v3 ...] [--json PATH]

Prints a table and (with --json) writes the numbers. The per-task step caps in
``sim/registry.py`` (``METAWORLD_MAX_STEPS``) come from this: 1.5x the 95th percentile of the
successful expert episodes' lengths, rounded up to a multiple of 50, clamped to [150, 500]; the
table also shows the expert's success rate under that cap and under the registered one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np


def bench_task(task: str, episodes: int, cap: int, seed: int = 0) -> dict:
    from sim.metaworld_tasks import MetaWorldExpert, MetaWorldTask

    env = MetaWorldTask(task, max_steps=cap)
    expert = MetaWorldExpert(task)
    lengths, successes, steps_total = [], [], 0
    t0 = time.perf_counter()
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        expert.reset()
        n = 0
        while True:
            obs, _, term, trunc, info = env.step(expert(obs))
            n += 1
            if term or trunc:
                break
        steps_total += n
        successes.append(bool(info["success"]))
        if info["success"]:
            lengths.append(n)
    secs = time.perf_counter() - t0
    env.close()
    ok = np.array(lengths) if lengths else np.array([0])
    cap_new = suggested_cap(float(np.percentile(ok, 95)))
    from sim.registry import task_spec

    registered = task_spec(f"metaworld-{task}").max_steps
    return {
        "task": task,
        "episodes": episodes,
        "success_rate": float(np.mean(successes)),
        "len_mean": float(ok.mean()),
        "len_p95": float(np.percentile(ok, 95)),
        "len_max": int(ok.max()),
        "steps_per_s": steps_total / secs,
        "suggested_cap": cap_new,
        "success_at_suggested_cap": float(np.sum(ok <= cap_new) / episodes) if lengths else 0.0,
        "registered_cap": registered,
        "success_at_registered_cap": float(np.sum(ok <= registered) / episodes) if lengths else 0.0,
        "lengths": [int(x) for x in lengths],
    }


def suggested_cap(p95_length: float, floor: int = 150, ceil: int = 500) -> int:
    return int(min(ceil, max(floor, 50 * math.ceil(1.5 * p95_length / 50))))


def main(argv: list[str] | None = None) -> None:
    from sim.registry import METAWORLD_V3_TASKS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--cap", type=int, default=500)
    p.add_argument("--tasks", nargs="*", default=list(METAWORLD_V3_TASKS))
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    with ProcessPoolExecutor(a.workers) as ex:
        rows = list(ex.map(bench_task, a.tasks, [a.episodes] * len(a.tasks), [a.cap] * len(a.tasks)))
    print(
        f"{'task':30s} {'success':>7s} {'mean':>6s} {'p95':>6s} {'max':>5s} {'steps/s':>8s} "
        f"{'sugg':>5s} {'@sugg':>6s} {'cap':>5s} {'@cap':>6s}"
    )
    for r in sorted(rows, key=lambda r: r["task"]):
        print(
            f"{r['task']:30s} {r['success_rate']:7.2f} {r['len_mean']:6.1f} {r['len_p95']:6.1f} "
            f"{r['len_max']:5d} {r['steps_per_s']:8.0f} {r['suggested_cap']:5d} "
            f"{r['success_at_suggested_cap']:6.2f} {r['registered_cap']:5d} {r['success_at_registered_cap']:6.2f}"
        )
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": platform.platform(), "cpus": os.cpu_count(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
