"""Scripted-expert demonstrations into a zarr demonstration store (``robopolicy collect``).

Episode ``i`` uses env seed ``seed + i`` (collection seeds start at 0; evaluation seeds at 1000).
Only successful episodes are committed unless ``keep_failures=True``; expert failures are counted
and reported. An existing store is appended to; its ``collection_seeds`` attribute lists the seed
of every committed episode, in order.
"""

from __future__ import annotations

import datetime
import os
import platform
import time
from importlib import metadata
from typing import Any, Sequence

import numpy as np

from sim.registry import canonical_name, make, make_expert, task_spec


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("robopolicy", "metaworld", "mujoco", "gymnasium", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def collect(
    task: str,
    episodes: int,
    out: str | os.PathLike,
    seed: int = 0,
    progress: bool = True,
    keep_failures: bool = False,
    render: bool = False,
    camera: str | Sequence[str] | None = None,
    image_size: int = 96,
    zarr_format: int = 3,
    max_steps: int | None = None,
) -> dict[str, Any]:
    """Run the task's scripted expert for ``episodes`` episodes (seeds ``seed + i``) into store ``out``.

    Args:
        render: also record ``image_<camera>`` (uint8 ``image_size`` squared, HWC) every step.
        keep_failures: commit episodes where the expert did not succeed as well (default: discard).
        zarr_format: format of a new store (an existing one keeps its own).
        max_steps: step cap per episode (default: the task's).

    Returns a summary: ``episodes_run``, ``episodes_written``, ``expert_failures``, ``failed_seeds``,
    ``expert_success_rate``, ``steps`` (written), ``seconds``, ``store_episodes`` (after), ``seeds``.
    """
    from tqdm.auto import tqdm

    from robopolicy.store import EpisodeWriter

    name = canonical_name(task)
    spec = task_spec(name)
    episodes = int(episodes)
    if episodes < 0:
        raise ValueError(f"episodes must be >= 0, got {episodes}")
    env_kwargs: dict[str, Any] = {}
    if render:
        env_kwargs.update(render=True, image_size=int(image_size))
        if camera is not None:  # else the task's own default camera
            env_kwargs["camera"] = camera
    if max_steps is not None:
        env_kwargs["max_steps"] = int(max_steps)
    env = make(name, **env_kwargs)
    expert = make_expert(name)
    obs_keys = sorted(env.observation_space.spaces)
    dt = 1.0 / spec.control_rate_hz

    schema = {
        "action_key": "action",
        "obs_keys": obs_keys,
        "action_semantics": spec.action_semantics,
        "control_rate_hz": float(spec.control_rate_hz),
    }
    t0 = time.perf_counter()
    written_seeds: list[int] = []
    failed_seeds: list[int] = []
    steps_written = 0
    try:
        with EpisodeWriter(out, zarr_format=zarr_format, attrs=schema) as writer:
            existing = writer.store.attrs
            if existing.get("task") not in (None, name):
                raise ValueError(
                    f"{out} holds demonstrations of {existing['task']!r}; refusing to append {name!r} to it"
                )
            previous_seeds = list(existing.get("collection_seeds") or [])
            provenance = {
                "source": "scripted_expert",
                "generator": "sim.collect",
                "expert": getattr(expert, "name", type(expert).__name__),
                "created": existing.get("provenance", {}).get("created")
                or datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "updated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "host": platform.node(),
                "versions": _versions(),
            }
            writer.set_attrs(
                task=name,
                expert=provenance["expert"],
                max_steps=int(max_steps) if max_steps is not None else spec.max_steps,
                provenance=provenance,
                key_info={
                    "state": {"role": "observation", "shape": list(spec.obs_shapes.get("state", ())),
                              "description": f"{spec.action_semantics} task state vector"},
                    "action": {"role": "action", "semantics": spec.action_semantics, "range": [-1.0, 1.0]},
                    "timestamp": {"role": "time", "units": "s"},
                    **{k: {"role": "observation", "format": "uint8 HWC"} for k in obs_keys if k.startswith("image_")},
                },
            )
            bar = tqdm(range(episodes), desc=f"collect {spec.short_name}", unit="ep", disable=not progress)
            for i in bar:
                s = seed + i
                obs, _ = env.reset(seed=s)
                expert.reset()
                t = 0
                success = False
                while True:
                    action = np.asarray(expert(obs), dtype=np.float32)
                    step = {k: obs[k] for k in obs_keys}
                    step["action"] = action
                    step["timestamp"] = np.float64(t * dt)
                    writer.add_step(step)
                    obs, _, terminated, truncated, info = env.step(action)
                    t += 1
                    success = success or bool(info["success"])
                    if terminated or truncated:
                        break
                if success or keep_failures:
                    writer.commit()
                    written_seeds.append(s)
                    steps_written += t
                else:
                    writer.discard()
                if not success:
                    failed_seeds.append(s)
                # Record the seeds as we go, so an interrupted run leaves a truthful store.
                writer.set_attrs(collection_seeds=previous_seeds + written_seeds)
                bar.set_postfix(written=len(written_seeds), failed=len(failed_seeds))
            bar.close()
            store_episodes = writer.n_episodes
    finally:
        env.close()

    summary = {
        "task": name,
        "store": os.fspath(out),
        "episodes_run": episodes,
        "episodes_written": len(written_seeds),
        "expert_failures": len(failed_seeds),
        "failed_seeds": failed_seeds,
        "expert_success_rate": (episodes - len(failed_seeds)) / episodes if episodes else float("nan"),
        "steps": steps_written,
        "seconds": time.perf_counter() - t0,
        "store_episodes": store_episodes,
        "seeds": written_seeds,
    }
    if failed_seeds and progress:
        print(
            f"collect: the expert failed {len(failed_seeds)}/{episodes} episodes "
            f"({'kept' if keep_failures else 'not written'}): seeds {failed_seeds}"
        )
    return summary
