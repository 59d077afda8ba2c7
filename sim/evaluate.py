"""Evaluate a policy on a simulated task: success rate with a Wilson interval, per-episode results,
videos on request, episodes spread over worker processes.

Episode ``i`` uses env seed ``seed + i`` (evaluation seeds start at 1000, collection seeds at 0, so
they never overlap; DESIGN §4). Before each episode the global numpy / random / torch generators
are seeded with the episode's seed as well, so a stochastic policy gives the same results whatever
the number of workers.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import random
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from sim.registry import TaskSpec, canonical_name, task_spec


# ------------------------------------------------------------------------------------- statistics
def wilson_ci(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes out of ``n`` trials (95 % for z = 1.96)."""
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = (z / denom) * math.sqrt(p * (1.0 - p) / n + z2 / (4 * n * n))
    return (max(0.0, center - half), min(1.0, center + half))


@dataclass
class EpisodeResult:
    episode: int
    seed: int
    success: bool
    steps: int
    seconds: float
    reward: float = 0.0
    video: str | None = None
    final_info: dict[str, float] = field(default_factory=dict)  # the last step's numeric info, e.g. RMS error


@dataclass
class EvalResult:
    task: str
    per_episode: list[EpisodeResult]
    success_rate: float
    ci95: tuple[float, float]
    episodes: int
    sampler: str | None = None
    nfe: float | None = None  # per chunk; a mean for adaptive samplers
    seconds: float = 0.0
    seed: int = 1000
    workers: int = 1
    video_dir: str | None = None

    def summary_line(self) -> str:
        """``success_rate=0.920 ci95=[0.808,0.968] episodes=50 sampler=ddim-10 nfe=10``."""
        sampler = self.sampler if self.sampler else "none"
        nfe = "none" if self.nfe is None else f"{self.nfe:.0f}" if float(self.nfe).is_integer() else f"{self.nfe:.1f}"
        lo, hi = self.ci95
        return (
            f"success_rate={self.success_rate:.3f} ci95=[{lo:.3f},{hi:.3f}] "
            f"episodes={self.episodes} sampler={sampler} nfe={nfe}"
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ci95"] = list(self.ci95)
        d["summary"] = self.summary_line()
        return d

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)


# ------------------------------------------------------------------------------------- checks
def check_action_compatibility(
    spec: TaskSpec, semantics: str | None, dim: int | None, source: str = "policy"
) -> None:
    """Raise ValueError when declared actions do not fit the task; semantics 'unknown' checks dim only."""
    if semantics is None and dim is None:
        warnings.warn(
            f"{source} declares no action semantics or dimension; cannot check it against "
            f"{spec.name} ({spec.action_semantics}, {spec.action_dim}-d)",
            stacklevel=3,
        )
        return
    dim_txt = f"{int(dim)}-d" if dim is not None else "?-d"
    want = f"{spec.action_semantics} ({spec.action_dim}-d)"
    if semantics is None or semantics == "unknown":
        if dim is not None and int(dim) != spec.action_dim:
            raise ValueError(
                f"{source} actions are unknown ({dim_txt}) but task {spec.name} expects {want}"
            )
        warnings.warn(
            f"{source} action semantics are unknown; checked the dimension only against {spec.name} ({want})",
            stacklevel=3,
        )
        return
    if semantics != spec.action_semantics or (dim is not None and int(dim) != spec.action_dim):
        raise ValueError(f"{source} actions are {semantics} ({dim_txt}) but task {spec.name} expects {want}")


def _declared(policy: Any) -> tuple[str | None, int | None]:
    sem = getattr(policy, "action_semantics", None)
    dim = getattr(policy, "action_dim", None)
    return (str(sem) if sem is not None else None, int(dim) if dim is not None else None)


class _Given:
    """Factory for an already-built policy object (pickled as the object itself)."""

    def __init__(self, policy: Any):
        self.policy = policy

    def __call__(self) -> Any:
        return self.policy


