"""Tiny real checkpoints for the ROS tests: a few expert episodes of the task, a few seconds of training.

They do not solve the task; they have the task's real observation layout, action semantics and
normaliser statistics, which is what the nodes check and use.
"""

from __future__ import annotations

from pathlib import Path

TINY_POLICY = {"down_dims": (32, 64), "step_embed_dim": 32, "horizon": 8, "n_action_steps": 4,
               "num_inference_steps": 4}
TINY_TRAIN = {"steps": 30, "batch_size": 32, "warmup_steps": 5, "val_every": 30, "val_episodes": 1,
              "save_every": 30, "log_every": 10}
TASKS = {"arm": ("robopolicy/robosuite-Lift-joint-v0", 40), "quadrotor": ("robopolicy/quadrotor-hover-v0", 100),
         "quadrotor-motors": ("robopolicy/quadrotor-hover-motors-v0", 200)}


def tiny_checkpoint(kind: str, root: Path, policy: str = "diffusion") -> tuple[Path, Path]:
    """(checkpoint dir, store) for ``kind`` in ``TASKS``, built under ``root`` (one store per
    kind, shared by the policies trained on it)."""
    from robopolicy.train.trainer import train
    from sim.collect import collect

    task, max_steps = TASKS[kind]
    store, run = root / f"{kind}.zarr", root / f"{kind}-{policy}-run"
    if not store.exists():
        collect(task, 2, store, max_steps=max_steps, progress=False, keep_failures=True)
    train(str(store), str(run), policy_name=policy, preset="cpu", policy_overrides=TINY_POLICY,
          train_overrides=TINY_TRAIN, progress=False, cpu=True)
    return run / "latest", store


def far_out_checkpoint(src: Path, dst: Path, factor: float = 1000.0) -> Path:
    """A copy of ``src`` whose action normaliser is ``factor`` times wider: the same weights, but every
    un-normalised action lands ``factor`` times further from zero (far outside any robot's limits)."""
    import json
    import shutil

    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    action = config["normalizer"]["keys"][config.get("action_key", "action")]
    # y = x * scale + offset  =>  x = (y - offset) / scale: dividing both by `factor` multiplies x by it.
    action["scale"] = [s / factor for s in action["scale"]]
    action["offset"] = [o / factor for o in action["offset"]]
    action["stats"] = {k: [v * factor for v in values] for k, values in (action["stats"] or {}).items()}
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def nan_checkpoint(src: Path, dst: Path) -> Path:
    """A copy of ``src`` whose every floating-point weight is NaN (live and EMA), as a diverged run leaves."""
    import shutil

    import numpy as np
    from safetensors.numpy import load_file, save_file

    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    save_file({k: np.full_like(v, np.nan) if np.issubdtype(v.dtype, np.floating) else v
               for k, v in tensors.items()}, dst / "model.safetensors")
    return dst
