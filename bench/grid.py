"""Policy-family comparison grid: every family trained on the same demonstrations for the same CPU budget.

    python bench/grid.py [--tasks robosuite-Lift-v0 metaworld-push-v3 ...] [--cells diffusion flow ...]
                         [--minutes 5] [--episodes 20] [--demos 50] [--workers 2] [--quick]

One store per task (the scripted expert, `--demos` episodes, collection seeds 0+i) feeds every cell. A cell is
one policy family and preset trained for `--minutes` of wall-clock time (the trainer's `max_seconds`; the
step count the budget reached is recorded), then evaluated with each of its sampler settings on ONE
checkpoint: `--episodes` episodes (evaluation seeds 1000+i), success with a Wilson 95% interval, network
evaluations per chunk (NFE) and batch-1 latency per chunk.

Resumable, and meant to be filled over several sessions: each cell writes its result to
`bench/results/grid/<task>__<cell>__<minutes>min.json` as soon as its training ends and after every
evaluation, and finished settings are skipped. A training that was interrupted restarts from scratch, so
every cell gets its budget in one piece. Stores and checkpoints beside the JSON files are git-ignored.
Each cell (training and its evaluations) holds the shared lock /tmp/robopolicy-train.lock, taken per cell,
so trainings never overlap and other jobs get the machine between cells.

Writes bench/results/grid.json (all cells, with the machine) and bench/results/grid.md (the table that goes
into BENCHMARKS.md), and prints the table.
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.machine import TRAINING_LOCK, machine_info, training_lock  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

# Lift first (short episodes), then push (easy Meta-World) and peg-insert-side: the long-horizon one. Its
# expert needs about 125 steps (push: 62) through three phases: grasp the peg, carry it to the hole, insert it
# (a few-millimetre alignment); the expert succeeds on every seed tried. The quadrotor tracks a reference for
# 750 steps.
DEFAULT_TASKS = ["robosuite-Lift-v0", "metaworld-push-v3", "metaworld-peg-insert-side-v3", "quadrotor-track-v0"]


@dataclass(frozen=True)
class Cell:
    """A policy family and preset, and the sampler settings evaluated on its one checkpoint.

    settings: (sampler, steps) pairs for PolicyRunner.from_checkpoint; sampler None keeps the checkpoint's
    (EBT has one "sampler", energy descent, and `steps` is its K).
    overrides: (field, value) pairs on top of the preset's policy config.
    train_overrides: (field, value) pairs on top of the preset's TrainConfig.
    """

    name: str
    policy: str
    preset: str
    settings: tuple[tuple[str | None, int], ...]
    overrides: tuple[tuple[str, object], ...] = ()
    train_overrides: tuple[tuple[str, object], ...] = ()


CELLS = {c.name: c for c in [
    Cell("diffusion", "diffusion", "cpu", (("ddpm", 100), ("ddim", 10))),
    Cell("flow", "flow", "cpu", (("euler", 1), ("euler", 4), ("euler", 10))),
    Cell("seed-To2", "seed", "cpu", (("ddim", 10),)),
    Cell("seed-To16", "seed", "cpu-long", (("ddim", 10),)),
    Cell("ebt", "ebt", "cpu", ((None, 1), (None, 2), (None, 4))),
    # EBT's "System 2" training (methods.md): replay buffer, Langevin noise, step size jittered by U[1/2, 2].
    # It shapes the energy away from the descent paths; `bench/ebt_energy.py` reads it as an OOD signal.
    Cell("ebt-s2", "ebt", "cpu", ((None, 1), (None, 2), (None, 4)),
         (("replay_buffer", True), ("langevin_std", 0.05), ("step_size_jitter", 2.0))),
    # Mixed precision: the same network and budget, its forward under bf16 autocast (more steps in the budget).
    Cell("diffusion-bf16", "diffusion", "cpu", (("ddpm", 100), ("ddim", 10)),
         train_overrides=(("mixed_precision", "bf16"),)),
]}


def short_name(task: str) -> str:
    return task.removeprefix("robopolicy/")


# Episode measures worth a table column, from the evaluation's final info: key -> (label, scale, unit).
MEASURES = {"rms_position_error": ("RMS error", 100.0, "cm")}


def setting_key(sampler: str | None, steps: int) -> str:
    return f"{sampler}-{steps}" if sampler else f"K{steps}"


def cell_path(out: Path, task: str, cell: str, minutes: float) -> Path:
    """The cell's committed result file (a flat name: the .gitignore keeps only top-level JSON here)."""
    return out / f"{short_name(task)}__{cell}__{minutes:g}min.json"


