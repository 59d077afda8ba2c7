"""Training throughput and batch-1 chunk latency of Diffusion Policy, for the `cpu` and `paper` configs.

    python bench/policy_speed.py [--configs cpu paper] [--device cpu] [--out bench/results/policy_speed.json]

Shapes are the default task's (Meta-World state 39-d, action 4-d, H=16, To=2). Medians after warm-up.
Prints a table and writes JSON with the machine it ran on.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.machine import machine_info  # noqa: E402
from robopolicy.policies import build_config, get_policy_class, preset_train_overrides  # noqa: E402


def timed(fn, repeats: int, warmup: int = 1, device: str = "cpu") -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_config(preset: str, device: str, obs_dim: int = 39, action_dim: int = 4, quick: bool = False) -> dict:
    torch.manual_seed(0)
    config = build_config("diffusion", preset, {"state": [obs_dim]}, action_dim)
    policy = get_policy_class("diffusion")(config).to(device)
    batch_size = preset_train_overrides("diffusion", preset, False)["batch_size"]
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-4)
    batch = {"state": torch.randn(batch_size, config.n_obs_steps, obs_dim, device=device),
             "action": torch.rand(batch_size, config.horizon, action_dim, device=device) * 2 - 1}

    def train_step():
        loss = policy(batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    row = {"config": preset, "params": sum(p.numel() for p in policy.parameters()), "batch_size": batch_size}
    step_s = timed(train_step, 3 if quick or preset == "paper" else 10, device=device)
    row.update(train_step_ms=step_s * 1e3, samples_per_s=batch_size / step_s)

    policy.eval()
    obs = {"state": torch.randn(1, config.n_obs_steps, obs_dim, device=device)}
    for sampler, steps in [("ddim", 10), ("ddpm", 100)]:
        policy.config.sampler, policy.config.num_inference_steps = sampler, steps
        repeats = 2 if (quick or preset == "paper") and sampler == "ddpm" else 5
        row[f"{sampler}{steps}_chunk_ms"] = timed(lambda: policy.predict_chunk(obs), repeats, device=device) * 1e3
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["cpu", "paper"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="fewer repeats (smoke run)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "policy_speed.json"))
    args = parser.parse_args()

    rows = [bench_config(c, args.device, quick=args.quick) for c in args.configs]
    header = f"{'config':<8} {'params':>12} {'batch':>6} {'train step':>11} {'samples/s':>10} {'DDIM-10 chunk':>14} {'DDPM-100 chunk':>15}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['config']:<8} {r['params']:>12,} {r['batch_size']:>6} {r['train_step_ms']:>9.0f}ms "
              f"{r['samples_per_s']:>10.0f} {r['ddim10_chunk_ms']:>12.1f}ms {r['ddpm100_chunk_ms']:>13.1f}ms")
    result = {"benchmark": "policy_speed", "device": args.device, "machine": machine_info(), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
