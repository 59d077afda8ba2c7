"""Ours (eager, fast and compiled, fp32 and bf16) side by side with LeRobot 0.4.4, and both against the floor.

    flock /tmp/robopolicy-train.lock .venv-lerobot/bin/python bench/speed.py [--quick] [--device cpu|cuda]
    python bench/speed.py --render-only     # tables and plots again from bench/results/speed.json

The network is the paper U-Net, low-dim PushT-like (obs 20, action 2, H 16, To 2, down dims 256/512/1024,
kernel 5, step embedding 128; 63,554,434 parameters) in both. In one process, alternating contestant by
contestant each round, it measures: batch-1 chunk latency (DDIM-10, DDPM-100), a training step at batch 64
and 256 (forward + backward + optimizer, then + EMA), and the peak RSS growth of each. `bench/floor.py`
measures the machine's peaks in the same run, before and after the contestants; every time is also given as
a ratio to its floor, from the better of the two measurements. Run with
.venv's python when .venv-lerobot is absent: the peer columns then show the reference numbers of
shared/reference/peer-baselines.md, labelled as such.

'fast' is the packed inference view (FastUnet1D); 'compiled' is the same view compiled by inductor with the
weights frozen in and per-shape GEMM autotuning (`fast_unet.compile_step`; its compilation is not timed). Their
GEMMs run robopolicy's stream_linear kernel where the CPU has AVX-512; the 'oneDNN GEMMs' rows are the compiled
views without it (ROBOPOLICY_STREAM_LINEAR=0), the path before the kernel.

`--device cuda` times ours eager vs fast (torch.compile with CUDA graphs) and bf16 against the GPU's
measured peaks. That path has not been run (no GPU was available when it was written).
"""

import argparse
import contextlib
import ctypes
import gc
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import floor  # noqa: E402
from bench.machine import machine_info  # noqa: E402
from bench.peer import build_lerobot, lerobot_available, lerobot_batch, set_lerobot_sampler  # noqa: E402
from robopolicy.nn import stream_linear  # noqa: E402
from robopolicy.nn.unet1d import Conv1d  # noqa: E402
from robopolicy.policies import build_config, get_policy_class  # noqa: E402

OBS_DIM, ACTION_DIM, TO, H = 20, 2, 2, 16
RESULTS = Path(__file__).parent / "results"
# shared/reference/peer-baselines.md, LeRobot 0.4.4 column (same machine kind, 2 threads, fp32, medians).
LEROBOT_REFERENCE = {"ddim10_ms": 434.0, "ddpm100_ms": 4370.0, "train_b64_ms": 890.0, "train_b256_ms": 2600.0}
TARGETS = {"ddim10_fast_fp32_ms": 100.0, "ddim10_fast_bf16_ms": 60.0, "train_b256_ratio_to_floor": 1.3}


class PeakRSS:
    """Peak growth of the process's resident memory while the block runs (polled every millisecond)."""

    def __enter__(self):
        gc.collect()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed arenas back, so growth is measured from here
        except OSError:
            pass
        self.proc, self.base, self.peak, self.running = psutil.Process(), 0, 0, True
        self.base = self.peak = self.proc.memory_info().rss
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()
        return self

    def _poll(self):
        while self.running:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.001)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)
        self.mb = (self.peak - self.base) / 2 ** 20


def ours(device: str):
    torch.manual_seed(0)
    config = build_config("diffusion", "paper", {"state": [OBS_DIM]}, ACTION_DIM, step_embed_dim=128)
    return get_policy_class("diffusion")(config).to(device)