def run_dir(out: Path, task: str, cell: str, minutes: float) -> Path:
    return out / short_name(task) / f"{cell}-{minutes:g}min"


def _write_json(path: Path, value: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(value, indent=2))
    tmp.replace(path)  # a reader (or a resumed run) never sees half a file


# --- the store ------------------------------------------------------------------------------------------------
def ensure_store(task: str, out: Path, demos: int) -> tuple[Path, dict]:
    """The task's shared store (collected once, seeds 0..demos-1) and its collection summary."""
    import sim

    store = out / f"{short_name(task)}.zarr"
    summary_path = out / f"{short_name(task)}.collect.json"
    if summary_path.exists() and store.exists():
        summary = json.loads(summary_path.read_text())
        if summary["episodes_run"] != demos:
            raise ValueError(f"{store} was collected with {summary['episodes_run']} episodes, --demos asks for "
                             f"{demos}; use another --out or remove the store")
        return store, summary
    shutil.rmtree(store, ignore_errors=True)  # a collection that died half-way: start it again
    summary = sim.collect(task, demos, store, seed=0, progress=False)
    summary["store"] = os.path.relpath(store, out)
    _write_json(summary_path, summary)
    return store, summary


# --- one cell -------------------------------------------------------------------------------------------------
def train_cell(cell: Cell, store: Path, directory: Path, budget_s: float, calibrate_s: float) -> dict:
    """Trains `cell` on `store` for `budget_s` seconds of wall-clock into `directory`; returns what it did.

    The cosine learning-rate schedule needs a step count in advance: a short calibration run measures this
    policy's steps per second now, and the schedule is planned to end with the budget. The budget is a hard
    stop either way (`max_seconds`), so a slower machine gets fewer steps, never more time.
    """
    from robopolicy.train.trainer import train

    shutil.rmtree(directory, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="grid-calibrate-") as tmp:
        probe = train(str(store), tmp, cell.policy, cell.preset,
                      {**dict(cell.train_overrides), "steps": 10**6, "save_every": 10**6},
                      dict(cell.overrides), progress=False, max_seconds=calibrate_s)
    rate = probe["steps"] / probe["train_seconds"]
    planned = max(1, int(rate * budget_s))  # the probe pays the warm-up and a validation too: about even

    load_before, cpu_before, wall_before = os.getloadavg(), time.process_time(), time.perf_counter()
    summary = train(str(store), str(directory), cell.policy, cell.preset,
                    {**dict(cell.train_overrides), "steps": planned}, dict(cell.overrides), progress=False,
                    max_seconds=budget_s)
    wall = time.perf_counter() - wall_before
    return {
        "budget_s": budget_s, "seconds": summary["train_seconds"], "steps": summary["steps"],
        "planned_steps": planned, "stopped_by": summary["stopped_by"], "final_loss": summary["final_loss"],
        "val_loss": summary["val_loss"],
        # How much of the machine the training got: CPU seconds per wall second against torch's threads, and
        # the load from everything else that ran meanwhile.
        "contention": {"torch_threads": torch.get_num_threads(), "cpu_per_wall": (time.process_time() - cpu_before)
                       / wall, "loadavg_1m_before": load_before[0], "loadavg_1m_after": os.getloadavg()[0],
                       "calibration_steps_per_s": rate, "achieved_steps_per_s": summary["steps"] /
                       summary["train_seconds"]},
    }