def _as_factory(policy_factory: Any) -> Callable[[], Any]:
    if not isinstance(policy_factory, type) and hasattr(policy_factory, "act") and hasattr(policy_factory, "reset"):
        return _Given(policy_factory)
    if not callable(policy_factory):
        raise TypeError("policy_factory must be a zero-argument callable returning a policy")
    return policy_factory


# ------------------------------------------------------------------------------------- rollouts
def _env_kwargs_for(policy: Any, env_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """Camera observations when the policy asks for them (``obs_keys`` with ``image_<cam>``,
    ``depth_<cam>`` or ``points``; their sizes from ``obs_shapes``)."""
    from sim.camera_obs import camera_options_for

    kw = dict(env_kwargs or {})
    shapes = dict(getattr(policy, "obs_shapes", None) or {})
    keys = list(getattr(policy, "obs_keys", None) or shapes)
    three_d = {k: shapes[k] for k in keys if k in shapes and (k == "points" or k.startswith("depth_"))}
    if three_d and not any(k in kw for k in ("render", "camera", "cameras")):
        images = {k: shapes[k] for k in keys if k in shapes and k.startswith("image_")}
        return {**camera_options_for({**images, **three_d}), **kw}
    cams = [k[len("image_"):] for k in keys if isinstance(k, str) and k.startswith("image_")]
    if cams and "render" not in kw:
        kw["render"] = True
        kw.setdefault("camera", cams if len(cams) > 1 else cams[0])
        size = getattr(policy, "image_size", None)
        if size is None and f"image_{cams[0]}" in shapes:
            size = shapes[f"image_{cams[0]}"][0]  # (H, W, 3); Meta-World images are square
        if size is not None:
            kw.setdefault("image_size", int(size if np.isscalar(size) else size[0]))
    return kw


def _reset_policy(policy: Any, seed: int) -> None:
    """``policy.reset(seed=seed)`` when the policy takes a seed (reproducible sampling noise), else ``reset()``."""
    reset = getattr(policy, "reset", None)
    if reset is None:
        return
    try:
        params = inspect.signature(reset).parameters
    except (TypeError, ValueError):
        params = {}
    if "seed" in params:
        reset(seed=seed)
    else:
        reset()


def _seed_globals(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)


@contextlib.contextmanager
def _preserve_global_rng() -> Iterator[None]:
    py_state, np_state = random.getstate(), np.random.get_state()
    torch = sys.modules.get("torch")
    t_state = torch.random.get_rng_state() if torch is not None else None
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        if torch is not None and t_state is not None:
            torch.random.set_rng_state(t_state)


def run_episode(env: Any, policy: Any, spec: TaskSpec, seed: int, record: bool = False):
    """One episode to success or the step cap.

    Returns (success, steps, reward, seconds, frames|None, final_info): final_info holds the last step's numeric
    info entries (a task's episode measures, such as the quadrotor's `rms_position_error`).
    """
    act = policy.act if hasattr(policy, "act") else policy
    t0 = time.perf_counter()
    _seed_globals(seed)
    obs, _ = env.reset(seed=seed)
    _reset_policy(policy, seed)
    frames = [env.render()] if record else None
    success, steps, total = False, 0, 0.0
    while True:
        action = np.asarray(act(obs), dtype=np.float32)
        if action.shape != (spec.action_dim,):
            raise ValueError(
                f"policy returned an action of shape {action.shape}; task {spec.name} expects ({spec.action_dim},)"
            )
        obs, reward, terminated, truncated, info = env.step(action)
        steps += 1
        total += float(reward)
        if frames is not None:
            frames.append(env.render())
        if info.get("success", False):
            success = True
        if terminated or truncated:
            break
    final_info = {k: float(v) for k, v in info.items()  # flags (crashed, ...) as 0/1
                  if isinstance(v, (int, float, np.number, np.bool_)) and k not in ("success", "steps")}
    return success, steps, total, time.perf_counter() - t0, frames, final_info


# Worker-process state: built on the first episode a worker runs (so errors reach the parent).
_W: dict[str, Any] = {}


def _policy_meta(policy: Any) -> tuple[str | None, float | None]:
    sampler = getattr(policy, "sampler", None)
    nfe = getattr(policy, "nfe", None)
    return (str(sampler) if sampler is not None else None, float(nfe) if nfe is not None else None)


def _worker_episode(job: tuple) -> tuple[EpisodeResult, list[np.ndarray] | None, tuple]:
    factory, task, env_kwargs, render_size, episode, seed, record = job
    if "policy" not in _W:
        import sim  # noqa: F401  (registers the tasks and picks the GL backend in this process)
        from sim.registry import make

        policy = factory()
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.set_num_threads(1)
        kw = _env_kwargs_for(policy, env_kwargs)
        kw.setdefault("render_size", render_size)
        _W.update(policy=policy, env=make(task, **kw), spec=task_spec(task))
    success, steps, reward, secs, frames, final = run_episode(_W["env"], _W["policy"], _W["spec"], seed, record)
    res = EpisodeResult(episode, seed, bool(success), int(steps), float(secs), float(reward), final_info=final)
    return res, frames, _policy_meta(_W["policy"])


@contextlib.contextmanager
def _worker_environment() -> Iterator[None]:
    """Environment variables the spawned workers inherit: osmesa rendering, one BLAS/OpenMP thread."""
    from sim.gl import default_gl_backend

    want = {"MUJOCO_GL": default_gl_backend(), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    old = {k: os.environ.get(k) for k in want}
    os.environ.update(want)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ------------------------------------------------------------------------------------- videos
def _even(frame: np.ndarray) -> np.ndarray:
    h, w = frame.shape[:2]
    if h % 2 or w % 2:
        frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)))
    return frame