def chunk_fns(device: str, peer) -> dict:
    """Contestant -> (sampler, steps) -> a function computing one batch-1 chunk.

    Each of ours is its own policy object (same seed, same weights), configured once: switching a policy's
    inference options rebuilds its fast view, which must not land inside a timed call.
    """
    obs = torch.randn(1, TO, OBS_DIM, device=device)

    def our_chunk(fast: bool, precision: str, compile: bool = False, stream: bool = True):
        policy = ours(device).eval().set_inference(fast=fast, precision=precision,
                                                   compile=compile or (fast and device == "cuda"))
        if not stream:  # build (and compile) the view now, with every GEMM oneDNN's or inductor's
            with without_stream_linear(), torch.no_grad():
                policy.predict_chunk({"state": obs})

        def make(sampler, steps):
            def run():
                policy.config.sampler, policy.config.num_inference_steps = sampler, steps
                return policy.predict_chunk({"state": obs})
            return run
        return make

    fns = {"ours eager": our_chunk(False, "fp32"), "ours fast fp32": our_chunk(True, "fp32"),
           "ours fast bf16": our_chunk(True, "bf16")}
    if device == "cpu":  # on CUDA, 'fast' is already compiled
        fns |= {"ours compiled fp32": our_chunk(True, "fp32", compile=True),
                "ours compiled bf16": our_chunk(True, "bf16", compile=True)}
        if stream_linear.available(torch.float32):  # the kernel's gain, side by side
            fns |= {"ours compiled fp32, oneDNN GEMMs": our_chunk(True, "fp32", compile=True, stream=False),
                    "ours compiled bf16, oneDNN GEMMs": our_chunk(True, "bf16", compile=True, stream=False)}
    if peer is not None:
        batch = lerobot_batch(obs)

        def peer_chunk(sampler, steps):
            set_lerobot_sampler(peer, sampler, steps)  # the contestants of one round share the sampler

            def run():
                with torch.no_grad():
                    return peer.diffusion.generate_actions(batch)
            return run
        fns["lerobot 0.4.4"] = peer_chunk
    return fns


@contextlib.contextmanager
def without_stream_linear():
    """Views built inside use oneDNN's GEMMs rather than robopolicy's stream_linear kernel."""
    before = os.environ.get(stream_linear.SWITCH)
    os.environ[stream_linear.SWITCH] = "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ[stream_linear.SWITCH]
        else:
            os.environ[stream_linear.SWITCH] = before


def accuracy(policy, device: str) -> dict:
    """Fast paths vs the eager module on the same weights and noise: relative error of ε and of the chunk."""
    torch.manual_seed(1)
    for p in policy.parameters():  # trained-like scale: the init's outputs are near zero, which flatters errors
        p.data.add_(0.02 * torch.randn_like(p))
    obs = {"state": torch.randn(4, TO, OBS_DIM, device=device)}
    noise = torch.randn(4, H, ACTION_DIM, device=device)
    cond = policy.encode_obs(obs)
    t = torch.tensor([50], device=device)
    out = {}
    with torch.no_grad():
        eps_ref = policy.denoise(noise, t, cond)
        policy.config.sampler, policy.config.num_inference_steps = "ddim", 10
        chunk_ref = policy.set_inference(fast=False).predict_chunk(obs, noise=noise)
        for compile in (False, True) if device == "cpu" else (False,):
            for precision in ("fp32", "bf16"):
                view, step = policy.set_inference(fast=True, precision=precision, compile=compile)._fast_view()
                eps = step(noise, view.condition(t, cond), 0)
                chunk = policy.predict_chunk(obs, noise=noise)
                out[f"{'compiled' if compile else 'fast'} {precision}"] = {
                    "eps_rel_err": float((eps - eps_ref).norm() / eps_ref.norm()),
                    "chunk_ddim10_max_abs_err": float((chunk - chunk_ref).abs().max()),
                    "chunk_ddim10_rel_err": float((chunk - chunk_ref).norm() / chunk_ref.norm())}
    return out


def train_fns(device: str, policy, peer, batch_size: int) -> dict:
    """Contestant -> function running one training step (fwd + bwd + optimizer; '+ EMA' adds our EMA update)."""
    from robopolicy.train.ema import EMA

    obs = torch.randn(batch_size, TO, OBS_DIM, device=device)
    action = torch.rand(batch_size, H, ACTION_DIM, device=device) * 2 - 1
    batch = {"state": obs, "action": action}
    fused = dict(fused=True) if device == "cpu" else dict(foreach=True)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, **fused)
    ema = EMA(policy.parameters(), decay=0.9999, use_ema_warmup=True, power=0.75)

    def our_step(fast_weight_grad: bool, with_ema: bool = False, bf16: bool = False):
        def run():
            Conv1d.fast_weight_grad = fast_weight_grad
            with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):  # as the trainer's --mixed-precision
                loss = policy(batch)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if with_ema:
                ema.step(policy.parameters())
            Conv1d.fast_weight_grad = True
        return run

    fns = {"ours": our_step(True), "ours + EMA": our_step(True, True),
           "ours, oneDNN conv backward": our_step(False), "ours bf16": our_step(True, bf16=True)}
    if peer is not None:
        preset = peer.config.get_optimizer_preset()  # LeRobot's Adam, and its clipping at 10
        peer_opt = preset.build(peer.get_optim_params())
        peer_batch = lerobot_batch(obs, action)

        def peer_step(bf16: bool):
            def run():
                # LeRobot's train script runs its forward under accelerator.autocast(): bf16 when launched
                # with --mixed_precision bf16, and the backward outside it.
                with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                    loss, _ = peer.forward(peer_batch)
                peer_opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(peer.parameters(), preset.grad_clip_norm)
                peer_opt.step()
            return run
        fns["lerobot 0.4.4"] = peer_step(False)
        fns["lerobot 0.4.4 bf16"] = peer_step(True)
    return fns


