"""`robopolicy` command line: collect, train, eval, info, export, demo (DESIGN.md §11).

Sim-facing verbs import the `sim` room lazily, inside the command, so the core runs without MuJoCo.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

DEFAULT_TASK = "robopolicy/metaworld-push-v3"


def _sim():
    try:
        import sim
    except ImportError as e:
        raise SystemExit(f"this command needs the simulation extra: pip install 'robopolicy[sim]' ({e})")
    return sim


def cmd_collect(args) -> None:
    cameras = {"cameras": args.cameras.split(",") if args.cameras else None, "image_size": args.image_size,
               "depth": args.depth, "points": args.points, "num_points": args.num_points,
               "point_colour": args.point_colour}
    summary = _sim().collect(args.task, args.episodes, args.out, seed=args.seed, progress=not args.quiet,
                             **{k: v for k, v in cameras.items() if v not in (None, False)})
    print(json.dumps(summary, default=str))


def _evaluator(task: str, workers: int, sampler: str | None, steps: int | None, seed: int = 1000):
    from robopolicy.runtime import CheckpointPolicy
    from robopolicy.train.checkpoint import read_config

    def evaluate(checkpoint: Path, episodes: int) -> dict:
        config = read_config(checkpoint)
        result = _sim().evaluate(CheckpointPolicy(checkpoint, sampler=sampler, num_inference_steps=steps), task,
                                 episodes, seed=seed, workers=workers, progress=False,
                                 expect=(config["action_semantics"], config["policy_config"]["action_dim"]))
        print(f"[eval @ step {config['step']}] {result.summary_line()}")
        return {"success_rate": result.success_rate, "ci95": list(result.ci95), "episodes": result.episodes,
                "sampler": result.sampler, "summary": result.summary_line()}

    return evaluate


def cmd_train(args) -> dict:
    from robopolicy.train.trainer import train

    overrides = {k: v for k, v in {
        "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "val_episodes": args.val_episodes,
        "seed": args.seed, "eval_every": args.eval_every, "eval_episodes": args.eval_episodes,
        "grad_clip_norm": args.grad_clip, "wandb": args.wandb or None, "mixed_precision": args.mixed_precision,
    }.items() if v is not None}
    policy_overrides = {}
    if args.backbone:
        policy_overrides["backbone"] = args.backbone
    evaluate = _evaluator(args.task, args.eval_workers, None, None) if args.task else None
    summary = train(args.store, args.out, args.policy, args.config, overrides, policy_overrides,
                    obs_keys=args.obs_keys.split(",") if args.obs_keys else None, action_key=args.action_key,
                    evaluate=evaluate, cpu=args.device == "cpu", progress=not args.quiet)
    print(json.dumps(summary))
    return summary


def cmd_eval(args):
    from robopolicy.runtime import CheckpointPolicy
    from robopolicy.train.checkpoint import read_config, resolve_checkpoint

    checkpoint = resolve_checkpoint(args.checkpoint)
    config = read_config(checkpoint)
    result = _sim().evaluate(
        CheckpointPolicy(checkpoint, args.device, args.sampler, args.inference_steps), args.task, args.episodes,
        seed=args.seed, workers=args.workers, video_dir=args.video, json_path=args.json, progress=not args.quiet,
        expect=(config["action_semantics"], config["policy_config"]["action_dim"]))
    print(f"checkpoint {checkpoint} (step {config.get('step')}), task {args.task}, {result.seconds:.1f}s")
    print(result.summary_line())
    return result


def cmd_info(args) -> None:
    path = Path(args.path)
    if (path / "config.json").exists() or (path / "latest" / "config.json").exists():
        print(checkpoint_info(path))
    else:
        from robopolicy.store import DemoStore

        print(DemoStore.open(path).summary())


def checkpoint_info(path: Path) -> str:
    from robopolicy.train.checkpoint import read_config, resolve_checkpoint

    path = resolve_checkpoint(path)
    c = read_config(path)
    pc = c["policy_config"]
    lines = [
        f"checkpoint     {path}",
        f"policy         {c['policy']} (config '{c.get('preset')}', backbone {pc.get('backbone', '-')})",
        f"parameters     {c['param_count']:,}",
        f"step           {c.get('step')} (batch {c['train_config']['batch_size']}, mixed precision "
        f"{c['train_config'].get('mixed_precision', 'no')})",
        f"observations   {', '.join(f'{k} {tuple(v)}' for k, v in pc['obs_shapes'].items())}",
        f"actions        {c['action_key']} ({pc['action_dim']}-d, {c['action_semantics']})",
        f"windows        H={pc['horizon']} To={pc['n_obs_steps']} Ta={pc['n_action_steps']}",
    ]
    if "sampler" in pc:
        lines.append(f"sampler        {pc['sampler']}-{pc['num_inference_steps']}")
    if "eval" in c:
        lines.append(f"evaluation     {c['eval']['summary']}")
    lines.append(f"trained on     {c['provenance']['store']} ({c['provenance']['episodes']} episodes)")
    return "\n".join(lines)


def cmd_export(args) -> None:
    """A checkpoint's whole chunk predictor as one file that libtorch (C++) loads without Python."""
    from robopolicy.export import export

    out = export(args.checkpoint, args.out, args.format, args.sampler, args.inference_steps)
    print(f"exported {out} ({out.stat().st_size / 1e6:.1f} MB, {args.format}): "
          "(obs {key: (B, To, ...)}, noise (B, H, A)) -> chunk (B, H, A)")


