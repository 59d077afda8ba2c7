"""Runs every benchmark in bench/, prints one summary table, writes run_all.json and BENCHMARKS.md.

    python bench/run_all.py [--quick] [--only NAME ...] [--skip NAME ...] [--no-lock]

The benchmarks are the list below, in order. Each runs as its own process (`python bench/<name>.py`), so
one that fails or runs out of memory does not take the others down. A benchmark is skipped when its script
is missing, has no `main`, or needs a package that is not installed (the simulation or ROS extras).

`--quick` runs each in its small mode, with outputs in a temporary folder, so the published results stay
as they are; a benchmark without a small mode is skipped then. Without `--quick` they run in full and
write bench/results/<name>.json and .md (hours: suite and grid train policies).

Timings share the machine with other jobs, so each benchmark runs under the shared training lock
(/tmp/robopolicy-train.lock) unless it takes that lock itself (per training cell). bench/results/run_all.json
records the machine, the load average and every benchmark's status; BENCHMARKS.md is regenerated last.
"""

import argparse
import ast
import datetime
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import benchmarks_md  # noqa: E402
from bench.machine import TRAINING_LOCK, machine_info, training_lock  # noqa: E402

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"


@dataclass(frozen=True)
class Benchmark:
    """name: bench/<name>.py. quick: arguments of its small mode ("{tmp}" becomes the temporary output
    folder); None: it has none, so --quick skips it; "auto": `--quick` (and `--out {tmp}/<name>.json`) when
    the script has those flags. needs: modules that must be importable."""

    name: str
    quick: tuple[str, ...] | str | None = "auto"
    needs: tuple[str, ...] = ()


BENCHMARKS = [
    Benchmark("policy_speed", ("--quick", "--out", "{tmp}/policy_speed.json")),
    Benchmark("speed"),
    Benchmark("floor"),
    Benchmark("peer"),
    Benchmark("data_path", ("--quick", "--out", "{tmp}/data_path.json")),
    Benchmark("scaling", ("--quick", "--out", "{tmp}/scaling.json")),
    Benchmark("env_speed", ("--quick", "--out", "{tmp}/env_speed.json"), needs=("mujoco", "metaworld")),
    Benchmark("experts_robosuite", None, needs=("robosuite",)),
    Benchmark("suite", ("--markdown-only",), needs=("mujoco", "metaworld")),
    Benchmark("grid", ("--quick", "--results", "{tmp}"), needs=("mujoco", "metaworld")),
    Benchmark("ros_closed_loop", ("--episodes", "1", "--out", "{tmp}/ros"), needs=("rclpy", "mujoco")),
    Benchmark("ros_latency", None, needs=("rclpy", "mujoco")),  # its .md goes to results/ even with --out
    Benchmark("rtc", ("--episodes", "1", "--delays", "2", "--out", "{tmp}"), needs=("robosuite",)),
    Benchmark("quad_policy", None, needs=("mujoco",)),
    Benchmark("seed_rollout", None, needs=("robosuite",)),
    Benchmark("ebt_energy", None),
]


def skip_reason(bench: Benchmark, quick: bool) -> str | None:
    script = BENCH / f"{bench.name}.py"
    if not script.is_file():
        return "script missing"
    source = script.read_text()
    if not any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in ast.parse(source).body):
        return "no main()"
    missing = [m for m in bench.needs if importlib.util.find_spec(m) is None]
    if missing:
        return f"needs {', '.join(missing)}"
    if quick and quick_args(bench, source, "") is None:
        return "no quick mode"
    return None


def quick_args(bench: Benchmark, source: str, tmp: str) -> list[str] | None:
    if bench.quick == "auto":
        if '"--quick"' not in source:
            return None
        return ["--quick", *(["--out", f"{tmp}/{bench.name}.json"] if '"--out"' in source else [])]
    if bench.quick is None:
        return None
    return [a.replace("{tmp}", tmp) for a in bench.quick]


