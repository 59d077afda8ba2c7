"""Training windows over episodes: fixed-length sequences with edge padding, sampled in whole batches.

A window is ``H`` consecutive steps of one episode. As in Diffusion Policy's ``create_indices``, window
starts run over ``[-pad_before, L - H + pad_after]`` for an episode of length ``L`` (both pads clipped to
``H - 1``), so each episode yields ``L - H + pad_before + pad_after + 1`` windows, and at least one when
``L >= 1``. Steps outside the episode repeat its first or last frame and are flagged in a pad mask.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch

__all__ = ["WindowDataset", "WindowSampler", "split_episodes"]


class WindowSampler:
    """Windows over in-memory arrays, indexed once and gathered batch-wise.

    Args:
        arrays: ``{key: (N, ...)}`` every step of every episode (e.g. ``DemoStore.load()``).
        episode_ends: ``(E,)`` cumulative end row of each episode in ``arrays``.
        horizon: ``H``, steps per window (the predicted action chunk).
        n_obs_steps: ``To``, the first ``To`` steps of a window are the observation.
        obs_keys, action_key: which arrays are gathered as observations and as the action.
        pad_before: default ``To - 1``, so the first window's last observation is the episode's first step.
        pad_after: default ``H - 1``.
        episodes: episode indices to draw windows from (a train or validation split); default all.

    Attributes:
        indices: ``(n_windows, H)`` row of each window step in ``arrays``, clipped to its episode.
        is_pad: ``(n_windows, H)`` bool, True where the step lies outside the episode.
        window_episode: ``(n_windows,)`` episode index of each window.
    """

    def __init__(
        self,
        arrays: Mapping[str, np.ndarray],
        episode_ends: np.ndarray,
        *,
        horizon: int,
        n_obs_steps: int,
        obs_keys: Sequence[str],
        action_key: str,
        pad_before: int | None = None,
        pad_after: int | None = None,
        episodes: Sequence[int] | None = None,
    ):
        if not 1 <= n_obs_steps <= horizon:
            raise ValueError(f"need 1 <= n_obs_steps <= horizon, got {n_obs_steps=} {horizon=}")
        pad_before = n_obs_steps - 1 if pad_before is None else pad_before
        pad_after = horizon - 1 if pad_after is None else pad_after
        if pad_before < 0 or pad_after < 0:
            raise ValueError(f"pads must be >= 0, got {pad_before=} {pad_after=}")
        if action_key in obs_keys:
            raise ValueError(f"action key {action_key!r} is also among obs_keys {list(obs_keys)}")
        ends = np.asarray(episode_ends, dtype=np.int64)
        n_rows = int(ends[-1]) if len(ends) else 0
        for k in [*obs_keys, action_key]:
            if k not in arrays:
                raise KeyError(f"no array {k!r}; available: {sorted(arrays)}")
            if len(arrays[k]) < n_rows:
                raise ValueError(f"array {k!r} has {len(arrays[k])} steps but episode_ends says {n_rows}")
        eps = np.arange(len(ends)) if episodes is None else np.asarray(episodes, dtype=np.int64).reshape(-1)
        if len(eps) and (eps.min() < 0 or eps.max() >= len(ends)):
            raise IndexError(f"episodes {eps.tolist()} out of range for {len(ends)} episodes")

        self.arrays = dict(arrays)
        self.horizon, self.n_obs_steps = horizon, n_obs_steps
        self.obs_keys, self.action_key = list(obs_keys), action_key
        self.pad_before = min(pad_before, horizon - 1)
        self.pad_after = min(pad_after, horizon - 1)

        starts = np.concatenate([[0], ends[:-1]])[eps]
        lengths = ends[eps] - starts
        per_episode = lengths - horizon + self.pad_before + self.pad_after + 1
        counts = np.where(lengths > 0, np.maximum(per_episode, 1), 0)  # short episodes still give one window
        win = np.repeat(np.arange(len(eps)), counts)  # position in `eps` of each window
        first_window = np.cumsum(counts) - counts
        rel_start = np.arange(counts.sum()) - first_window[win] - self.pad_before
        rel = rel_start[:, None] + np.arange(horizon)  # (n_windows, H) step within the episode
        length = lengths[win][:, None]
        self.is_pad = (rel < 0) | (rel >= length)
        # int32 halves the table for the usual store (< 2^31 steps).
        dtype = np.int32 if n_rows < 2**31 else np.int64
        self.indices = (starts[win][:, None] + np.clip(rel, 0, length - 1)).astype(dtype)
        self.window_episode = eps[win]

    def __len__(self) -> int:
        return len(self.indices)

    def sample(self, idx: np.ndarray | Sequence[int]) -> dict[str, np.ndarray]:
        """Gather windows ``idx``: obs keys ``(B, To, ...)``, action ``(B, H, A)``, ``action_is_pad (B, H)``.

        Floating arrays come back as float32; images stay ``uint8`` HWC.
        """
        idx = np.asarray(idx, dtype=np.int64)
        rows = self.indices[idx]
        obs_rows = rows[:, : self.n_obs_steps]  # observation keys need only the first To steps
        out = {k: _as_sample(self.arrays[k][obs_rows]) for k in self.obs_keys}
        out[self.action_key] = _as_sample(self.arrays[self.action_key][rows])
        out["action_is_pad"] = self.is_pad[idx]
        return out


def _as_sample(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32, copy=False) if np.issubdtype(x.dtype, np.floating) else x


def split_episodes(n_episodes: int, val_episodes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of whole episodes into sorted ``(train_idx, val_idx)``; at least one train episode."""
    if val_episodes < 0:
        raise ValueError(f"val_episodes must be >= 0, got {val_episodes}")
    if val_episodes >= n_episodes:
        raise ValueError(
            f"val_episodes={val_episodes} leaves no training episode out of {n_episodes}"
        )
    perm = np.random.default_rng(seed).permutation(n_episodes)
    return np.sort(perm[val_episodes:]), np.sort(perm[:val_episodes])


class WindowDataset(torch.utils.data.Dataset):
    """Torch view of a :class:`WindowSampler`. ``batches`` is the fast path: whole batches, vectorised."""

    def __init__(self, sampler: WindowSampler):
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"window {i} out of range for {len(self)} windows")
        return {k: torch.from_numpy(v[0]) for k, v in self.sampler.sample([i]).items()}

    def batches(
        self, batch_size: int, shuffle: bool = True, seed: int = 0, drop_last: bool = True
    ) -> Iterator[dict[str, torch.Tensor]]:
        """One epoch of batches ``{key: (B, ...)}``. With ``drop_last`` a final short batch is skipped
        (and fewer than ``batch_size`` windows yield nothing)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = len(self)
        order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
        stop = n - n % batch_size if drop_last else n
        for a in range(0, stop, batch_size):
            yield {k: torch.from_numpy(v) for k, v in self.sampler.sample(order[a : a + batch_size]).items()}