def cmd_demo(args) -> None:
    """The default job: expert demonstrations -> Diffusion Policy -> evaluation -> report."""
    from robopolicy.report import plot_losses, write_report
    from robopolicy.store import DemoStore

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store, run, task = out / "demos.zarr", out / "run", args.task
    timings = {}
    commands = [
        f"robopolicy collect --task {task} --episodes {args.demos} --out {store} --seed 0",
        f"robopolicy train --store {store} --policy diffusion --config {args.config} --steps {args.steps} "
        f"--out {run} --seed {args.seed}",
        f"robopolicy eval --checkpoint {run} --task {task} --episodes {args.eval_episodes} --seed 1000 "
        f"--workers {args.workers} --video {out / 'videos'} --json {out / 'eval.json'}",
    ]
    t0 = time.perf_counter()
    existing = DemoStore.open(store).n_episodes if store.exists() else 0
    if existing < args.demos:
        _sim().collect(task, args.demos - existing, store, seed=existing, progress=not args.quiet)
    timings["collect demonstrations"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    train_args = argparse.Namespace(
        store=str(store), out=str(run), policy="diffusion", config=args.config, steps=args.steps, batch_size=None,
        lr=None, val_episodes=None, seed=args.seed, eval_every=None, eval_episodes=None, grad_clip=None,
        wandb=False, mixed_precision=None, backbone=None, obs_keys=None, action_key=None, task=None,
        eval_workers=args.workers, device="cpu" if args.device == "cpu" else None, quiet=args.quiet)
    train_summary = cmd_train(train_args)
    timings["train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    eval_args = argparse.Namespace(
        checkpoint=str(run), task=task, episodes=args.eval_episodes, seed=1000, workers=args.workers,
        video=str(out / "videos"), json=str(out / "eval.json"), sampler=None, inference_steps=None,
        device=args.device or "cpu", quiet=args.quiet)
    result = cmd_eval(eval_args)
    timings["evaluate"] = time.perf_counter() - t0

    s = DemoStore.open(store)
    report = write_report(
        out / "report.md", task=task, store_summary={"episodes": s.n_episodes, "steps": s.n_steps},
        train_summary=train_summary, eval_result=result, checkpoint=run / "latest", timings=timings,
        loss_plot=plot_losses(run, out / "loss.png"),
        video=out / "videos" / "grid.mp4" if (out / "videos" / "grid.mp4").exists() else None, commands=commands)
    print(f"report: {report}  (total {sum(timings.values()):.0f}s)")
    print(result.summary_line())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="robopolicy", description=__doc__.splitlines()[0])
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("collect", help="scripted-expert demonstrations -> zarr store (appends)")
    p.add_argument("--task", required=True)
    p.add_argument("--episodes", type=int, required=True)
    p.add_argument("--out", required=True, help="store path (created, or appended to)")
    p.add_argument("--seed", type=int, default=0, help="episode i uses seed S+i (evaluation uses 1000+i)")
    p.add_argument("--cameras", help="comma-separated cameras: record image_<cam> from each (arm tasks)")
    p.add_argument("--image-size", type=int, help="side of images and depth maps (default: the task's)")
    p.add_argument("--depth", action="store_true", help="record depth_<cam> (float32 metres) from each camera")
    p.add_argument("--points", action="store_true", help="record 'points', a world-frame cloud cropped to the "
                                                         "task's workspace (N x 3)")
    p.add_argument("--num-points", type=int, help="points per cloud (default 512)")
    p.add_argument("--point-colour", action="store_true", help="points with rgb (N x 6)")
    p.set_defaults(func=cmd_collect)

    p = sub.add_parser("train", help="train a policy on a store (resumes if --out holds a checkpoint)")
    p.add_argument("--store", required=True)
    p.add_argument("--policy", default="diffusion")
    p.add_argument("--config", default="cpu", help="preset: cpu, paper, cpu-transformer, paper-transformer")
    p.add_argument("--steps", type=int)
    p.add_argument("--out", required=True)
    p.add_argument("--task", help="evaluate in this sim task during training (keeps best/ beside latest/)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--obs-keys", help="comma-separated observation keys (default: the store's)")
    p.add_argument("--action-key", help="action key (default: the store's, else 'action')")
    p.add_argument("--val-episodes", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--backbone", choices=["unet", "transformer"])
    p.add_argument("--eval-every", type=int)
    p.add_argument("--eval-episodes", type=int)
    p.add_argument("--eval-workers", type=int, default=1)
    p.add_argument("--grad-clip", type=float)
    p.add_argument("--mixed-precision", choices=["no", "bf16"],
                   help="bf16: forward under bfloat16 autocast, weights and optimizer in fp32 (default: no)")
    p.add_argument("--device", choices=["cpu", "auto"], default="auto")
    p.add_argument("--wandb", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="roll a checkpoint in a sim task")
    p.add_argument("--checkpoint", required=True, help="checkpoint dir, or a run dir (best/ else latest/)")
    p.add_argument("--task", required=True)
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--video", help="directory for mp4 rollouts")
    p.add_argument("--json", help="per-episode results")
    p.add_argument("--sampler", help="override the checkpoint's sampler (diffusion: ddpm, ddim; flow: euler, adaptive)")
    p.add_argument("--inference-steps", type=int, help="override the number of sampling/refinement steps")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("info", help="summarise a store or a checkpoint")
    p.add_argument("path")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("export", help="a checkpoint's chunk predictor as a TorchScript file (C++ / libtorch)")
    p.add_argument("--checkpoint", required=True, help="checkpoint dir, or a run dir (best/ else latest/)")
    p.add_argument("--out", required=True, help="file to write, e.g. policy.pt")
    p.add_argument("--format", default="torchscript", choices=["torchscript", "onnx"],
                   help="onnx: batch 1, metadata in FILE.json beside it")
    p.add_argument("--sampler", help="override the checkpoint's sampler (must be fixed-step: ddim, euler)")
    p.add_argument("--inference-steps", type=int, help="override the number of sampling steps")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("demo", help="the default job: collect, train, evaluate, report")
    p.add_argument("--task", default=DEFAULT_TASK)
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--demos", type=int, default=100)
    p.add_argument("--config", default="cpu")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--eval-episodes", type=int, default=50)
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as e:
        # Bad input (store, checkpoint, task name, observation, config): the message names it; a traceback
        # would bury it. ROBOPOLICY_DEBUG=1 shows the traceback anyway.
        if os.environ.get("ROBOPOLICY_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