def alternate(fns: dict, rounds: int, device: str) -> dict:
    """Median seconds per contestant; each round runs every contestant once, in turn (after one warm-up each)."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            floor._sync(device)
            t0 = time.perf_counter()
            fn()
            floor._sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(v) for name, v in times.items()}


def peak_memory(fns: dict) -> dict:
    out = {}
    for name, fn in fns.items():
        with PeakRSS() as m:
            fn()
        out[name] = round(m.mb, 1)
    return out


def top_ops(fn, n: int = 10) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:n]
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    return [{"op": e.key, "self_ms": round(e.self_cpu_time_total / 1e3, 2), "calls": e.count,
             "share": round(e.self_cpu_time_total / total, 3)} for e in rows]


def run(device: str, quick: bool) -> dict:
    peer_live = device == "cpu" and lerobot_available()
    load_before = floor.load_average()
    result = {"benchmark": "speed", "device": device, "machine": machine_info(), "load_average_before": load_before,
              "network": {**floor.PAPER_UNET, "horizon": H, "n_obs_steps": TO},
              "peer": "lerobot 0.4.4 (measured in this run)" if peer_live else
              "lerobot 0.4.4: reference numbers from shared/reference/peer-baselines.md (not run here)"}
    floor_result = floor.run(device, quick)
    result["floor"] = {k: floor_result[k] for k in ("costs", "peaks", "floors")}
    floors = floor_result["floors"]

    policy = ours(device).eval()
    peer = build_lerobot().to(device).eval() if peer_live else None
    result["params"] = {"ours": sum(p.numel() for p in policy.parameters())}
    if peer is not None:
        result["params"]["lerobot"] = sum(p.numel() for p in peer.parameters())

    latency, memory = {}, {}
    fns = chunk_fns(device, peer)
    for sampler, steps, rounds in [("ddim", 10, 3 if quick else 9), ("ddpm", 100, 1 if quick else 3)]:
        key = f"{sampler}{steps}"
        contestants = {name: make(sampler, steps) for name, make in fns.items()}
        latency[key] = {name: s * 1e3 for name, s in alternate(contestants, rounds, device).items()}
        if sampler == "ddim" and device == "cpu":
            memory[f"chunk_{key}"] = peak_memory(contestants)
    result["chunk_latency_ms"] = latency

    policy.train()
    if peer is not None:
        peer.train()
    train = {}
    for batch_size, rounds in [(64, 2 if quick else 5), (256, 1 if quick else 3)]:
        contestants = train_fns(device, policy, peer, batch_size)
        train[f"b{batch_size}"] = {name: s * 1e3 for name, s in alternate(contestants, rounds, device).items()}
        if device == "cpu":
            memory[f"train_b{batch_size}"] = peak_memory({k: v for k, v in contestants.items() if "EMA" not in k})
        if batch_size == 256 and device == "cpu":
            result["profile_train_b256_ours"] = top_ops(contestants["ours"])
            result["profile_train_b256_ours_bf16"] = top_ops(contestants["ours bf16"])
    result["train_step_ms"] = train
    result["peak_rss_growth_mb"] = memory

    policy.eval()
    result["accuracy_vs_eager"] = accuracy(policy, device)
    if device == "cpu":
        result["profile_ddim10_fast_fp32"] = top_ops(fns["ours fast fp32"]("ddim", 10))
        result["profile_ddim10_compiled_fp32"] = top_ops(fns["ours compiled fp32"]("ddim", 10))

    # The memory's bandwidth moves with the neighbours on a shared VM (30-53 GB/s within an hour here): the
    # peaks are measured again after the contestants, and the floor takes the best of the two measurements.
    start, end = result["floor"]["peaks"], floor.measure_peaks(device, quick)
    result["floor"]["peaks_start"], result["floor"]["peaks_end"] = start, end
    result["floor"]["peaks"] = {k: max(start[k], end.get(k, 0.0)) for k in start}
    floors = result["floor"]["floors"] = floor.floors(result["floor"]["costs"], result["floor"]["peaks"])
    if not peer_live:
        result["peer_reference"] = LEROBOT_REFERENCE
    result["ratios"] = ratios(result, floors, peer_live)
    result["load_average_after"] = floor.load_average()
    return result


def ratios(result: dict, floors: dict, peer_live: bool) -> dict:
    lat, train = result["chunk_latency_ms"], result["train_step_ms"]
    peer_lat = {k: v.get("lerobot 0.4.4") for k, v in lat.items()} if peer_live else {
        "ddim10": LEROBOT_REFERENCE["ddim10_ms"], "ddpm100": LEROBOT_REFERENCE["ddpm100_ms"]}
    peer_train = {k: v.get("lerobot 0.4.4") for k, v in train.items()} if peer_live else {
        "b64": LEROBOT_REFERENCE["train_b64_ms"], "b256": LEROBOT_REFERENCE["train_b256_ms"]}
    out = {}
    for key, steps in [("ddim10", 10), ("ddpm100", 100)]:
        for name in [n for n in lat[key] if n.startswith("ours")]:
            precision = "bf16" if "bf16" in name else "fp32"
            ms = lat[key][name]
            x_floor = ms / 1e3 / floors[f"chunk_{steps}_{precision}_s"]
            out[f"{key} {name}"] = {"ms": round(ms, 2), "x_floor": round(x_floor, 2),
                                    "speedup_vs_peer": round(peer_lat[key] / ms, 2)}
            gemm_floor_s = floors.get(f"chunk_{steps}_{precision}_gemm_s")  # weights at the GEMM's own rate
            if gemm_floor_s:
                out[f"{key} {name}"]["x_gemm_floor"] = round(ms / 1e3 / gemm_floor_s, 2)
    for key in ("b64", "b256"):
        # Each precision against its own floor and the peer at the same precision.
        for precision, name in [("fp32", "ours"), ("bf16", "ours bf16")]:
            peer_name = "lerobot 0.4.4" + name.removeprefix("ours")
            ms, floor_s = train[key][name], floors[f"train_step_{key}_{precision}_s"]
            if peer_live:
                peer_ms = train[key].get(peer_name)
            else:  # the published reference has fp32 only
                peer_ms = peer_train[key] if precision == "fp32" else None
            out[f"train {key} {name}"] = {"ms": round(ms, 1), "x_floor": round(ms / 1e3 / floor_s, 2)}
            if peer_ms:
                out[f"train {key} {name}"]["speedup_vs_peer"] = round(peer_ms / ms, 2)
                out[f"train {key} {peer_name}"] = {"ms": round(peer_ms, 1),
                                                   "x_floor": round(peer_ms / 1e3 / floor_s, 2)}
    best = {p: min(v for n, v in lat["ddim10"].items() if n.startswith("ours") and n != "ours eager" and p in n)
            for p in ("fp32", "bf16")}
    out["targets"] = {
        f"ddim10 fp32 fast path <= 100 ms (best {best['fp32']:.0f})": best["fp32"] <= TARGETS["ddim10_fast_fp32_ms"],
        f"ddim10 bf16 fast path <= 60 ms (best {best['bf16']:.0f})": best["bf16"] <= TARGETS["ddim10_fast_bf16_ms"],
    }
    for name in ("ours", "ours bf16"):
        row = out[f"train b256 {name}"]
        out["targets"][f"train b256 {name} <= 1.3x its floor ({row['x_floor']})"] = (
            row["x_floor"] <= TARGETS["train_b256_ratio_to_floor"])
        if "speedup_vs_peer" in row:
            out["targets"][f"train b256 {name} >= 1.25x faster than the peer ({row['speedup_vs_peer']})"] = (
                row["speedup_vs_peer"] >= 1.25)
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lat = result["chunk_latency_ms"]["ddim10"]
    names = list(lat)
    fig, ax = plt.subplots(figsize=(6, 1 + 0.3 * len(names)))
    ax.barh(names, [lat[n] for n in names], color=["#999" if "lerobot" in n else "#3a7" for n in names])
    floor_ms = result["floor"]["floors"]["chunk_10_fp32_s"] * 1e3
    ax.axvline(floor_ms, color="k", ls="--", lw=1, label=f"fp32 floor {floor_ms:.0f} ms")
    ax.set_xlabel("batch-1 DDIM-10 chunk (ms)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_training(result: dict, path: Path) -> None:
    """Training step per batch size: ours and the peer in fp32 and bf16 mixed precision, with both floors."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, floors = result["train_step_ms"], result["floor"]["floors"]
    names = [n for n in ("ours", "ours bf16", "lerobot 0.4.4", "lerobot 0.4.4 bf16") if n in train["b64"]]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for ax, key in zip(axes, ("b64", "b256")):
        values = [train[key][n] for n in names]
        ax.bar(range(len(names)), values, color=["#999" if "lerobot" in n else "#3a7" for n in names])
        ax.set_xticks(range(len(names)), [n.replace("lerobot 0.4.4", "LeRobot") for n in names], rotation=20,
                      fontsize=8)
        for precision, style in (("fp32", "--"), ("bf16", ":")):
            ax.axhline(floors[f"train_step_{key}_{precision}_s"] * 1e3, color="k", ls=style, lw=1,
                       label=f"{precision} floor")
        ax.set_title(f"batch {key[1:]}", fontsize=9)
        ax.set_ylabel("training step (ms)")
        ax.set_ylim(0, max(values) * 1.3)  # room for the legend above the bars
        ax.legend(fontsize=7, ncol=2, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(result: dict, plot_rel: str, train_plot_rel: str) -> str:
    m, lat, train = result["machine"], result["chunk_latency_ms"], result["train_step_ms"]
    mem, r, f = result["peak_rss_growth_mb"], result["ratios"], result["floor"]["floors"]
    lines = ["## Speed: ours vs LeRobot 0.4.4 and the floor", "",
             f"Paper U-Net, low-dim PushT-like (obs 20, action 2, H 16, To 2, 256/512/1024, k 5, step embedding "
             f"128; {result['params']['ours']:,} parameters). {m['cpu']}, {m['torch_threads']} threads, "
             f"torch {m['torch']}; "
             f"load average {result['load_average_before']} before, {result['load_average_after']} after "
             f"(the machine is shared). Peer: {result['peer']}. Medians, contestants alternating in one process "
             f"(`bench/speed.py`).", "",
             f"![DDIM-10 latency]({plot_rel})", "",
             "| batch-1 chunk (ms) | " + " | ".join(lat["ddim10"]) + " | floor fp32 / bf16 |",
             "|---|" + "---|" * (len(lat["ddim10"]) + 1)]
    for key, steps in [("ddim10", 10), ("ddpm100", 100)]:
        lines.append(f"| {key.upper().replace('DDIM', 'DDIM-').replace('DDPM', 'DDPM-')} | "
                     + " | ".join(f"{v:.1f}" for v in lat[key].values())
                     + f" | {f[f'chunk_{steps}_fp32_s'] * 1e3:.1f} / {f[f'chunk_{steps}_bf16_s'] * 1e3:.1f} |")
    if "peer_reference" in result:
        ref = result["peer_reference"]
        lines.append(f"| LeRobot reference (peer-baselines.md) | DDIM-10 {ref['ddim10_ms']:.0f} | "
                     f"DDPM-100 {ref['ddpm100_ms']:.0f} | | |")
    lines += ["", f"![training step]({train_plot_rel})",
              "", "| training step (ms) | " + " | ".join(train["b64"]) + " | floor fp32 / bf16 |",
              "|---|" + "---|" * (len(train["b64"]) + 1)]
    for key in ("b64", "b256"):
        lines.append(f"| batch {key[1:]} | " + " | ".join(f"{v:.0f}" for v in train[key].values())
                     + f" | {f[f'train_step_{key}_fp32_s'] * 1e3:.0f} / {f[f'train_step_{key}_bf16_s'] * 1e3:.0f} |")
    lines += ["", "Ours trains with fused AdamW, our conv1d (weight gradient as a forward conv or a GEMM where "
              "that is faster, `weight_grad_form`) and one kernel for GroupNorm, Mish and FiLM forward and "
              "backward (`group_norm_mish`); LeRobot with its own Adam preset and gradient clipping at 10 "
              "(what its training script runs). 'oneDNN conv backward' is ours with the stock backward. 'bf16' is "
              "mixed precision for both: the forward under bfloat16 autocast, the backward outside it, weights and "
              "optimizer in fp32 (ours: `train --mixed-precision bf16`; LeRobot: "
              "`accelerate launch --mixed_precision bf16`). Its floor counts every FLOP at the bf16 rate.", "",
              "The floor reads the weights at the best rate anything read 256 MB in this run (a sum, a "
              "matrix-vector product, or a batch-1 GEMM: floor.json's read_gbs, matvec_fp32_gbs, gemm_m4_*_gbs). "
              "'× GEMM floor' divides by the time the chunk's weights take at the rate the fast path's GEMM "
              "(stream_linear) streams them from DRAM at the deepest layer's batch-1 shape: what is left above 1 is "
              "everything but streaming the weights." + _read_rates(result["floor"]), "",
              "| vs floor and peer | ms | × floor | × GEMM floor | speed-up vs peer |", "|---|---|---|---|---|"]
    for name, v in r.items():
        if name != "targets":
            lines.append(f"| {name} | {v['ms']} | {v['x_floor']} | {v.get('x_gemm_floor', '')} | "
                         f"{v.get('speedup_vs_peer', '')} |")
    lines += ["", "| target | met |", "|---|---|"]
    lines += [f"| {k} | {'yes' if v else 'NO'} |" for k, v in r["targets"].items()]
    missed = [k for k, v in r["targets"].items() if not v]
    if missed:
        lines += ["", f"Missed: {'; '.join(missed)}. The profiles at the end show where the remaining time goes."]
    acc = result["accuracy_vs_eager"]
    lines += ["", "Accuracy of the fast path against the eager module (same weights, same noise, 4 rows):", "",
              "| path | ε relative error | DDIM-10 chunk relative error | chunk max abs error |",
              "|---|---|---|---|"]
    lines += [f"| {p} | {a['eps_rel_err']:.1e} | {a['chunk_ddim10_rel_err']:.1e} | "
              f"{a['chunk_ddim10_max_abs_err']:.1e} |" for p, a in acc.items()]
    lines += ["", "Peak RSS growth (MB) during one call:", "", "| call | " + " | ".join(
        sorted({n for v in mem.values() for n in v})) + " |"]
    names = sorted({n for v in mem.values() for n in v})
    lines.append("|---|" + "---|" * len(names))
    lines += [f"| {k} | " + " | ".join(str(v.get(n, "")) for n in names) + " |" for k, v in mem.items()]
    for title, key in [("ours fast fp32, DDIM-10 chunk", "profile_ddim10_fast_fp32"),
                       ("ours compiled fp32, DDIM-10 chunk", "profile_ddim10_compiled_fp32"),
                       ("ours, training step b256", "profile_train_b256_ours"),
                       ("ours bf16, training step b256", "profile_train_b256_ours_bf16")]:
        if key in result:
            lines += ["", f"Where the time goes ({title}; torch.profiler, self CPU time):", "",
                      "| op | self ms | calls | share |", "|---|---|---|---|"]
            lines += [f"| `{o['op']}` | {o['self_ms']} | {o['calls']} | {o['share']:.0%} |" for o in result[key]]
    return "\n".join(lines) + "\n"


def _read_rates(floor_result: dict) -> str:
    """The best read rates before and after the contestants, when both were measured."""
    if "peaks_end" not in floor_result:
        return ""
    rates = [floor.best_read_gbs(floor_result[key]) for key in ("peaks_start", "peaks_end")]
    return (f" The best read rate was {rates[0]:.0f} GB/s before the contestants and {rates[1]:.0f} GB/s after "
            "them; the floor takes the higher.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (smoke run)")
    parser.add_argument("--out", default=str(RESULTS / "speed.json"))
    parser.add_argument("--render-only", action="store_true",
                        help="measure nothing: rewrite the tables and plots from the JSON at --out")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    out = Path(args.out)
    result = json.loads(out.read_text()) if args.render_only else run(args.device, args.quick)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot_path = out.parent / "plots" / f"{out.stem}_ddim10.png"  # beside the JSON: --quick leaves results/ alone
    train_plot_path = out.parent / "plots" / f"{out.stem}_training.png"
    plot(result, plot_path)
    plot_training(result, train_plot_path)
    text = markdown(result, str(Path("plots") / plot_path.name), str(Path("plots") / train_plot_path.name))
    print(text)
    out.write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(text)
    floor_json = out.parent / "floor.json"
    if out.stem == "speed":  # the floor measured in this run is the one the ratios above used
        floor_result = {"benchmark": "floor", "device": args.device, "machine": result["machine"],
                        "load_average": result["load_average_before"], **result["floor"]}
        floor_json.write_text(json.dumps(floor_result, indent=2))
        floor_json.with_suffix(".md").write_text(floor.markdown(floor_result))
    print(f"wrote {out}, {out.with_suffix('.md')}, {plot_path}, {train_plot_path}")


if __name__ == "__main__":
    main()