def locks_itself(source: str) -> bool:
    """Scripts that take the training lock per cell would wait forever on ours: run them without it."""
    return "training_lock(" in source or "fcntl.flock" in source


def run_one(bench: Benchmark, quick: bool, tmp: str, lock: bool, timeout: float) -> dict:
    script = BENCH / f"{bench.name}.py"
    source = script.read_text()
    args = quick_args(bench, source, tmp) if quick else []
    row = {"name": bench.name, "args": args}
    before = {p: p.stat().st_mtime for p in RESULTS.glob("**/*.md")}
    load = os.getloadavg()
    with training_lock(TRAINING_LOCK if lock and not locks_itself(source) else None):
        t0 = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, str(script), *args], cwd=BENCH.parent, capture_output=True,
                                  text=True, timeout=timeout)
            row.update(status="ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})",
                       returncode=proc.returncode, stdout_tail=proc.stdout[-3000:],
                       stderr_tail=proc.stderr[-3000:])
        except subprocess.TimeoutExpired:
            row.update(status=f"timed out after {timeout:.0f}s", returncode=None)
        row["seconds"] = time.perf_counter() - t0
    row["load_average"] = [load, os.getloadavg()]
    row["sections"] = sorted(str(p.relative_to(RESULTS)) for p in RESULTS.glob("**/*.md")
                             if p.stat().st_mtime != before.get(p))
    return row


def print_table(rows: list[dict]) -> None:
    print(f"\n{'benchmark':<20} {'status':<28} {'time':>8}  sections written")
    print("-" * 80)
    for r in rows:
        t = f"{r['seconds']:.0f}s" if "seconds" in r else "-"
        print(f"{r['name']:<20} {r['status']:<28} {t:>8}  {', '.join(r.get('sections', [])) or '-'}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small modes, outputs to a temporary folder")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these benchmarks")
    parser.add_argument("--skip", nargs="+", default=[], metavar="NAME")
    parser.add_argument("--no-lock", action="store_true", help="do not take the shared training lock")
    parser.add_argument("--timeout", type=float, default=6 * 3600, help="seconds per benchmark")
    parser.add_argument("--out", help="summary JSON (default bench/results/run_all.json; --quick: temp)")
    parser.add_argument("--page", default=str(benchmarks_md.ROOT / "BENCHMARKS.md"),
                        help="the page to regenerate")
    args = parser.parse_args(argv)
    names = [b.name for b in BENCHMARKS]
    unknown = [n for n in [*(args.only or []), *args.skip] if n not in names]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; known: {names}")

    tmp = tempfile.mkdtemp(prefix="robopolicy-bench-quick-") if args.quick else ""
    started = datetime.datetime.now().isoformat(timespec="seconds")
    rows = []
    for bench in BENCHMARKS:
        if (args.only and bench.name not in args.only) or bench.name in args.skip:
            continue
        reason = skip_reason(bench, args.quick)
        if reason:
            rows.append({"name": bench.name, "status": f"skipped: {reason}"})
            print(f"{bench.name}: skipped ({reason})")
            continue
        print(f"{bench.name}: running{' (quick)' if args.quick else ''} ...", flush=True)
        rows.append(run_one(bench, args.quick, tmp, not args.no_lock, args.timeout))
        if rows[-1]["status"] != "ok":
            print(rows[-1].get("stderr_tail", "")[-1500:], file=sys.stderr)

    result = {"benchmark": "run_all", "quick": args.quick, "started": started,
              "finished": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine_info(),
              "load_average": os.getloadavg(), "benchmarks": rows}
    out = Path(args.out) if args.out else (Path(tmp) if args.quick else RESULTS) / "run_all.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    page = benchmarks_md.generate(RESULTS, Path(args.page))
    print_table(rows)
    print(f"wrote {out} and {page}")
    return result


if __name__ == "__main__":
    main()
