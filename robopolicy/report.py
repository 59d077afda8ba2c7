"""The default job's report: a markdown page with the success rate, a loss-curve plot and a rollout video."""

import json
from pathlib import Path


def read_metrics(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """metrics.jsonl -> {name: [(step, value), ...]}."""
    series: dict[str, list[tuple[int, float]]] = {}
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return series
    for line in path.read_text().splitlines():
        row = json.loads(line)
        step = row.pop("step")
        for name, value in row.items():
            series.setdefault(name, []).append((step, value))
    return series


def plot_losses(run_dir: Path, dest: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = read_metrics(run_dir)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    for name, label in [("train/loss", "train"), ("val/loss", "validation (held-out episodes)")]:
        if series.get(name):
            steps, values = zip(*series[name])
            ax.plot(steps, values, label=label, marker="o" if name.startswith("val") else None, markersize=3)
    ax.set_yscale("log")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("ε-prediction MSE")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(dest)
    plt.close(fig)
    return dest


def write_report(dest: Path, *, task: str, store_summary: dict, train_summary: dict, eval_result, checkpoint: Path,
                 timings: dict[str, float], loss_plot: Path | None, video: Path | None, commands: list[str]) -> Path:
    dest = Path(dest)
    rel = lambda p: Path(p).resolve().relative_to(dest.parent.resolve()) if p else None  # noqa: E731
    lines = [
        f"# robopolicy demo report: {task}",
        "",
        "| | |",
        "|---|---|",
        f"| success rate | **{eval_result.success_rate:.3f}** (95% CI [{eval_result.ci95[0]:.3f}, "
        f"{eval_result.ci95[1]:.3f}], {eval_result.episodes} episodes, seeds {eval_result.seed}+i) |",
        f"| sampler | {eval_result.sampler} ({eval_result.nfe} network evaluations per chunk) |",
        f"| demonstrations | {store_summary['episodes']} expert episodes, {store_summary['steps']} steps |",
        f"| training | {train_summary['steps']} steps, final loss {train_summary['final_loss']:.4f}, "
        f"validation loss {train_summary.get('val_loss') or float('nan'):.4f} |",
        f"| checkpoint | `{checkpoint}` |",
        "",
        "## Time",
        "",
        "| stage | seconds |",
        "|---|---|",
        *[f"| {stage} | {seconds:.1f} |" for stage, seconds in timings.items()],
        "",
    ]
    if loss_plot:
        lines += ["## Loss", "", f"![loss curve]({rel(loss_plot)})", ""]
    if video:
        lines += ["## Rollouts", "", f"Evaluation episodes, tiled: [{rel(video)}]({rel(video)})", ""]
    lines += ["## Reproduce", "", "```", *commands, "```", "", "Per-episode results: `eval.json` beside this file.", ""]
    dest.write_text("\n".join(lines))
    return dest