def write_video(path: str, frames: list[np.ndarray], fps: float) -> None:
    import imageio.v2 as imageio

    with imageio.get_writer(
        path, fps=fps, codec="libx264", quality=7, macro_block_size=1, ffmpeg_log_level="error"
    ) as w:
        for f in frames:
            w.append_data(_even(np.asarray(f, dtype=np.uint8)))


def tile_videos(videos: list[list[np.ndarray]], cols: int | None = None) -> list[np.ndarray]:
    """Tile episodes into one video; shorter ones hold their last frame, empty tiles are black."""
    n = len(videos)
    if n == 0:
        return []
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    h, w, c = videos[0][0].shape
    length = max(len(v) for v in videos)
    out = []
    for t in range(length):
        canvas = np.zeros((rows * h, cols * w, c), dtype=np.uint8)
        for i, v in enumerate(videos):
            r, q = divmod(i, cols)
            canvas[r * h:(r + 1) * h, q * w:(q + 1) * w] = v[min(t, len(v) - 1)]
        out.append(canvas)
    return out


# ------------------------------------------------------------------------------------- evaluate
def evaluate(
    policy_factory: Callable[[], Any],
    task: str,
    episodes: int,
    seed: int = 1000,
    workers: int = 1,
    video_dir: str | os.PathLike | None = None,
    video_episodes: int = 4,
    json_path: str | os.PathLike | None = None,
    progress: bool = True,
    expect: tuple[str | None, int | None] | None = None,
    env_kwargs: dict[str, Any] | None = None,
    render_size: int = 128,
) -> EvalResult:
    """Run ``episodes`` episodes of ``task`` (seeds ``seed + i``) and report success.

    Args:
        policy_factory: picklable zero-argument callable returning a policy with ``reset()`` and
            ``act(obs: dict) -> (A,)``; optional attributes ``action_semantics``, ``action_dim``,
            ``sampler``, ``nfe``, ``obs_keys`` (``image_<cam>`` keys turn on image observations),
            ``image_size``. A policy object itself is accepted too.
        workers: processes (spawn context); each builds the policy once and runs with one torch thread.
        video_dir: write ``episode_XXX.mp4`` for the first ``video_episodes`` episodes and ``grid.mp4``.
        json_path: write the per-episode results there.
        expect: ``(action_semantics, action_dim)`` declared by the checkpoint; otherwise the policy's
            own attributes are checked. A mismatch raises ValueError before any rollout.
        env_kwargs: extra arguments for the env (``sim.make``).
    """
    from tqdm.auto import tqdm

    name = canonical_name(task)
    spec = task_spec(name)
    episodes = int(episodes)
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    workers = max(1, min(int(workers), episodes))
    factory = _as_factory(policy_factory)
    n_video = min(int(video_episodes), episodes) if video_dir is not None else 0

    # Check the declared actions before any rollout.
    local_policy = None
    if expect is not None:
        check_action_compatibility(spec, expect[0], expect[1], source="checkpoint")
    else:
        local_policy = factory()
        check_action_compatibility(spec, *_declared(local_policy), source="policy")
    meta = _policy_meta(local_policy) if local_policy is not None else (None, None)
    if workers > 1:
        local_policy = None  # workers build their own

    t0 = time.perf_counter()
    results: list[EpisodeResult] = []
    videos: dict[int, list[np.ndarray]] = {}
    jobs = [
        (factory, name, env_kwargs, render_size, i, seed + i, i < n_video) for i in range(episodes)
    ]
    bar = tqdm(total=episodes, desc=f"eval {spec.short_name}", unit="ep", disable=not progress)

    def _collect(res: EpisodeResult, frames: list[np.ndarray] | None) -> None:
        results.append(res)
        if frames is not None:
            videos[res.episode] = frames
        bar.update(1)
        bar.set_postfix(success=f"{sum(r.success for r in results)}/{len(results)}")

    try:
        if workers == 1:
            from sim.registry import make

            policy = local_policy if local_policy is not None else factory()
            kw = _env_kwargs_for(policy, env_kwargs)
            kw.setdefault("render_size", render_size)
            env = make(name, **kw)
            try:
                with _preserve_global_rng():
                    for _, _, _, _, i, s, rec in jobs:
                        success, steps, reward, secs, frames, final = run_episode(env, policy, spec, s, rec)
                        _collect(EpisodeResult(i, s, bool(success), int(steps), float(secs), float(reward),
                                               final_info=final), frames)
                # Read after the rollouts: adaptive samplers report the mean NFE of what they actually ran.
                meta = _policy_meta(policy)
            finally:
                env.close()
        else:
            import multiprocessing as mp

            ctx = mp.get_context("spawn")
            with _worker_environment():
                pool = ctx.Pool(processes=workers)
            try:
                for res, frames, meta in pool.imap_unordered(_worker_episode, jobs, chunksize=1):
                    _collect(res, frames)
            finally:
                pool.terminate()
                pool.join()
    finally:
        bar.close()

    results.sort(key=lambda r: r.episode)
    if video_dir is not None and videos:
        os.makedirs(video_dir, exist_ok=True)
        ordered = [videos[i] for i in sorted(videos)]
        for i in sorted(videos):
            path = os.path.join(os.fspath(video_dir), f"episode_{i:03d}.mp4")
            write_video(path, videos[i], fps=spec.control_rate_hz)
            results[i].video = path
        write_video(os.path.join(os.fspath(video_dir), "grid.mp4"), tile_videos(ordered), fps=spec.control_rate_hz)

    k = sum(r.success for r in results)
    sampler, nfe = meta
    out = EvalResult(
        task=name,
        per_episode=results,
        success_rate=k / episodes,
        ci95=wilson_ci(k, episodes),
        episodes=episodes,
        sampler=sampler,
        nfe=nfe,
        seconds=time.perf_counter() - t0,
        seed=int(seed),
        workers=workers,
        video_dir=os.fspath(video_dir) if video_dir is not None else None,
    )
    if json_path is not None:
        parent = os.path.dirname(os.fspath(json_path))
        if parent:
            os.makedirs(parent, exist_ok=True)
        with open(json_path, "w") as f:
            f.write(out.to_json())
    return out
