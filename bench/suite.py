"""Expert and trained-policy success per task: collect -> train -> eval, one row per (task, policy).

    python bench/suite.py [--tasks metaworld-push-v3 quadrotor-hover-v0 ...] [--policy diffusion]
                          [--demos 50] [--steps 1000] [--episodes 20] [--out bench/results/suite]

Resumable: each stage is skipped when its output exists (stores, checkpoints and eval JSON live under
--out), so an interrupted run continues where it stopped. Prints a table and writes suite.json, and
bench/results/suite.md: a summary across tasks built from the results on disk (the runs under --out,
bench/results/experts_robosuite.json, the quadrotor expert JSON when present). ``--markdown-only``
rebuilds that summary without running anything.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.machine import machine_info  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
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


# ------------------------------------------------------------------------------------------ summary (suite.md)
def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def summary_rows(out: Path) -> list[dict]:
    """One row per trained run under ``out`` (a directory with eval.json and a checkpoint), from its files."""
    rows = []
    for eval_json in sorted(out.glob("*/eval.json")):
        run_dir = eval_json.parent
        config = _json(run_dir / "latest" / "config.json") or {}
        result = json.loads(eval_json.read_text())
        task = result["task"].removeprefix("robopolicy/")
        collect = _json(out / f"{task}.collect.json") or {}
        train = config.get("train_config", {})
        rows.append({
            "task": task, "policy": config.get("policy"), "preset": config.get("preset"),
            "params": config.get("param_count"),
            "demos": collect.get("episodes_written"), "expert_success": collect.get("expert_success_rate"),
            "expert_episodes": collect.get("episodes_run"),
            "success": result["success_rate"], "ci95": result["ci95"], "episodes": result["episodes"],
            "sampler": result.get("sampler"), "nfe": result.get("nfe"),
            "steps": config.get("step", train.get("steps")), "batch_size": train.get("batch_size"),
            "seed": train.get("seed"), "eval_seed": result.get("seed"),
            "train_s": (_json(run_dir / "train_seconds.json") or {}).get("seconds"),
            "run": run_dir.name,
        })
    return rows


def _fmt(x, spec: str = ".2f", none: str = "-") -> str:
    return none if x is None else format(x, spec)


def quadrotor_expert_rows(results: Path) -> list[dict]:
    """Rows of ``python -m sim.quadrotor.bench --json`` (RMS error per task and reference) found under results/."""
    rows = []
    for path in sorted([*results.glob("quadrotor*.json"), *results.glob("quadrotor/*.json")]):
        data = json.loads(path.read_text())
        rows += [dict(r, source=path.relative_to(results).as_posix()) for r in data.get("rows", [])
                 if isinstance(r, dict) and "rms_mean_m" in r]
    return rows


def write_summary(out: Path, results: Path = RESULTS) -> Path:
    """bench/results/suite.md from the runs under ``out`` and the expert benchmarks under ``results``."""
    rows = summary_rows(out)
    suite = _json(out / "suite.json") or {}
    machine = suite.get("machine", {})
    lines = ["## Task suite: experts and trained policies", ""]
    if machine:
        lines += [f"`python bench/suite.py` on {machine.get('cpu')} ({machine.get('cores')} cores), torch "
                  f"{machine.get('torch')}, commit {machine.get('commit', '?')}. Per task: the scripted expert's "
                  "demonstrations (collection seeds 0+), a policy trained on them, and its evaluation (seeds "
                  "1000+, success with a Wilson 95% interval).", ""]
    lines += ["| task | expert success (demos) | policy | success | 95% CI | episodes | sampler | NFE | "
              "train steps x batch | train wall | seed |",
              "|---|---:|---|---:|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        expert = f"{_fmt(r['expert_success'])} ({_fmt(r['demos'], 'd')})"
        train_s = "-" if r["train_s"] is None else f"{r['train_s'] / 60:.1f} min"
        lines.append(f"| {r['task']} | {expert} | {r['policy']} ({r['preset']}) | {r['success']:.2f} | "
                     f"[{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}] | {r['episodes']} | {r['sampler'] or '-'} | "
                     f"{_fmt(r['nfe'], '.0f')} | {_fmt(r['steps'], 'd')} x {_fmt(r['batch_size'], 'd')} | {train_s} | "
                     f"{_fmt(r['seed'], 'd')} |")
    robosuite = _json(results / "experts_robosuite.json")
    if robosuite:
        lines += ["", "### robosuite scripted experts", "",
                  f"`python -m bench.experts_robosuite`: {robosuite.get('episodes')} episodes per task (seeds 0+), "
                  f"step cap {robosuite.get('cap')} for the measurement. The task's step cap is the suggested "
                  "one, 1.5x the 95th percentile of the successful lengths; *within cap* counts the episodes "
                  "that succeed within it.", "",
                  "| task | success | within cap | cap | length mean / p95 / max | steps/s |",
                  "|---|---:|---:|---:|---|---:|"]
        for r in robosuite["rows"]:
            cap = r.get("suggested_cap")
            within = None if cap is None else sum(n <= cap for n in r.get("lengths", [])) / r["episodes"]
            lines.append(f"| {r['task'].removeprefix('robopolicy/')} | {r['success_rate']:.2f} | "
                         f"{_fmt(within)} | {_fmt(cap, 'd')} | "
                         f"{r['len_mean']:.1f} / {r['len_p95']:.0f} / {r['len_max']} | "
                         f"{_fmt(r.get('expert_steps_per_s'), '.0f')} |")
    quad = quadrotor_expert_rows(results)
    if quad:
        lines += ["", "### Quadrotor experts", "",
                  "`python -m sim.quadrotor.bench`: RMS position error after the first second, per task and "
                  "reference, over randomised vehicles and disturbances.", "",
                  "| task | reference | seeds | RMS mean | RMS max | bound | success | crashes |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in quad:
            lines.append(f"| {r['task']} | {r['reference']} | {r['seeds']} | {100 * r['rms_mean_m']:.2f} cm | "
                         f"{100 * r['rms_max_m']:.2f} cm | {100 * r['bound_m']:.0f} cm | {r['success_rate']:.2f} | "
                         f"{r['crashes']} |")
    path = results / "suite.md"
    path.write_text("\n".join(lines) + "\n")
    return path


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
    parser.add_argument("--markdown-only", action="store_true",
                        help="only rebuild bench/results/suite.md from the results on disk")
    args = parser.parse_args()
    out = Path(args.out)
    if args.markdown_only:
        print(f"wrote {write_summary(out)}")
        return
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
    print(f"wrote {write_summary(out)}")


if __name__ == "__main__":
    main()
