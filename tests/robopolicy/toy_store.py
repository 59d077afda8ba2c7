"""A small real zarr store of a 2-D reaching task: the expert moves a point towards a goal.

The dynamics are simple enough that a tiny policy learns them in a few hundred steps on a CPU, yet the
data go through the real EpisodeWriter and the real zarr on-disk layout.
"""

import json
from pathlib import Path

import numpy as np

from robopolicy.store import EpisodeWriter


def reach_episode(rng: np.random.Generator, length: int) -> dict[str, np.ndarray]:
    pos, goal = rng.uniform(-1, 1, 2), rng.uniform(-1, 1, 2)
    states, actions = [], []
    for _ in range(length):
        target = pos + np.clip(goal - pos, -0.2, 0.2)
        states.append(np.concatenate([pos, goal]))
        actions.append(target)
        pos = target
    return {"state": np.asarray(states, np.float32), "action": np.asarray(actions, np.float32)}


def write_reach_store(path, episodes: int = 12, seed: int = 0, zarr_format: int = 3) -> str:
    rng = np.random.default_rng(seed)
    with EpisodeWriter(path, zarr_format=zarr_format, attrs={"action_semantics": "unknown",
                                                              "control_rate_hz": 10.0}) as writer:
        for _ in range(episodes):
            writer.add_episode(reach_episode(rng, int(rng.integers(20, 40))))
    return str(path)


def reach_with(runner, episodes: int = 6, steps: int = 25, seed: int = 123) -> tuple[list[float], list[float]]:
    """Drives the reaching task in closed loop through a PolicyRunner: (final distances, initial distances)."""
    rng = np.random.default_rng(seed)
    errors, starts = [], []
    for _ in range(episodes):
        pos, goal = rng.uniform(-1, 1, 2).astype(np.float32), rng.uniform(-1, 1, 2).astype(np.float32)
        starts.append(float(np.linalg.norm(pos - goal)))
        runner.reset()
        for _ in range(steps):
            pos = runner.act({"state": np.concatenate([pos, goal])}).astype(np.float32)
        errors.append(float(np.linalg.norm(pos - goal)))
    return errors, starts


def metrics(run: Path, name: str) -> list[float]:
    """One logged series, e.g. "train/loss", from a run directory's metrics.jsonl."""
    rows = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]
    return [r[name] for r in rows if name in r]
