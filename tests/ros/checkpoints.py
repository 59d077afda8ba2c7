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
TASKS = {"arm": ("robopolicy/robosuite-Lift-joint-v0", 40), "quadrotor": ("robopolicy/quadrotor-hover-v0", 100)}


def tiny_checkpoint(kind: str, root: Path) -> tuple[Path, Path]:
    """(checkpoint dir, store) for ``kind`` in ``arm`` | ``quadrotor``, built under ``root``."""
    from robopolicy.train.trainer import train
    from sim.collect import collect

    task, max_steps = TASKS[kind]
    store, run = root / f"{kind}.zarr", root / f"{kind}-run"
    collect(task, 2, store, max_steps=max_steps, progress=False, keep_failures=True)
    train(str(store), str(run), preset="cpu", policy_overrides=TINY_POLICY, train_overrides=TINY_TRAIN,
          progress=False, cpu=True)
    return run / "latest", store
