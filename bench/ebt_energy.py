"""Is EBT's converged energy an out-of-distribution signal on a real task? ID vs OOD energy distributions.

    python bench/ebt_energy.py [--checkpoint bench/results/grid/robosuite-Lift-v0/ebt-5min/latest] [--n 256]

In-distribution (ID) observation windows come from the checkpoint's own store: its training episodes and its
held-out validation episodes (the fair ID reference: seen by nobody in training). OOD windows are made from
the validation ones:
- `noise σ`: every state entry perturbed by Gaussian noise of σ in normalised units (the policy's [-1, 1]);
- `object moved`: the object's position entries (`--object-dims`, default Lift's cube x, y) placed half a
  demo range beyond the demonstrations' extreme, i.e. a held-out object position outside the demo distribution;
- `shuffled`: each state entry drawn from a different validation window, so every entry is in range but the
  joint state is not one the robot ever saw;
- `other task` (with `--other-store`, same state size): another task's observations.
For every window the policy descends its energy from the same noise (fixed seed) and we record the initial
energy E(ŷ_0) and the converged energy E(ŷ_K) after K steps (K = 1, 2, 4). The score of the claim is the
AUROC of the converged energy, OOD against held-out ID (0.5: no signal; 1: OOD always higher), in two forms:

- absolute, E(x, ŷ_K);
- relative to the same observation's starting point, E(x, ŷ_K) − E(x, ŷ_0). EBT's training loss supervises
  only the descent iterates, which depend on ∇_ŷ E: adding any function c(x) of the observation alone to the
  energy changes no loss term, so the absolute level of E across observations is not determined by training.
  The relative energy cancels c(x); it is high when descent from noise found little to go down to.

Writes bench/results/ebt_energy.json, .md and plots/ebt_energy.png.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.machine import machine_info  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_CHECKPOINT = RESULTS / "grid" / "robosuite-Lift-v0" / "ebt-5min" / "latest"
STEPS = (1, 2, 4)


def windows(store_path: str, episodes: list[int], n: int, n_obs_steps: int, horizon: int, rng) -> dict:
    """n random (state window (n, To, D), expert chunk (n, H, A)) pairs from `episodes`, raw units."""
    from robopolicy.store import DemoStore

    store = DemoStore.open(store_path)
    arrays = store.load(["state", store.action_key])
    ends = np.asarray(store.episode_ends)
    starts = np.r_[0, ends[:-1]]
    rows = []
    for _ in range(n):
        e = int(rng.choice(episodes))
        t = int(rng.integers(starts[e], ends[e]))
        obs_idx = np.clip(np.arange(t - n_obs_steps + 1, t + 1), starts[e], ends[e] - 1)
        act_idx = np.clip(np.arange(t - n_obs_steps + 1, t - n_obs_steps + 1 + horizon), starts[e], ends[e] - 1)
        rows.append((arrays["state"][obs_idx], arrays[store.action_key][act_idx]))
    return {"state": np.stack([r[0] for r in rows]).astype(np.float32),
            "action": np.stack([r[1] for r in rows]).astype(np.float32)}


@torch.no_grad()
def energies(policy, state: torch.Tensor, seed: int = 0) -> dict[str, np.ndarray]:
    """Normalised windows (n, To, D) -> initial energy, and converged energy and drop for each K."""
    c = policy.config
    noise = torch.randn(len(state), c.horizon, c.action_dim, generator=torch.Generator().manual_seed(seed))
    obs = {"state": state}
    out = {}
    out["initial"] = policy.energy_net(policy.encode_obs(obs), noise, 0).numpy()
    trained_steps = c.num_inference_steps
    for k in STEPS:
        c.num_inference_steps = k
        policy.predict_chunk(obs, noise=noise.clone())
        out[f"K{k}"] = policy.last_energy.numpy()
        out[f"rel_K{k}"] = out[f"K{k}"] - out["initial"]
    c.num_inference_steps = trained_steps
    return out


def auroc(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """P(OOD score > ID score), ties counted half (the Mann-Whitney U statistic)."""
    greater = (ood_scores[:, None] > id_scores[None, :]).mean()
    ties = (ood_scores[:, None] == id_scores[None, :]).mean()
    return float(greater + 0.5 * ties)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--n", type=int, default=256, help="windows per set")
    parser.add_argument("--object-dims", type=int, nargs="*", default=[16, 17],
                        help="state entries of the object's position (Lift: cube x, y)")
    parser.add_argument("--other-store", help="another task's store with the same state size")
    parser.add_argument("--out", default=str(RESULTS / "ebt_energy.json"))
    args = parser.parse_args()
    from robopolicy.train.checkpoint import load_policy

    if not Path(args.checkpoint, "model.safetensors").exists():
        raise SystemExit(f"no EBT checkpoint at {args.checkpoint}: run bench/grid.py (its ebt cell) first")
    torch.manual_seed(0)
    torch.set_num_threads(1)
    policy, normalizer, meta = load_policy(args.checkpoint)
    if meta["policy"] != "ebt" or meta["obs_keys"] != ["state"]:
        raise SystemExit(f"{args.checkpoint}: needs an EBT policy on low-dim 'state' observations, got "
                         f"{meta['policy']} on {meta['obs_keys']}")
    policy.eval()
    c = policy.config
    provenance = meta["provenance"]
    store = provenance["store"]
    rng = np.random.default_rng(0)
    norm = lambda x: normalizer.normalize("state", torch.from_numpy(x))  # noqa: E731

    train_w = windows(store, provenance["train_episodes"], args.n, c.n_obs_steps, c.horizon, rng)
    val_w = windows(store, provenance["val_episodes"], args.n, c.n_obs_steps, c.horizon, rng)
    val = norm(val_w["state"])
    sets = {"ID train": norm(train_w["state"]), "ID held-out": val}
    gen = torch.Generator().manual_seed(1)
    for sigma in (0.1, 0.3, 1.0):
        sets[f"noise σ={sigma:g}"] = val + sigma * torch.randn(val.shape, generator=gen)
    if args.object_dims:
        moved = val.clone()
        moved[..., args.object_dims] = 2.0  # min-max normalised: the demos span [-1, 1]; 2 is half a range past it
        sets["object moved"] = moved
    perm = torch.stack([torch.randperm(len(val), generator=gen) for _ in range(val.shape[-1])], dim=-1)
    sets["shuffled"] = torch.gather(val, 0, perm[:, None, :].expand_as(val))
    if args.other_store:
        from robopolicy.store import DemoStore

        other = DemoStore.open(args.other_store)
        other_w = windows(args.other_store, list(range(other.n_episodes)), args.n, c.n_obs_steps, c.horizon, rng)
        sets["other task"] = norm(other_w["state"])

    scores = {name: energies(policy, x) for name, x in sets.items()}
    with torch.no_grad():
        expert = policy.energy({"state": val}, normalizer.normalize(meta["action_key"],
                                                                    torch.from_numpy(val_w["action"])))
    reference = scores["ID held-out"]
    table = {}
    for name, s in scores.items():
        table[name] = {"mean_initial": float(s["initial"].mean()),
                       **{f"mean_K{k}": float(s[f"K{k}"].mean()) for k in STEPS},
                       **{f"auroc_K{k}": auroc(reference[f"K{k}"], s[f"K{k}"]) for k in STEPS},
                       **{f"mean_rel_K{k}": float(s[f"rel_K{k}"].mean()) for k in STEPS},
                       **{f"auroc_rel_K{k}": auroc(reference[f"rel_K{k}"], s[f"rel_K{k}"]) for k in STEPS},
                       "auroc_initial": auroc(reference["initial"], s["initial"])}
    result = {"benchmark": "ebt_energy", "checkpoint": os.path.relpath(args.checkpoint, RESULTS.parent.parent),
              "task": provenance.get("store_attrs", {}).get("task"), "step": meta.get("step"), "n": args.n,
              "expert_chunk_energy_held_out": float(expert.mean()), "sets": table, "machine": machine_info()}

    header = f"{'set':<16} {'E init':>8} " + " ".join(f"{'E K' + str(k):>8}" for k in STEPS) + \
        " " + " ".join(f"{'AUROC K' + str(k):>9}" for k in STEPS) + " " + \
        " ".join(f"{'rel K' + str(k):>8}" for k in STEPS)
    print(header)
    for name, row in table.items():
        print(f"{name:<16} {row['mean_initial']:>8.2f} " + " ".join(f"{row[f'mean_K{k}']:>8.2f}" for k in STEPS) +
              " " + " ".join(f"{row[f'auroc_K{k}']:>9.2f}" for k in STEPS) + " " +
              " ".join(f"{row[f'auroc_rel_K{k}']:>8.2f}" for k in STEPS))
    print(f"expert chunks on held-out windows: mean energy {result['expert_chunk_energy_held_out']:.2f}")

    out = Path(args.out)
    plot_path = out.parent / "plots" / f"{out.stem}.png"
    plot(scores, table, plot_path, result)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(markdown(result, os.path.relpath(plot_path, out.parent)))
    print(f"wrote {out}, {out.with_suffix('.md')} and {plot_path}")


def plot(scores: dict, table: dict, path: Path, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    for ax, key, label in [(axes[0], "K2", "converged energy E(x, ŷ_2)"),
                           (axes[1], "rel_K2", "relative energy E(x, ŷ_2) − E(x, ŷ_0)")]:
        values = np.concatenate([s[key] for s in scores.values()])
        bins = np.linspace(np.percentile(values, 1), np.percentile(values, 99), 40)
        for i, (name, s) in enumerate(scores.items()):
            ax.hist(s[key], bins=bins, histtype="step", lw=2 if name.startswith("ID") else 1.2,
                    ls="-" if name.startswith("ID") else "--", density=True, color=f"C{i}", label=name)
        ax.set(xlabel=label + ", K=2", ylabel="density")
        ax.legend(fontsize=7)
    axes[0].set_title("absolute: ID vs OOD observations", fontsize=9)
    axes[1].set_title("relative to the observation's starting energy", fontsize=9)
    names = [n for n in table if n != "ID held-out"]
    x = np.arange(len(names))
    for j, k in enumerate(STEPS):
        axes[2].bar(x + (j - 1) * 0.13 - 0.2, [table[n][f"auroc_K{k}"] for n in names], 0.13, color=f"C{j}",
                    alpha=0.45, label=f"absolute, K={k}")
        axes[2].bar(x + (j - 1) * 0.13 + 0.2, [table[n][f"auroc_rel_K{k}"] for n in names], 0.13, color=f"C{j}",
                    label=f"relative, K={k}")
    axes[2].axhline(0.5, color="gray", lw=1, ls=":")
    axes[2].set_xticks(x, names, rotation=25, ha="right", fontsize=8)
    axes[2].set(ylim=(0, 1), ylabel="AUROC vs held-out ID", title="does a higher energy flag the set?")
    axes[2].legend(fontsize=6, ncol=2)
    fig.suptitle(f"EBT energy as an OOD signal: {result['task']}, `{result['checkpoint']}`, step {result['step']}",
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def markdown(result: dict, plot_rel: str) -> str:
    lines = [f"## EBT energy on in- and out-of-distribution observations: `{Path(result['checkpoint']).parent.name}` "
             "(`bench/ebt_energy.py`)", "",
             f"Checkpoint `{result['checkpoint']}` ({result['task']}, step {result['step']}), {result['n']} "
             "windows per set, the same initial noise for every set. AUROC compares each set with the held-out "
             "ID windows (0.5: the energy does not tell them apart; 1: the set always scores higher). Relative "
             "energy is E(x, ŷ_K) − E(x, ŷ_0): training leaves any per-observation offset of E free, and this "
             "cancels it.", "",
             "| set | mean E(ŷ0) | mean E, K=1 | K=2 | K=4 | AUROC K=1 | K=2 | K=4 | mean relative, K=2 | "
             "AUROC relative K=1 | K=2 | K=4 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in result["sets"].items():
        lines.append(f"| {name} | {r['mean_initial']:.2f} | {r['mean_K1']:.2f} | {r['mean_K2']:.2f} | "
                     f"{r['mean_K4']:.2f} | {r['auroc_K1']:.2f} | {r['auroc_K2']:.2f} | {r['auroc_K4']:.2f} | "
                     f"{r['mean_rel_K2']:.2f} | {r['auroc_rel_K1']:.2f} | {r['auroc_rel_K2']:.2f} | "
                     f"{r['auroc_rel_K4']:.2f} |")
    lines += ["", f"Expert chunks on the held-out windows score {result['expert_chunk_energy_held_out']:.2f} "
              "on average.", "", f"![EBT energy, ID vs OOD]({plot_rel})", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
