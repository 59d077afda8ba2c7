"""Scaling curves of Diffusion Policy (cpu preset): what inference and training cost grows with.

    python bench/scaling.py [--quick] [--threads 1] [--out bench/results/scaling.json]

Batch-1 latency of one DDIM action chunk against the horizon H, the action dimension A, the number of
96×96 cameras (each through its own ResNet-18 encoder) and the number of denoising steps; training
throughput against the batch size, in fp32 and bf16 mixed precision; and 2-process DDP on the CPU
(torchrun, gloo, one thread each) against one process with the same two cores. One sweep varies one knob;
the others stay at the preset (H=16, A=4, Meta-World's 39-d state, no camera, DDIM-10, batch 256). Medians
after warm-up. Prints tables, writes JSON (machine, load average), plots to bench/results/plots/scaling_*.png
and a markdown section.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.benchmarks_md import output_path, write_results  # noqa: E402
from bench.machine import machine_info  # noqa: E402
from bench.policy_speed import timed  # noqa: E402
from robopolicy.policies import build_config, get_policy_class  # noqa: E402

STATE_DIM, ACTION_DIM, IMAGE_HW = 39, 4, 96
SWEEPS = {  # knob: (full values, quick values)
    "horizon": ([8, 16, 32, 64], [8, 16]),
    "action_dim": ([2, 7, 14, 32], [2, 14]),
    "cameras": ([0, 1, 2, 3], [0, 1]),
    "denoising_steps": ([1, 2, 5, 10, 20, 50], [1, 10]),
    "batch_size": ([16, 64, 256, 1024], [16, 64]),
}
LABELS = {"horizon": "horizon H", "action_dim": "action dimension A", "cameras": "96×96 cameras",
          "denoising_steps": "DDIM steps", "batch_size": "training batch"}


def make_policy(horizon: int = 16, action_dim: int = ACTION_DIM, cameras: int = 0, steps: int = 10):
    shapes = {"state": [STATE_DIM], **{f"image_cam{i}": [IMAGE_HW, IMAGE_HW, 3] for i in range(cameras)}}
    torch.manual_seed(0)
    config = build_config("diffusion", "cpu", shapes, action_dim, horizon=horizon,
                          n_action_steps=min(8, horizon - 1), sampler="ddim", num_inference_steps=steps)
    return get_policy_class("diffusion")(config)


def observation(policy, batch: int = 1) -> dict[str, torch.Tensor]:
    c = policy.config
    return {k: torch.rand(batch, c.n_obs_steps, *s) * 2 - 1 for k, s in c.obs_shapes.items()}


def chunk_ms(policy, repeats: int) -> float:
    policy.eval()
    obs = observation(policy)
    with torch.no_grad():
        return timed(lambda: policy.predict_chunk(obs), repeats) * 1e3


def train_samples_per_s(batch_size: int, repeats: int, bf16: bool = False) -> float:
    """A training step as the trainer runs it (fused AdamW; `bf16`: --mixed-precision bf16)."""
    policy = make_policy().train()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-4, fused=True)
    batch = {**observation(policy, batch_size), "action": torch.rand(batch_size, 16, ACTION_DIM) * 2 - 1}

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = policy(batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return batch_size / timed(step, repeats)


def latency_sweeps(quick: bool, repeats: int) -> dict[str, list[dict]]:
    values = {k: v[1] if quick else v[0] for k, v in SWEEPS.items()}
    out = {"horizon": [], "action_dim": [], "cameras": [], "denoising_steps": [], "batch_size": []}
    for h in values["horizon"]:
        out["horizon"].append({"value": h, "chunk_ms": chunk_ms(make_policy(horizon=h), repeats)})
    for a in values["action_dim"]:
        out["action_dim"].append({"value": a, "chunk_ms": chunk_ms(make_policy(action_dim=a), repeats)})
    for n in values["cameras"]:
        policy = make_policy(cameras=n)
        out["cameras"].append({"value": n, "chunk_ms": chunk_ms(policy, repeats),
                               "params": sum(p.numel() for p in policy.parameters())})
    policy = make_policy()
    for s in values["denoising_steps"]:
        policy.config.num_inference_steps = s
        out["denoising_steps"].append({"value": s, "chunk_ms": chunk_ms(policy, repeats)})
    for b in values["batch_size"]:
        out["batch_size"].append({"value": b, "samples_per_s": train_samples_per_s(b, max(2, repeats // 2)),
                                  "samples_per_s_bf16": train_samples_per_s(b, max(2, repeats // 2), bf16=True)})
    return out


def write_store(path: Path, episodes: int = 20, length: int = 100) -> None:
    from robopolicy.store import EpisodeWriter

    rng = np.random.default_rng(0)
    with EpisodeWriter(path) as w:
        for _ in range(episodes):
            w.add_episode({"state": rng.normal(size=(length, STATE_DIM)).astype(np.float32),
                           "action": rng.uniform(-1, 1, (length, ACTION_DIM)).astype(np.float32)})


def train_run(store: Path, out: Path, processes: int, threads: int, steps: int, batch_size: int) -> float:
    """Samples/s (all processes) of a `robopolicy train` run, from its metrics after the first log."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    train = ["-m", "robopolicy.cli", "--quiet", "train", "--store", str(store), "--out", str(out), "--steps",
             str(steps), "--batch-size", str(batch_size), "--device", "cpu", "--val-episodes", "1"]
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", str(processes)] if processes > 1 else []
    proc = subprocess.run([sys.executable, *launcher, *train], env=env, capture_output=True, text=True,
                          timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"training with {processes} process(es) failed:\n{proc.stderr[-2000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["train/samples_per_s"] for r in rows if "train/samples_per_s" in r][1:]  # skip the warm-up
    return float(np.median(rates))


def ddp_sweep(quick: bool, batch_size: int = 64) -> list[dict]:
    steps = 30 if quick else 60
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store.zarr"
        write_store(store)
        for processes, threads in [(1, 1), (1, 2), (2, 1)]:
            run = Path(tmp) / f"run{processes}x{threads}"
            rate = train_run(store, run, processes, threads, steps, batch_size)
            rows.append({"processes": processes, "threads_per_process": threads,
                         "batch_per_process": batch_size, "global_batch": batch_size * processes,
                         "samples_per_s": rate})
    return rows


def plot(result: dict, plots: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots.mkdir(parents=True, exist_ok=True)
    names = []
    for knob, rows in result["sweeps"].items():
        metric = "samples_per_s" if knob == "batch_size" else "chunk_ms"
        fig, ax = plt.subplots(figsize=(4, 3), dpi=100)
        ax.plot([r["value"] for r in rows], [r[metric] for r in rows], "o-", label="fp32")
        if knob == "batch_size" and "samples_per_s_bf16" in rows[0]:
            ax.plot([r["value"] for r in rows], [r["samples_per_s_bf16"] for r in rows], "s--",
                    label="bf16 mixed precision")
            ax.legend(fontsize=8)
        ax.set_xlabel(LABELS[knob])
        ax.set_ylabel("training samples/s" if metric == "samples_per_s" else "batch-1 chunk latency (ms)")
        if knob in ("batch_size", "denoising_steps", "horizon"):
            ax.set_xscale("log", base=2)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.set_title(f"diffusion cpu preset: {LABELS[knob]}", fontsize=9)
        fig.tight_layout()
        name = f"scaling_{knob}.png"
        fig.savefig(plots / name)
        plt.close(fig)
        names.append(name)
    return names


def markdown(result: dict) -> str:
    s = result["sweeps"]
    lines = ["## Scaling: latency and throughput against the problem size", "",
             "Diffusion Policy, cpu preset (U-Net 64/128/256), DDIM-10, batch-1 chunk latency unless noted; "
             "one knob varies, the rest stay at H=16, A=4, 39-d state, no camera. "
             f"{result['threads']} torch thread(s); load average {result['load_average_before'][0]:.2f} → "
             f"{result['load_average_after'][0]:.2f} on "
             f"{result['machine']['cores']} cores. `python bench/scaling.py`.", ""]
    for knob in ("horizon", "action_dim", "cameras", "denoising_steps"):
        rows = s[knob]
        lines += [f"| {LABELS[knob]} | " + " | ".join(str(r["value"]) for r in rows) + " |",
                  "|---|" + "---:|" * len(rows),
                  "| chunk ms | " + " | ".join(f"{r['chunk_ms']:.1f}" for r in rows) + " |", ""]
    rows = s["batch_size"]
    lines += ["| training batch | " + " | ".join(str(r["value"]) for r in rows) + " |",
              "|---|" + "---:|" * len(rows),
              "| samples/s | " + " | ".join(f"{r['samples_per_s']:,.0f}" for r in rows) + " |"]
    if "samples_per_s_bf16" in rows[0]:
        lines.append("| samples/s, bf16 mixed precision | "
                     + " | ".join(f"{r['samples_per_s_bf16']:,.0f}" for r in rows) + " |")
    lines.append("")
    if result.get("ddp"):
        lines += ["Data-parallel training on the CPU (`robopolicy train`, batch 64 per process, samples/s "
                  "over all processes after the first log interval):", "",
                  "| processes × threads | global batch | samples/s |", "|---|---:|---:|"]
        lines += [f"| {r['processes']} × {r['threads_per_process']} | {r['global_batch']} | "
                  f"{r['samples_per_s']:,.0f} |" for r in result["ddp"]]
        lines.append("")
    lines += [" ".join(f"![{n}](plots/{n})" for n in result["plots"]), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two points per sweep, short DDP runs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the sweeps")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-ddp", action="store_true", help="skip the multi-process comparison")
    parser.add_argument("--out", help="JSON (default bench/results/scaling.json; --quick: a temp folder)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    load_before, t0 = os.getloadavg(), time.perf_counter()
    result = {"benchmark": "scaling", "quick": args.quick, "threads": args.threads, "preset": "cpu",
              "sweeps": latency_sweeps(args.quick, 2 if args.quick else args.repeats)}
    result["ddp"] = [] if args.no_ddp else ddp_sweep(args.quick)
    out = output_path("scaling", args.out, args.quick)
    result.update(load_average_before=load_before, load_average_after=os.getloadavg(),
                  seconds=time.perf_counter() - t0, machine=machine_info())
    result["plots"] = plot(result, out.parent / "plots") if not args.quick else []

    for knob, rows in result["sweeps"].items():
        metric = "samples_per_s" if knob == "batch_size" else "chunk_ms"
        print(f"{LABELS[knob]:<20} " + "  ".join(f"{r['value']}: {r[metric]:,.1f}" for r in rows)
              + ("  (samples/s)" if knob == "batch_size" else "  (ms)"))
    for r in result["ddp"]:
        print(f"train {r['processes']} process(es) × {r['threads_per_process']} thread(s), global batch "
              f"{r['global_batch']}: {r['samples_per_s']:,.0f} samples/s")
    write_results(result, out, args.quick, markdown)
    return result


if __name__ == "__main__":
    main()