def chunk_latency(checkpoint: Path, sampler: str | None, steps: int, store: Path, repeats: int = 15,
                  max_seconds: float = 10.0) -> dict:
    """Batch-1 latency of one chunk (median and p90, ms) on one torch thread, on real observations."""
    from robopolicy.runtime import PolicyRunner
    from robopolicy.store import DemoStore

    runner = PolicyRunner.from_checkpoint(checkpoint, "cpu", sampler, steps, seed=0)
    arrays = DemoStore.open(store).load(list(runner.obs_shapes))
    frames = [{k: arrays[k][i] for k in runner.obs_shapes} for i in range(runner.config.n_obs_steps)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the evaluation workers, and steadier on a shared machine
    try:
        for frame in frames:
            runner.history.append(runner._check(frame))
        runner.predict_chunk()  # warm-up
        times, t_end = [], time.perf_counter() + max_seconds
        while len(times) < repeats and (len(times) < 3 or time.perf_counter() < t_end):
            t0 = time.perf_counter()
            runner.predict_chunk()
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    return {"median_ms": 1e3 * statistics.median(times), "p90_ms": 1e3 * float(np.percentile(times, 90)),
            "repeats": len(times), "threads": 1}


def evaluate_setting(checkpoint: Path, task: str, sampler: str | None, steps: int, episodes: int,
                     workers: int) -> dict:
    import sim
    from robopolicy.runtime import CheckpointPolicy
    from robopolicy.train.checkpoint import read_config

    config = read_config(checkpoint)
    result = sim.evaluate(CheckpointPolicy(checkpoint, "cpu", sampler, steps, seed=0), task, episodes, seed=1000,
                          workers=workers, progress=False,
                          expect=(config["action_semantics"], config["policy_config"]["action_dim"]))
    return {"sampler": result.sampler, "success_rate": result.success_rate, "ci95": list(result.ci95),
            "episodes": result.episodes, "nfe": result.nfe, "seconds": result.seconds, "seed": result.seed,
            "successes": [int(r.success) for r in result.per_episode],
            "final_info_mean": {k: float(np.mean([r.final_info[k] for r in result.per_episode]))
                                for k in result.per_episode[0].final_info
                                if all(k in r.final_info for r in result.per_episode)},
            "mean_steps": float(np.mean([r.steps for r in result.per_episode])),
            "summary": result.summary_line()}


def run_cell(task: str, cell: Cell, out: Path, store: Path, minutes: float, episodes: int, workers: int,
             lock: str | None = TRAINING_LOCK, calibrate_s: float = 20.0,
             latency_repeats: int = 15) -> tuple[dict, str]:
    """Trains and evaluates one cell as far as it is not done yet; returns (its result, what was done).

    What was done: "skipped" (nothing left), "evaluated" (trained earlier, settings missing), "trained".
    """
    path, directory = cell_path(out, task, cell.name, minutes), run_dir(out, task, cell.name, minutes)
    checkpoint = directory / "latest"
    result = json.loads(path.read_text()) if path.exists() else None
    wanted = [(s, k) for s, k in cell.settings
              if result is None or result.get("evals", {}).get(setting_key(s, k), {}).get("episodes", 0) < episodes]
    if result is not None and "train" in result and not wanted:
        return result, "skipped"

    with training_lock(lock):
        done = "evaluated"
        if result is None or "train" not in result or not (checkpoint / "model.safetensors").exists():
            from robopolicy.train.checkpoint import load_policy

            print(f"[{short_name(task)} / {cell.name}] training for {minutes:g} min", flush=True)
            trained = train_cell(cell, store, directory, minutes * 60, min(calibrate_s, minutes * 6))
            policy, _, _ = load_policy(checkpoint)
            params = sum(p.numel() for p in policy.parameters())
            result = {"task": short_name(task), "cell": cell.name, "policy": cell.policy, "preset": cell.preset,
                      "overrides": dict(cell.overrides), "train_overrides": dict(cell.train_overrides),
                      "minutes": minutes, "store": os.path.relpath(store, out), "params": params,
                      "policy_config": {k: getattr(policy.config, k)
                                        for k in ("horizon", "n_obs_steps", "n_action_steps")},
                      "train": trained, "evals": {}, "machine": machine_info()}
            _write_json(path, result)
            wanted, done = list(cell.settings), "trained"
        for sampler, steps in wanted:
            key = setting_key(sampler, steps)
            print(f"[{short_name(task)} / {cell.name}] evaluating {key}: {episodes} episodes", flush=True)
            row = evaluate_setting(checkpoint, task, sampler, steps, episodes, workers)
            row["latency"] = chunk_latency(checkpoint, sampler, steps, store, latency_repeats)
            result["evals"][key] = row
            _write_json(path, result)
            print(f"[{short_name(task)} / {cell.name}] {row['summary']} latency "
                  f"{row['latency']['median_ms']:.1f} ms/chunk", flush=True)
    return result, done


# --- the report -------------------------------------------------------------------------------------------------
def collect_results(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("*__*__*min.json"))]


