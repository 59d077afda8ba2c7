"""The floor: what the paper U-Net costs per step (FLOPs, bytes) and the least time this machine can take for it.

    python bench/floor.py [--device cpu] [--out bench/results/floor.json]

FLOPs are counted by torch.utils.flop_counter on the real module (forward, and forward + backward for training);
bytes are the weights a batch-1 forward must stream. The machine's peaks are measured here, in this run: fp32 and
bf16 matmul GFLOP/s, conv1d GFLOP/s at the U-Net's training shapes, and the GB/s at which a sum, a
matrix-vector product and the fast path's batch-1 GEMMs (robopolicy's stream_linear and oneDNN's) read 256 MB.
Floor = max(FLOPs / best compute peak, bytes / best of those read rates); `bench/speed.py` divides its times by
it.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.machine import machine_info  # noqa: E402
from robopolicy.nn.fast_unet import PRECISIONS, PackedLinear, _onednn_packing  # noqa: E402
from robopolicy.nn.unet1d import ConditionalUnet1D, Conv1d  # noqa: E402

# The paper U-Net, low-dim PushT-like (obs 20 x To 2, action 2, H 16): 63,554,434 parameters.
PAPER_UNET = dict(action_dim=2, global_cond_dim=40, down_dims=(256, 512, 1024), kernel_size=5, n_groups=8,
                  step_embed_dim=128)
HORIZON = 16


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def median_time(fn, repeats: int, warmup: int = 1, device: str = "cpu") -> float:
    """Median wall time of fn() in seconds, after warm-up."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def unet_costs(batch_sizes=(1, 64, 256)) -> dict:
    """FLOPs per forward and per training step (fwd + bwd) at each batch size, and the weight bytes."""
    torch.manual_seed(0)
    unet = ConditionalUnet1D(**PAPER_UNET)
    params = sum(p.numel() for p in unet.parameters())
    costs = {"params": params, "weight_bytes_fp32": 4 * params, "weight_bytes_bf16": 2 * params}
    a, d = PAPER_UNET["action_dim"], PAPER_UNET["global_cond_dim"]
    for b in batch_sizes:
        x, t, cond = torch.randn(b, HORIZON, a), torch.randint(0, 100, (b,)), torch.randn(b, d)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            unet(x, t, cond)
        costs[f"forward_flops_b{b}"] = counter.get_total_flops()
        if b > 1:
            # Counted through the stock convolution backward: our weight-gradient forms compute the same sums,
            # the GEMM one in an op (oneDNN's matmul) that torch's FLOP counter does not know and would leave out.
            Conv1d.fast_weight_grad = False
            try:
                with FlopCounterMode(display=False) as counter:
                    unet(x, t, cond).square().mean().backward()
            finally:
                Conv1d.fast_weight_grad = True
            costs[f"train_flops_b{b}"] = counter.get_total_flops()
    return costs


def measure_peaks(device: str = "cpu", quick: bool = False) -> dict:
    """This machine's attainable rates, measured now (medians): GFLOP/s and GB/s."""
    repeats = 3 if quick else 7
    peaks = {}
    n = 2048 if device == "cpu" else 8192
    for name, dtype in [("matmul_fp32", torch.float32), ("matmul_bf16", torch.bfloat16)]:
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        peaks[f"{name}_gflops"] = 2 * n ** 3 / median_time(lambda: a @ b, repeats, device=device) / 1e9
    # The U-Net's deepest level at training batch 256: (256, 1024, L=4), k=5; and its widest, (256, 256, L=16).
    for c, length in [(1024, 4), (256, 16)]:
        for precision, dtype in [("fp32", torch.float32), ("bf16", torch.bfloat16)]:
            x = torch.randn(256, c, length, device=device, dtype=dtype)
            w = torch.randn(c, c, 5, device=device, dtype=dtype)
            flops = 2 * 256 * length * c * c * 5
            seconds = median_time(lambda: F.conv1d(x, w, padding=2), repeats, device=device)
            peaks[f"conv1d_{precision}_c{c}_l{length}_gflops"] = flops / seconds / 1e9
    big = torch.randn(64 * 2 ** 20, device=device)  # 256 MB: far beyond any cache
    peaks["read_gbs"] = big.numel() * 4 / median_time(lambda: big.sum(), repeats, device=device) / 1e9
    w, v = torch.randn(8192, 8192, device=device), torch.randn(8192, device=device)  # 256 MB of weights
    peaks["matvec_fp32_gbs"] = w.numel() * 4 / median_time(lambda: torch.mv(w, v), repeats, device=device) / 1e9
    if _onednn_packing(torch.device(device)):
        peaks |= _gemm_streaming_gbs(repeats)
    for precision in ("fp32", "bf16"):
        peaks[f"compute_{precision}_gflops"] = max(v for k, v in peaks.items()
                                                   if k.endswith("gflops") and f"_{precision}" in k)
    return peaks


