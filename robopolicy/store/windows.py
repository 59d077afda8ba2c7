"""Training windows over episodes: fixed-length sequences with edge padding, sampled in whole batches.

A window is ``H`` consecutive steps of one episode. As in Diffusion Policy's ``create_indices``, window
starts run over ``[-pad_before, L - H + pad_after]`` for an episode of length ``L`` (both pads clipped to
``H - 1``), so each episode yields ``L - H + pad_before + pad_after + 1`` windows, and at least one when
``L >= 1``. Steps outside the episode repeat its first or last frame and are flagged in a pad mask.

Two ways out: ``sample`` returns numpy windows (images ``uint8``), and ``batch`` is the training fast path,
model-ready torch tensors. ``batch`` gathers whole batches from the contiguous in-memory arrays with one
``index_select`` per key (the window table is precomputed, so no Python runs per sample), keeps images
``uint8`` through the gather (a quarter of the bytes), then casts them into their ``float32`` destination
and normalises each key in place, on the target device. Output buffers are reused on request: the trainer
keeps two sets rather than touching fresh pages for every batch (``bench/data_path.py`` times both).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from robopolicy.store.normalize import Normalizer

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
        self._sources: dict[str, torch.Tensor] = {}  # torch views of the arrays, made on the first batch()
        self._buffers: list[dict[str, torch.Tensor]] = [{}, {}]  # two slots, alternated by batch()
        self._turn = 0

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

    def batch(
        self,
        idx: np.ndarray | Sequence[int],
        normalizer: Normalizer | None = None,
        device: str | torch.device = "cpu",
        channels_first: bool = False,
        reuse_buffers: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Model-ready windows ``idx``: what ``Policy.compute_loss`` takes.

        Returns each obs key ``(B, To, ...)``, ``"action"`` ``(B, H, A)`` (under that name whatever the
        store calls it) and ``"action_is_pad"`` ``(B, H)``, on ``device``. With a ``normalizer`` every obs
        key and the action are normalised to float32 (images from ``uint8``); without one, images stay
        ``uint8`` and other arrays come as float32.

        Args:
            channels_first: images as ``(B, To, C, H, W)`` instead of ``(B, To, H, W, C)``. It is a view in
                channels-last memory, which convolutions take as they are (no transposing copy).
            reuse_buffers: gather (and, on the CPU, return) into buffers the sampler keeps, two sets used
                in turn: a batch stays valid through the next call and is overwritten by the one after. The
                training loop consumes each batch before drawing the next, so it reuses them; clone what you
                keep longer.
        """
        idx = np.asarray(idx, dtype=np.int64)
        rows = self.indices[idx]  # (B, H); numpy's IndexError names a bad window
        b, device = len(rows), torch.device(device)
        slot = self._buffers[self._turn] if reuse_buffers else None
        self._turn ^= 1
        obs_rows = torch.from_numpy(np.ascontiguousarray(rows[:, : self.n_obs_steps]).reshape(-1))
        all_rows = torch.from_numpy(rows.reshape(-1))
        out = {}
        for key in [*self.obs_keys, self.action_key]:
            is_action = key == self.action_key
            name, key_rows = ("action", all_rows) if is_action else (key, obs_rows)
            src = self._source(key)
            shape = (b, self.horizon if is_action else self.n_obs_steps, *src.shape[1:])
            # Gathered on the host, where the arrays live; images cross to the device still as uint8.
            x = _buffer(slot, f"{name}/gathered", shape, src.dtype)
            torch.index_select(src, 0, key_rows, out=x.view(-1, *src.shape[1:]))
            x = x.to(device)
            if normalizer is not None:
                # Floats are normalised in place; uint8 needs a float32 destination (fresh off the CPU,
                # where the device's own caching allocator serves it).
                host_slot = slot if device.type == "cpu" else None
                dest = x if x.is_floating_point() else _buffer(host_slot, f"{name}/normalised", shape,
                                                               torch.float32, device)
                x = normalizer.normalize(key, x, out=dest)
            if channels_first and x.dim() == 5:  # HWC images (B, To, H, W, C) -> (B, To, C, H, W), a view
                x = x.permute(0, 1, 4, 2, 3)
            out[name] = x
        out["action_is_pad"] = torch.from_numpy(self.is_pad[idx]).to(device)
        return out

    def _source(self, key: str) -> torch.Tensor:
        """Array ``key`` (the rows windows use) as a contiguous tensor; other floats once to float32."""
        if key not in self._sources:
            n_rows = int(self.indices.max()) + 1 if self.indices.size else 0
            a = np.ascontiguousarray(self.arrays[key][:n_rows])
            if np.issubdtype(a.dtype, np.floating) and a.dtype != np.float32:
                a = a.astype(np.float32)
            with warnings.catch_warnings():  # a read-only array is fine: it is only ever read
                warnings.simplefilter("ignore", UserWarning)
                self._sources[key] = torch.from_numpy(a)
        return self._sources[key]


def _buffer(slot: dict[str, torch.Tensor] | None, name: str, shape: tuple[int, ...], dtype: torch.dtype,
            device: torch.device | str = "cpu") -> torch.Tensor:
    """A tensor for ``name``: the slot's own if shape and dtype fit, else a new one (kept in the slot)."""
    if slot is None:
        return torch.empty(shape, dtype=dtype, device=device)
    buf = slot.get(name)
    if buf is None or buf.shape != shape or buf.dtype != dtype:
        buf = slot[name] = torch.empty(shape, dtype=dtype, device=device)
    return buf


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
    """Torch view of a :class:`WindowSampler` (raw windows, as ``sample`` gives them). ``batches`` yields
    whole epochs vectorised; the trainer takes model-ready batches from ``WindowSampler.batch`` instead."""

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