def markdown(results: list[dict], collects: dict[str, dict], tasks: list[str], cells: list[str],
             machine: dict) -> str:
    lines = [
        "## Policy families under one CPU budget (`bench/grid.py`)",
        "",
        "Every cell trains on the same expert demonstrations of its task (collection seeds 0+i) for the same "
        "wall-clock budget, under a lock so that no two trainings share the machine; the steps that budget "
        "reached are listed. Each checkpoint is evaluated with every sampler setting of its family on the "
        "same episodes (evaluation seeds 1000+i). Success is shown with its Wilson 95% interval. NFE is "
        "network evaluations per chunk (EBT: energy gradients, each a forward and a backward pass). Latency "
        "is one batch-1 chunk on one CPU thread (median). "
        f"Machine: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores shared with other jobs "
        "(each cell's JSON records the load while it trained).",
        "",
    ]
    for name in cells:
        if _is_variant(name):
            changed = ", ".join(f"{k}={v}" for k, v in CELLS[name].overrides + CELLS[name].train_overrides)
            ran_on = sorted({r["task"] for r in results if r["cell"] == name}) or ["no task yet"]
            lines += [f"`{name}` is `{CELLS[name].policy}` ({CELLS[name].preset}) with {changed}; a study, run on "
                      f"{', '.join(ran_on)}.", ""]
    by_key = {(r["task"], r["cell"], r["minutes"]): r for r in results}
    budgets = sorted({r["minutes"] for r in results}) or []
    for task in map(short_name, tasks):
        collect = collects.get(task)
        expert = (f"expert {collect['expert_success_rate']:.0%}, {collect['episodes_written']} demos"
                  if collect else "store not collected yet")
        lines += [f"### {task} ({expert})", "",
                  "| policy | sampler | success | 95% CI | NFE | latency / chunk | train budget | steps | params |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for minutes in budgets:
            for name in cells:
                r = by_key.get((task, name, minutes))
                if r is None and _is_variant(name):
                    continue
                if r is None:
                    lines.append(f"| {name} | — | not run yet | | | | {minutes:g} min | | |")
                    continue
                t = r["train"]
                keys = [setting_key(*s) for s in CELLS[name].settings]
                for key in keys + [k for k in r["evals"] if k not in keys]:
                    e = r["evals"].get(key)
                    if e is None:
                        lines.append(f"| {name} | {key} | not evaluated yet | | | | "
                                     f"{minutes:g} min | {t['steps']} | {r['params']:,} |")
                        continue
                    lo, hi = e["ci95"]
                    nfe = f"{e['nfe']:g}" if e["nfe"] is not None else "—"
                    measures = "".join(f", {label} {e['final_info_mean'][k] * scale:.1f} {unit}"
                                       for k, (label, scale, unit) in MEASURES.items()
                                       if k in e.get("final_info_mean", {}))
                    lines.append(f"| {name} | {e['sampler']} | {e['success_rate']:.2f} ({sum(e['successes'])}/"
                                 f"{e['episodes']}){measures} | [{lo:.2f}, {hi:.2f}] | {nfe} | "
                                 f"{e['latency']['median_ms']:.1f} ms | {minutes:g} min | {t['steps']} | "
                                 f"{r['params']:,} |")
        lines.append("")
    return "\n".join(lines)


def _is_variant(name: str) -> bool:
    """A cell that changes its family's preset (a study run on chosen tasks, not on every one)."""
    return bool(CELLS[name].overrides or CELLS[name].train_overrides)


def print_table(results: list[dict]) -> None:
    header = f"{'task':<30} {'cell':<14} {'sampler':<10} {'success':>8} {'95% CI':>14} {'NFE':>5} " \
             f"{'ms/chunk':>9} {'steps':>6}"
    print(header)
    print("-" * len(header))
    for r in results:
        for key, e in r["evals"].items():
            print(f"{r['task']:<30} {r['cell']:<14} {e['sampler']:<10} {e['success_rate']:>8.2f} "
                  f"[{e['ci95'][0]:.2f},{e['ci95'][1]:.2f}] {e['nfe']:>5g} {e['latency']['median_ms']:>9.1f} "
                  f"{r['train']['steps']:>6}")


def write_report(out: Path, results_dir: Path, tasks: list[str], cells: list[str], args: dict) -> None:
    """grid.json and grid.md from every cell under `out`: earlier runs' tasks and cells stay in the table."""
    results = collect_results(out)
    tasks = list(dict.fromkeys([*tasks, *(r["task"] for r in results)]))
    cells = [c for c in CELLS if c in cells or any(r["cell"] == c for r in results)]
    collects = {p.name.removesuffix(".collect.json"): json.loads(p.read_text())
                for p in out.glob("*.collect.json")}
    machine = machine_info()
    results_dir.mkdir(parents=True, exist_ok=True)
    _write_json(results_dir / "grid.json", {"benchmark": "grid", "machine": machine, "args": args,
                                            "collect": collects, "cells": results})
    (results_dir / "grid.md").write_text(markdown(results, collects, tasks, cells, machine))
    print_table(results)
    print(f"wrote {results_dir / 'grid.json'} and {results_dir / 'grid.md'}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=DEFAULT_TASKS)
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    parser.add_argument("--minutes", type=float, default=5.0, help="wall-clock training budget per cell")
    parser.add_argument("--episodes", type=int, default=20, help="evaluation episodes per sampler setting")
    parser.add_argument("--demos", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2, help="evaluation worker processes")
    parser.add_argument("--out", help="stores, checkpoints and per-cell JSON (default bench/results/grid)")
    parser.add_argument("--results", help="where grid.json and grid.md go (default bench/results)")
    parser.add_argument("--no-lock", action="store_true", help="do not take the shared training lock")
    parser.add_argument("--report-only", action="store_true", help="rewrite grid.json/grid.md from the cells")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 15 s budget, 4 demos, 2 episodes, first task, into a temporary folder")
    args = parser.parse_args(argv)
    if args.quick:
        args.minutes, args.episodes, args.demos = 0.25, 2, 4
        args.tasks = args.tasks if argv and "--tasks" in argv else args.tasks[:1]
        args.out = args.out or str(Path(tempfile.gettempdir()) / "robopolicy-grid-quick")
        args.results = args.results or args.out
    out = Path(args.out or RESULTS / "grid")
    results_dir = Path(args.results or RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    tasks = [short_name(t) for t in args.tasks]

    if not args.report_only:
        for task in tasks:
            store, collect = ensure_store(f"robopolicy/{task}", out, args.demos)
            print(f"[{task}] store {store}: {collect['episodes_written']} demos, expert "
                  f"{collect['expert_success_rate']:.0%}", flush=True)
            for name in args.cells:
                try:
                    _, done = run_cell(f"robopolicy/{task}", CELLS[name], out, store, args.minutes, args.episodes,
                                       args.workers, None if args.no_lock else TRAINING_LOCK)
                except (RuntimeError, ValueError, FloatingPointError) as e:
                    print(f"[{task} / {name}] failed: {e}", file=sys.stderr, flush=True)
                    continue
                print(f"[{task} / {name}] {done}", flush=True)
                write_report(out, results_dir, tasks, args.cells, vars(args))
    write_report(out, results_dir, tasks, args.cells, vars(args))


if __name__ == "__main__":
    main()
