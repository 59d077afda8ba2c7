"""Scripted-expert demonstrations into a zarr demonstration store (``robopolicy collect``).

Episode ``i`` uses env seed ``seed + i`` (collection seeds start at 0; evaluation seeds at 1000).
Only successful episodes are committed unless ``keep_failures=True``; expert failures are counted
and reported. An existing store is appended to; its ``collection_seeds`` attribute lists the seed
of every committed episode, in order.
"""

from __future__ import annotations

import datetime
import json
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


def _camera_key_info(key: str) -> dict[str, Any]:
    if key.startswith("image_"):
        return {"role": "observation", "format": "uint8 HWC", "camera": key[len("image_"):]}
    if key.startswith("depth_"):
        return {"role": "observation", "format": "float32 HW", "units": "m", "camera": key[len("depth_"):],
                "description": "depth along the optical axis; the far clipping distance means background"}
    return {"role": "observation", "format": "float32 N x 3 (xyz) or N x 6 (xyz rgb in [0, 1])", "units": "m",
            "frame": "world", "description": "cameras' depth lifted to the world, cropped, farthest-point sampled"}


def _checked_cameras(previous: dict | None, cameras: dict, out: Any) -> dict:
    """The cameras attribute; appending to a store recorded through other cameras is refused."""
    if previous:
        def fixed(params):
            return {k: v for k, v in params.items() if k not in ("position", "rotation") or not params.get("moving")}

        same = set(previous) == set(cameras) and all(
            json.dumps(fixed(previous[c]), sort_keys=True) == json.dumps(fixed(cameras[c]), sort_keys=True)
            for c in cameras)
        if not same:
            raise ValueError(f"{out} was recorded through other cameras ({sorted(previous)}, or other "
                             f"intrinsics/poses); refusing to append episodes seen through {sorted(cameras)}")
    return cameras


def collect(
    task: str,
    episodes: int,
    out: str | os.PathLike,
    seed: int = 0,
    progress: bool = True,
    keep_failures: bool = False,
    render: bool | None = None,
    camera: str | Sequence[str] | None = None,
    image_size: int | None = None,
    zarr_format: int = 3,
    max_steps: int | None = None,
    cameras: str | Sequence[str] | None = None,
    depth: bool = False,
    points: bool = False,
    num_points: int | None = None,
    point_colour: bool = False,
    workspace: Any = None,
) -> dict[str, Any]:
    """Run the task's scripted expert for ``episodes`` episodes (seeds ``seed + i``) into store ``out``.

    Args:
        render: also record ``image_<camera>`` (uint8 ``image_size`` squared, HWC) every step
            (default: on when ``cameras`` is given).
        camera / cameras: the observation cameras (default: the task's).
        depth, points, num_points, point_colour, workspace: also record ``depth_<camera>`` (float32 HW,
            metres) and ``points`` (float32 N x 3|6, world frame); see :mod:`sim.camera_obs`. The
            cameras' intrinsics and extrinsics go into the store's ``cameras`` attribute.
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
    camera_kwargs = {"render": render, "camera": camera, "cameras": cameras, "image_size": image_size,
                     "depth": depth, "points": points, "num_points": num_points, "point_colour": point_colour,
                     "workspace": workspace}
    # Only what the caller set, so the env's own defaults hold (and tasks without cameras take none).
    env_kwargs: dict[str, Any] = {k: v for k, v in camera_kwargs.items() if v not in (None, False)}
    if max_steps is not None:
        env_kwargs["max_steps"] = int(max_steps)
    env = make(name, **env_kwargs)
    expert = make_expert(name)
    obs_keys = sorted(env.observation_space.spaces)
    records_cameras = hasattr(env, "camera_attrs") and any(k.split("_")[0] in ("image", "depth", "points")
                                                           for k in obs_keys)
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
                    **{k: _camera_key_info(k) for k in obs_keys if k.split("_")[0] in ("image", "depth", "points")},
                },
            )
            bar = tqdm(range(episodes), desc=f"collect {spec.short_name}", unit="ep", disable=not progress)
            for i in bar:
                s = seed + i
                obs, _ = env.reset(seed=s)
                expert.reset()
                if i == 0 and records_cameras:  # the poses after a reset, before anything is committed
                    writer.set_attrs(cameras=_checked_cameras(existing.get("cameras"), env.camera_attrs(), out))
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
