"""Expert and trained-policy success per task: collect -> train -> eval, one row per (task, policy).

    python bench/suite.py [--tasks metaworld-push-v3 quadrotor-hover-v0 ...] [--policy diffusion]
                          [--demos 50] [--steps 1000] [--episodes 20] [--out bench/results/suite]

Resumable: each stage is skipped when its output exists (stores, checkpoints and eval JSON live under
--out), so an interrupted run continues where it stopped. Prints a table and writes suite.json.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.machine import machine_info  # noqa: E402

DEFAULT_TASKS = ["metaworld-push-v3", "metaworld-drawer-close-v3", "metaworld-pick-place-v3",
                 "robosuite-Lift-v0", "quadrotor-hover-v0", "quadrotor-track-v0"]


def run(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "robopolicy.cli", "--quiet", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"robopolicy {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return proc.stdout


def bench_task(task: str, policy: str, config: str, demos: int, steps: int, episodes: int, workers: int,
               out: Path) -> dict:
    name = task.removeprefix("robopolicy/")
    store, run_dir = out / f"{name}.zarr", out / f"{name}-{policy}-{config}-{steps}"
    eval_json = run_dir / "eval.json"
    row = {"task": name, "policy": policy, "config": config, "demos": demos, "steps": steps}
    if not store.exists():
        t0 = time.perf_counter()
        summary = json.loads(run("collect", "--task", task, "--episodes", str(demos), "--out", str(store)))
        summary["seconds"] = time.perf_counter() - t0
        (out / f"{name}.collect.json").write_text(json.dumps(summary))
    collect = json.loads((out / f"{name}.collect.json").read_text())
    row.update(expert_success=collect["expert_success_rate"], collect_s=collect["seconds"])
    if not eval_json.exists():
        t0 = time.perf_counter()
        run("train", "--store", str(store), "--policy", policy, "--config", config, "--steps", str(steps),
            "--out", str(run_dir), "--seed", "0")
        train_s = time.perf_counter() - t0
        run("eval", "--checkpoint", str(run_dir), "--task", task, "--episodes", str(episodes), "--workers",
            str(workers), "--json", str(eval_json))
        (run_dir / "train_seconds.json").write_text(json.dumps({"seconds": train_s}))
    result = json.loads(eval_json.read_text())
    row.update(success=result["success_rate"], ci95=result["ci95"], episodes=result["episodes"],
               sampler=result["sampler"], nfe=result["nfe"],
               train_s=json.loads((run_dir / "train_seconds.json").read_text())["seconds"])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=DEFAULT_TASKS)
    parser.add_argument("--policy", default="diffusion")
    parser.add_argument("--config", default="cpu")
    parser.add_argument("--demos", type=int, default=50)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "suite"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    rows = []
    for task in args.tasks:
        try:
            rows.append(bench_task(task, args.policy, args.config, args.demos, args.steps, args.episodes,
                                   args.workers, out))
        except RuntimeError as e:
            print(f"{task}: {e}", file=sys.stderr)
            rows.append({"task": task, "error": str(e)[-500:]})
        print(json.dumps(rows[-1]), flush=True)

    print(f"\n{'task':<28} {'expert':>7} {'policy':>10} {'train':>7} {'success':>8} {'95% CI':>15} {'sampler':>9}")
    for r in rows:
        if "error" in r:
            print(f"{r['task']:<28} error")
            continue
        print(f"{r['task']:<28} {r['expert_success']:>7.2f} {r['policy']:>10} {r['train_s']:>6.0f}s "
              f"{r['success']:>8.3f} [{r['ci95'][0]:.3f},{r['ci95'][1]:.3f}] {r['sampler']:>9}")
    (out / "suite.json").write_text(json.dumps({"machine": machine_info(), "args": vars(args), "rows": rows},
                                               indent=2))


if __name__ == "__main__":
    main()
