"""Measure the quadrotor experts: RMS position error per task and reference, success, env steps/s.

    python -m sim.quadrotor.bench [--seeds 20] [--json PATH]

Seeds 0..N-1 (each one a randomised vehicle and its disturbances). Steps/s counts env steps with the
expert in the loop, one process (the velocity-level tasks run the onboard cascade 10 times a step).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np

CASES = (  # (task, action level, reference)
    ("hover", "velocity_setpoint", "fixed"),
    ("hover", "motor_commands", "fixed"),
    ("track", "velocity_setpoint", "figure8"),
    ("track", "motor_commands", "figure8"),
    ("track", "velocity_setpoint", "waypoints"),
    ("track", "motor_commands", "waypoints"),
)


def bench_case(task: str, action: str, reference: str, seeds: int) -> dict:
    from sim.quadrotor.env import QuadrotorEnv
    from sim.quadrotor.expert import QuadrotorExpert

    env = QuadrotorEnv(task, action, reference=reference if task == "track" else "mixed")
    expert = QuadrotorExpert(task, action)
    rms, successes, crashes, steps = [], 0, 0, 0
    t0 = time.perf_counter()
    for seed in range(seeds):
        obs, _ = env.reset(seed=seed)
        expert.reset()
        while True:
            obs, _, terminated, truncated, info = env.step(expert(obs))
            steps += 1
            if terminated or truncated:
                break
        rms.append(info["rms_position_error"])
        successes += info["success"]
        crashes += info["crashed"]
    seconds = time.perf_counter() - t0
    env.close()
    return {
        "task": env.spec_.short_name,
        "reference": reference,
        "seeds": seeds,
        "rms_mean_m": float(np.mean(rms)),
        "rms_max_m": float(np.max(rms)),
        "success_rate": successes / seeds,
        "crashes": crashes,
        "bound_m": env.success_rms,
        "steps_per_s": steps / seconds,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    rows = [bench_case(*case, args.seeds) for case in CASES]
    header = ("task", "reference", "RMS mean", "RMS max", "bound", "success", "steps/s")
    print("{:<28} {:<10} {:>9} {:>8} {:>6} {:>8} {:>8}".format(*header))
    for r in rows:
        print(
            f"{r['task']:<28} {r['reference']:<10} "
            f"{100 * r['rms_mean_m']:>7.2f}cm {100 * r['rms_max_m']:>6.2f}cm "
            f"{100 * r['bound_m']:>4.0f}cm {r['success_rate']:>8.2f} {r['steps_per_s']:>8.0f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            machine = {"machine": platform.node(), "processor": platform.processor()}
            json.dump({**machine, "rows": rows}, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