def _gemm_streaming_gbs(repeats: int) -> dict:
    """GB/s of weights that the fast path's GEMMs (`PackedLinear`: robopolicy's stream_linear kernel, and
    oneDNN's packed GEMM) stream at the U-Net's batch-1 shape that holds most of its bytes (the deepest level:
    4 rows, 5120 -> 1024), from DRAM: the calls cycle through 25 weight copies (256 MB in fp32, 128 MB in bf16;
    far beyond the caches), as a denoising step cycles through the network's weights."""
    out = {}
    k, n, m = 5120, 1024, 4
    copies = int(256e6 // (k * n * 4))
    for precision, dtype in PRECISIONS.items():
        for gemm, stream in [("onednn", False), ("stream", True)]:
            layers = [PackedLinear(torch.randn(n, k), None, dtype, rows=m, stream=stream) for _ in range(copies)]
            if layers[0].layout != ("stream" if stream else "onednn"):
                continue  # the kernel does not run here
            x = torch.randn(m, k)
            seconds = median_time(lambda: [layer(x) for layer in layers], repeats)
            out[f"gemm_m4_{gemm}_{precision}_gbs"] = copies * k * n * dtype.itemsize / seconds / 1e9
    return out


def best_read_gbs(peaks: dict) -> float:
    """The best rate at which anything measured here read 256 MB (a sum, a matrix-vector product, a batch-1
    GEMM): the memory's attainable bandwidth."""
    return max(v for key, v in peaks.items() if key == "read_gbs" or key.startswith(("matvec_", "gemm_m4_")))


def floors(costs: dict, peaks: dict) -> dict:
    """Least time (s) per batch-1 forward, per chunk, and per training step, from costs and peaks."""
    compute, compute_bf16 = peaks["compute_fp32_gflops"] * 1e9, peaks["compute_bf16_gflops"] * 1e9
    matvec = peaks["matvec_fp32_gbs"] * 1e9
    read = best_read_gbs(peaks) * 1e9
    f1 = costs["forward_flops_b1"]
    out = {
        "forward_b1_fp32_s": max(f1 / compute, costs["weight_bytes_fp32"] / read),
        "forward_b1_fp32_matvec_s": max(f1 / compute, costs["weight_bytes_fp32"] / matvec),
        "forward_b1_bf16_s": max(f1 / compute_bf16, costs["weight_bytes_bf16"] / read),
    }
    # At the rate the fast path's GEMM (stream_linear where it runs, else oneDNN) streams weights: what the
    # GEMMs alone would take.
    for precision in ("fp32", "bf16"):
        rate = peaks.get(f"gemm_m4_stream_{precision}_gbs") or peaks.get(f"gemm_m4_onednn_{precision}_gbs")
        if rate:
            out[f"forward_b1_{precision}_gemm_s"] = costs[f"weight_bytes_{precision}"] / (rate * 1e9)
    per_forward = {k.removeprefix("forward_b1_").removesuffix("_s"): v for k, v in out.items()}
    for steps in (10, 100):
        out |= {f"chunk_{steps}_{name}_s": steps * seconds for name, seconds in per_forward.items()}
    for key, flops in costs.items():
        if key.startswith("train_flops_"):
            # bf16: mixed-precision training, every GEMM and convolution at the bf16 rate (a lower bound: the
            # norms, activations and optimizer stay fp32).
            out[f"train_step_{key.removeprefix('train_flops_')}_fp32_s"] = flops / compute
            out[f"train_step_{key.removeprefix('train_flops_')}_bf16_s"] = flops / compute_bf16
    return out


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def markdown(result: dict) -> str:
    c, p, f = result["costs"], result["peaks"], result["floors"]
    lines = ["## The floor: paper U-Net on this machine", "",
             f"Paper U-Net, low-dim (obs 20 × To 2, action 2, H 16): {c['params']:,} parameters, "
             f"{c['weight_bytes_fp32'] / 1e6:.0f} MB of fp32 weights. Peaks measured in the same run "
             f"(`bench/floor.py`, {result['machine']['cpu']}, {result['machine']['torch_threads']} threads, "
             f"load average {result['load_average']}).", "",
             "| measured peak | value |", "|---|---|"]
    lines += [f"| {k} | {v:,.1f} |" for k, v in p.items()]
    lines += ["", "| cost | value |", "|---|---|"]
    lines += [f"| {k} | {v / 1e9:,.3f} G |" for k, v in c.items() if "flops" in k]
    lines += ["", "| floor | seconds |", "|---|---|"]
    lines += [f"| {k.removesuffix('_s')} | {v:.4f} |" for k, v in f.items()]
    return "\n".join(lines) + "\n"


def run(device: str = "cpu", quick: bool = False) -> dict:
    costs = unet_costs()
    peaks = measure_peaks(device, quick)
    return {"benchmark": "floor", "device": device, "machine": machine_info(), "load_average": load_average(),
            "costs": costs, "peaks": peaks, "floors": floors(costs, peaks)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "floor.json"))
    args = parser.parse_args()
    result = run(args.device, args.quick)
    text = markdown(result)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(text)
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
