"""Demonstration store: episodes of time-first arrays in zarr, laid out as Diffusion Policy's ReplayBuffer.

Layout (zarr format 2 or 3, a directory or a read-only ``.zip``)::

    /                       root attributes: schema_version, action_key, obs_keys, action_semantics, ...
    data/<key>              (N, ...) every step of every episode, time first
    meta/episode_ends       (E,) int64, cumulative: episode i is rows [ends[i-1], ends[i])

Commit protocol (what makes a SIGKILL lose at most the open episode):

1. every data array is resized and its new rows written;
2. the new ``episode_ends`` entries are written into their chunk *beyond* the published shape, and only
   then is the shape of ``episode_ends`` grown. Each of zarr's local writes is an atomic file replace,
   so a reader sees either the old or the new ``episode_ends``, never a grown shape over an unwritten entry.

Rows past ``episode_ends[-1]`` are therefore the tail of an episode that was being written when the writer
died: readers ignore them and the next writer truncates them. Rows missing below ``episode_ends[-1]`` can
only come from damage, and opening raises :class:`StoreError`.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import uuid
import warnings
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numcodecs
from numcodecs.abc import Codec
import numpy as np
import zarr
import zarr.codecs
import zarr.storage

__all__ = [
    "SCHEMA_VERSION",
    "DemoStore",
    "EpisodeWriter",
    "StoreError",
    "StoreWarning",
    "register_codecs",
]

SCHEMA_VERSION = 1
# Schema attributes that must agree when episodes from two sources end up in one store.
_SCHEMA_KEYS = ("action_key", "obs_keys", "action_semantics", "control_rate_hz")
# Low-dim arrays: about 2 MB per chunk along time, as Diffusion Policy's get_optimal_chunks.
_CHUNK_BYTES = 2 * 2**20
# Reads for stats/check_finite/copies go in blocks of about this many bytes, so big stores fit in memory.
_READ_BLOCK_BYTES = 64 * 2**20

_codecs_registered = False


class StoreError(ValueError):
    """A path is not a demonstration store, or the store is malformed or inconsistent."""


class StoreWarning(UserWarning):
    """Something was ignored or repaired in a store (an uncommitted tail, a dropped open episode)."""


def register_codecs() -> None:
    """Register imagecodecs' numcodecs codecs (Jpeg2k, ...) once, so community image stores open."""
    global _codecs_registered
    if _codecs_registered:
        return
    import imagecodecs.numcodecs

    imagecodecs.numcodecs.register_codecs(verbose=False)
    _codecs_registered = True


# ---------------------------------------------------------------------------------------------- helpers


def _is_image(shape: Sequence[int], dtype: np.dtype) -> bool:
    """``uint8`` with ``(H, W, C)`` per step."""
    return np.dtype(dtype) == np.uint8 and len(shape) == 3


def _is_low_dim(arr: zarr.Array) -> bool:
    return arr.ndim <= 2 and not _is_image(arr.shape[1:], arr.dtype)


def _blosc(zarr_format: int) -> Any:
    """Blosc zstd, clevel 5, bitshuffle: Diffusion Policy's 'disk' compressor, lossless."""
    if zarr_format == 2:
        return numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.BITSHUFFLE)
    return zarr.codecs.BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle")


def _time_chunk(step_shape: Sequence[int], dtype: np.dtype) -> int:
    """Steps per chunk: one frame for images (random access during training), else ~2 MB."""
    if _is_image(step_shape, dtype):
        return 1
    step_bytes = max(1, int(np.prod(step_shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
    return max(1, _CHUNK_BYTES // step_bytes)


def _row_blocks(arr: zarr.Array, start: int, stop: int) -> Iterator[tuple[int, int]]:
    """``[a, b)`` row ranges covering ``[start, stop)``, ~_READ_BLOCK_BYTES each, aligned to time chunks."""
    row_bytes = max(1, int(np.prod(arr.shape[1:], dtype=np.int64)) * arr.dtype.itemsize)
    chunk = arr.chunks[0]
    rows = max(chunk, (_READ_BLOCK_BYTES // row_bytes) // chunk * chunk)
    a = start
    while a < stop:
        b = min(stop, (a // chunk) * chunk + rows)
        yield a, b
        a = b


def _codec_str(codec: Any) -> str:
    if isinstance(codec, Codec):
        cfg = dict(codec.get_config())
        name = cfg.pop("id")
    else:  # a zarr v3 codec
        d = codec.to_dict()
        name, cfg = d["name"], d.get("configuration", {})
    args = ", ".join(f"{k}={v}" for k, v in cfg.items())
    return f"{name}({args})"


def _write_then_publish(arr: zarr.Array, start: int, values: np.ndarray) -> None:
    """Write ``values`` at rows ``[start, start+len)`` first, then grow ``arr``'s stored shape to cover them.

    Growing the shape first (``resize`` then ``arr[...] = ...``) leaves a window in which the metadata
    claims rows whose chunk still holds the fill value or stale data from before a shrink. Writing
    through a view whose in-memory shape is already the new one closes that window: the chunk is
    written (atomically) while the stored shape still hides it, and the metadata write publishes it.
    """
    new_shape = (start + len(values), *arr.shape[1:])
    aa = arr._async_array  # zarr 3 has no public "write beyond shape"; the view never touches the metadata
    view = zarr.Array(type(aa)(dataclasses.replace(aa.metadata, shape=new_shape), aa.store_path, aa.config))
    view[start:] = values
    arr.resize(new_shape)


def _open_root(path: Path, mode: str) -> tuple[zarr.Group, int, zarr.storage.ZipStore | None]:
    """Open ``path`` (directory or zip) as a zarr group, detecting the format from its root metadata."""
    if not path.exists():
        backup = _backup_path(path)
        hint = f" ({backup} exists: an interrupted drop_episodes; rename it back)" if backup.exists() else ""
        raise StoreError(f"{path}: no such file or directory, expected a zarr store{hint}")
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise StoreError(f"{path}: a plain file, not a zarr store (a directory or a .zip)")
        if mode != "r":
            raise StoreError(f"{path}: zip stores are read-only; extract it to a directory to append")
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
        fmt = 3 if "zarr.json" in names else 2 if ".zgroup" in names else None
        if fmt is None:
            raise StoreError(f"{path}: zip without zarr.json or .zgroup at its root: not a zarr store")
        zip_store = zarr.storage.ZipStore(path, mode="r")
        try:
            return _open_group(zip_store, "r", fmt), fmt, zip_store
        except Exception as e:
            zip_store.close()
            raise StoreError(f"{path}: cannot open as a zarr format {fmt} zip: {e}") from e
    fmt = 3 if (path / "zarr.json").is_file() else 2 if (path / ".zgroup").is_file() else None
    if fmt is None:
        raise StoreError(f"{path}: directory without zarr.json or .zgroup: not a zarr store")
    try:
        return _open_group(str(path), "r" if mode == "r" else "r+", fmt), fmt, None
    except Exception as e:
        raise StoreError(f"{path}: cannot open as a zarr format {fmt} group: {e}") from e


def _open_group(store: Any, mode: str, zarr_format: int) -> zarr.Group:
    # Never through consolidated metadata: appends leave it stale, and readers need the real shapes.
    return zarr.open_group(store, mode=mode, zarr_format=zarr_format, use_consolidated=False)


def _backup_path(path: Path) -> Path:
    return path.with_name(path.name + ".drop-backup")


def _create_store(path: Path, zarr_format: int, attrs: Mapping[str, Any]) -> None:
    """Create an empty store at ``path`` atomically: built beside it, then renamed into place."""
    if zarr_format not in (2, 3):
        raise ValueError(f"zarr_format must be 2 or 3, got {zarr_format}")
    tmp = path.with_name(f".{path.name}.creating-{uuid.uuid4().hex[:8]}")
    root = zarr.open_group(str(tmp), mode="w-", zarr_format=zarr_format, attributes=dict(attrs))
    root.require_group("data")
    root.require_group("meta").create_array(
        "episode_ends", shape=(0,), chunks=(1024,), dtype=np.int64, compressors=None, fill_value=0
    )
    os.rename(tmp, path)  # replaces `path` only if it is an empty directory, else raises


# ---------------------------------------------------------------------------------------------- DemoStore


class DemoStore:
    """Episodes of time-first arrays on disk. Open with :meth:`DemoStore.open`.

    Readers see committed steps only: rows ``[0, n_steps)`` of every ``data/<key>`` array.
    """

    def __init__(self, root: zarr.Group, path: Path, zarr_format: int, mode: str, zip_store=None):
        self.path = path
        self.zarr_format = zarr_format
        self.mode = mode
        self._zip_store = zip_store
        self._attach(root)

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r") -> DemoStore:
        """Open a store: a directory (zarr format 2 or 3, detected) or a ``.zip`` (read-only).

        ``mode="a"`` allows appending, dropping and merging; it truncates an uncommitted tail (warning).
        """
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        register_codecs()
        path = Path(path)
        root, fmt, zip_store = _open_root(path, mode)
        try:
            return cls(root, path, fmt, mode, zip_store)
        except BaseException:
            if zip_store is not None:
                zip_store.close()
            raise

    def close(self) -> None:
        if self._zip_store is not None:
            self._zip_store.close()
            self._zip_store = None

    def __enter__(self) -> DemoStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DemoStore({str(self.path)!r}, episodes={self.n_episodes}, steps={self.n_steps})"

    # -- validation on open

    def _attach(self, root: zarr.Group) -> None:
        """Read the group's arrays and episode ends and validate them. The array handles are kept: each
        carries its metadata, so reads do not go back to disk for it."""
        data = root.get("data")
        if not isinstance(data, zarr.Group):
            raise StoreError(f"{self.path}: no 'data' group: not a demonstration store")
        ends_arr = root.get("meta/episode_ends")
        if not isinstance(ends_arr, zarr.Array):
            raise StoreError(f"{self.path}: no meta/episode_ends array: not a demonstration store")
        if ends_arr.ndim != 1 or not np.issubdtype(ends_arr.dtype, np.integer):
            raise StoreError(
                f"{self.path}: meta/episode_ends must be a 1-D integer array, "
                f"got shape {ends_arr.shape} dtype {ends_arr.dtype}"
            )
        self._root, self._data, self._ends_arr = root, data, ends_arr
        self._arrays: dict[str, zarr.Array] = dict(sorted(data.arrays()))
        self._ends = self._read_episode_ends()
        self._check_arrays()

    def _read_episode_ends(self) -> np.ndarray:
        ends = np.asarray(self._ends_arr[:], dtype=np.int64)
        if len(ends) and ends[0] < 0:
            raise StoreError(f"{self.path}: meta/episode_ends starts at {ends[0]} < 0: the store is corrupt")
        bad = np.flatnonzero(np.diff(ends) < 0)
        if len(bad):
            i = int(bad[0]) + 1
            raise StoreError(
                f"{self.path}: meta/episode_ends decreases at episode {i} "
                f"({ends[i - 1]} -> {ends[i]}): the store is corrupt"
            )
        ends.flags.writeable = False
        return ends

    def _check_arrays(self) -> None:
        n = self.n_steps
        tails = {}
        for key, arr in self._arrays.items():
            if arr.ndim == 0:
                raise StoreError(f"{self.path}: array data/{key} is 0-d; data arrays are time-first (T, ...)")
            if arr.shape[0] < n:
                raise StoreError(
                    f"{self.path}: array data/{key} has {arr.shape[0]} steps but meta/episode_ends "
                    f"says {n}: the store is corrupt"
                )
            if arr.shape[0] > n:
                tails[key] = arr.shape[0] - n
        if tails:
            listed = ", ".join(f"data/{k} +{t}" for k, t in tails.items())
            if self.mode == "r":
                message = f"steps past the last committed episode, ignored ({listed})"
            else:
                message = f"truncating uncommitted steps ({listed})"
                for key in tails:
                    self._arrays[key].resize((n, *self._arrays[key].shape[1:]))
            warnings.warn(
                f"{self.path}: {message}: an episode was being written when its writer stopped",
                StoreWarning,
                stacklevel=5,
            )
        if self._arrays:
            named = [self.action_key] if self.attrs.get("action_key") else []
            named += list(self.attrs.get("obs_keys") or [])
            if missing := [k for k in named if k not in self._arrays]:
                raise StoreError(f"{self.path}: root attributes name {missing} but data/ holds {self.keys}")

    # -- episodes

    @property
    def episode_ends(self) -> np.ndarray:
        """``(E,)`` int64, cumulative end row of each committed episode (read-only)."""
        return self._ends

    @property
    def n_episodes(self) -> int:
        return len(self._ends)

    @property
    def n_steps(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    @property
    def episode_lengths(self) -> np.ndarray:
        """``(E,)`` int64."""
        return np.diff(self._ends, prepend=0)

    def episode_slice(self, i: int) -> slice:
        """Rows of episode ``i`` (negative counts from the end)."""
        n = self.n_episodes
        if not -n <= i < n:
            raise IndexError(f"{self.path}: episode {i} out of range, the store has {n} episodes")
        i %= n
        return slice(int(self._ends[i - 1]) if i > 0 else 0, int(self._ends[i]))

    # -- keys and schema

    @property
    def keys(self) -> list[str]:
        """Every array under ``data/``, sorted."""
        return list(self._arrays)

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self._root.attrs)

    @property
    def action_key(self) -> str:
        return self.attrs.get("action_key") or "action"

    @property
    def obs_keys(self) -> list[str]:
        """From the schema attributes, else every data key except the action and ``timestamp``."""
        keys = self.attrs.get("obs_keys")
        if keys is not None:
            return list(keys)
        return [k for k in self.keys if k not in (self.action_key, "timestamp")]

    @property
    def action_semantics(self) -> str:
        return self.attrs.get("action_semantics") or "unknown"

    @property
    def control_rate_hz(self) -> float | None:
        return self.attrs.get("control_rate_hz")

    def set_attrs(self, **kw: Any) -> None:
        """Update root attributes (JSON-serialisable values)."""
        self._require_append("set_attrs")
        self._root.attrs.update(kw)

    # -- reading

    def array(self, key: str) -> zarr.Array:
        """The zarr array ``data/<key>``. Rows past :attr:`n_steps` are not committed."""
        if key not in self._arrays:
            raise StoreError(f"{self.path}: no array data/{key}; available: {self.keys}")
        return self._arrays[key]

    def episode(self, i: int, keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Episode ``i`` as ``{key: (L, ...)}``."""
        s = self.episode_slice(i)
        return {k: self.array(k)[s] for k in (self.keys if keys is None else keys)}

    def iter_episodes(self, keys: Sequence[str] | None = None) -> Iterator[dict[str, np.ndarray]]:
        for i in range(self.n_episodes):
            yield self.episode(i, keys)

    def load(
        self, keys: Sequence[str] | None = None, episodes: Sequence[int] | None = None
    ) -> dict[str, np.ndarray]:
        """Committed steps in memory as ``{key: (N, ...)}``.

        With ``episodes``, only those episodes, concatenated in the given order; their episode ends are
        ``np.cumsum(store.episode_lengths[episodes])``.
        """
        keys = self.keys if keys is None else list(keys)
        if episodes is None:
            return {k: self.array(k)[: self.n_steps] for k in keys}
        slices: list[slice] = []
        for i in episodes:  # consecutive episodes are one read
            s = self.episode_slice(int(i))
            if slices and slices[-1].stop == s.start:
                slices[-1] = slice(slices[-1].start, s.stop)
            else:
                slices.append(s)
        out = {}
        for k in keys:
            arr = self.array(k)
            parts = [arr[s] for s in slices]
            out[k] = np.concatenate(parts) if parts else np.zeros((0, *arr.shape[1:]), arr.dtype)
        return out

    def stats(self, key: str) -> dict[str, np.ndarray]:
        """``min``, ``max``, ``mean``, ``std`` (population) per dimension of the last axis, over committed
        steps, as float32 arrays shaped like the last axis (``()`` for a scalar per step).

        Read in blocks and merged with Chan's parallel update, so a store larger than memory works.
        """
        arr = self.array(key)
        if self.n_steps == 0:
            raise StoreError(f"{self.path}: no committed steps, cannot compute stats of data/{key}")
        dim = arr.shape[-1] if arr.ndim > 1 else 1
        count, mean, m2 = 0, np.zeros(dim), np.zeros(dim)
        lo, hi = np.full(dim, np.inf), np.full(dim, -np.inf)
        for a, b in _row_blocks(arr, 0, self.n_steps):
            x = np.asarray(arr[a:b], dtype=np.float64).reshape(-1, dim)
            bmean = x.mean(axis=0)
            bm2 = ((x - bmean) ** 2).sum(axis=0)
            delta, n = bmean - mean, count + len(x)
            mean = mean + delta * len(x) / n
            m2 = m2 + bm2 + delta**2 * count * len(x) / n
            count = n
            lo, hi = np.minimum(lo, x.min(axis=0)), np.maximum(hi, x.max(axis=0))
        shape = arr.shape[-1:] if arr.ndim > 1 else ()
        out = {"min": lo, "max": hi, "mean": mean, "std": np.sqrt(m2 / count)}
        return {k: v.astype(np.float32).reshape(shape) for k, v in out.items()}

    def check_finite(self, keys: Sequence[str] | None = None) -> None:
        """Raise :class:`StoreError` at the first NaN/inf of each key (default: the action)."""
        for key in [self.action_key] if keys is None else keys:
            arr = self.array(key)
            if not np.issubdtype(arr.dtype, np.inexact):
                continue  # integers and bools are always finite
            for a, b in _row_blocks(arr, 0, self.n_steps):
                bad = ~np.isfinite(arr[a:b].reshape(b - a, -1)).all(axis=1)
                if bad.any():
                    row = a + int(np.argmax(bad))
                    ep = int(np.searchsorted(self._ends, row, side="right"))
                    step = row - (int(self._ends[ep - 1]) if ep > 0 else 0)
                    value = arr[row][~np.isfinite(arr[row])].flat[0]
                    raise StoreError(
                        f"{self.path}: data/{key} holds {value} at episode {ep}, step {step} (row {row})"
                    )

    # -- appending (mode "a")

    def _require_append(self, what: str) -> None:
        if self.mode != "a":
            raise StoreError(f"{self.path}: opened read-only; open with mode='a' to {what}")

    def _layout(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """``{key: (step_shape, dtype)}`` of the data arrays."""
        return {k: (tuple(a.shape[1:]), np.dtype(a.dtype)) for k, a in self._arrays.items()}

    def _check_layout(self, layout: Mapping[str, tuple[tuple[int, ...], np.dtype]], source: str) -> None:
        """Refuse episodes whose keys, per-step shapes or dtypes differ from the store's arrays."""
        ours = self._layout()
        if not ours:
            return
        if set(layout) != set(ours):
            raise StoreError(
                f"{self.path}: {source} has keys {sorted(layout)} but the store has {sorted(ours)} "
                f"(missing: {sorted(set(ours) - set(layout))}, extra: {sorted(set(layout) - set(ours))})"
            )
        for k, (shape, dtype) in layout.items():
            if (shape, dtype) != ours[k]:
                raise StoreError(
                    f"{self.path}: data/{k} holds steps of shape {ours[k][0]} {ours[k][1]}, "
                    f"but {source} gives {shape} {dtype}"
                )

    def _create_arrays(self, layout: Mapping[str, tuple[tuple[int, ...], np.dtype]]) -> None:
        """First episode into an empty store: one array per key. Everything is checked before anything
        is created, so a refused episode leaves the store empty rather than half-laid-out."""
        for k, (_, dtype) in layout.items():
            if dtype.kind not in "biuf":
                raise StoreError(f"{self.path}: data/{k} has dtype {dtype}; a store holds numbers and bools")
        schema = "schema_version" in self.attrs  # a store we created names its keys in its attributes
        if schema:
            named = [self.action_key, *(self.attrs.get("obs_keys") or [])]
            if missing := [k for k in named if k not in layout]:
                raise StoreError(
                    f"{self.path}: root attributes name {missing}, "
                    f"not among the episode's keys {sorted(layout)}"
                )
        for k, (shape, dtype) in sorted(layout.items()):
            self._arrays[k] = self._data.create_array(
                k,
                shape=(0, *shape),
                chunks=(_time_chunk(shape, dtype), *shape),
                dtype=dtype,
                compressors=_blosc(self.zarr_format),
                fill_value=0,
            )
        if schema and self.attrs.get("obs_keys") is None:
            obs_keys = [k for k in sorted(layout) if k not in (self.action_key, "timestamp")]
            self.set_attrs(obs_keys=obs_keys)

    def _append_rows(self, episode: Mapping[str, np.ndarray]) -> int:
        """Step 1 of a commit: write the rows after the committed steps. Returns the new step count."""
        start = self.n_steps
        for k, x in episode.items():
            arr = self._arrays[k]
            arr.resize((start + len(x), *arr.shape[1:]))
            arr[start:] = x
        return start + len(next(iter(episode.values())))

    def _publish_ends(self, ends: np.ndarray) -> None:
        """Step 2 of a commit: make the new episodes visible."""
        old = len(self._ends)
        _write_then_publish(self._ends_arr, old, np.asarray(ends[old:], dtype=np.int64))
        ends = np.asarray(ends, dtype=np.int64).copy()
        ends.flags.writeable = False
        self._ends = ends

    def _append_episode(self, episode: Mapping[str, np.ndarray]) -> int:
        """Validate and commit one episode ``{key: (L, ...)}``; returns its index."""
        self._require_append("append episodes")
        lengths = {k: len(v) for k, v in episode.items()}
        if not episode or min(lengths.values()) == 0:
            raise StoreError(f"{self.path}: refusing to commit an empty episode")
        if len(set(lengths.values())) != 1:
            raise StoreError(f"{self.path}: episode arrays differ in length: {lengths}")
        layout = {k: (tuple(v.shape[1:]), np.dtype(v.dtype)) for k, v in episode.items()}
        self._check_layout(layout, "the episode")
        if not self.keys:
            self._create_arrays(layout)
        n = self._append_rows(episode)
        self._publish_ends(np.append(self._ends, n))
        return self.n_episodes - 1

    def merge(self, other_path: str | os.PathLike) -> None:
        """Append every committed episode of another store with the same keys, shapes and dtypes.

        All episodes become visible at once (one ``episode_ends`` update at the end).
        """
        self._require_append("merge")
        other_path = Path(other_path)
        if other_path.resolve() == self.path.resolve():
            raise StoreError(f"{self.path}: cannot merge a store into itself")
        with DemoStore.open(other_path, "r") as other:
            if other.n_episodes == 0:
                return
            for attr in ("action_key", "action_semantics"):
                ours, theirs = getattr(self, attr), getattr(other, attr)
                if ours != theirs and "unknown" not in (ours, theirs):
                    raise StoreError(f"{self.path}: {attr} is {ours!r} but {other_path} has {theirs!r}")
            self._check_layout(other._layout(), f"{other_path}")
            if not self.keys:
                self._create_arrays(other._layout())
            start, m = self.n_steps, other.n_steps
            for k in other.keys:
                src, dst = other.array(k), self._arrays[k]
                dst.resize((start + m, *dst.shape[1:]))
                for a, b in _row_blocks(dst, start, start + m):
                    dst[a:b] = src[a - start : b - start]
            self._publish_ends(np.concatenate([self._ends, other.episode_ends + start]))
            merged = list(self.attrs.get("merged_from", []))
            merged.append({"path": str(other_path), "episodes": other.n_episodes})
            self.set_attrs(merged_from=merged)

    def drop_episodes(self, indices: Sequence[int]) -> None:
        """Remove episodes. The store is rewritten beside itself and swapped in, so a crash leaves either
        the old store or, between the two renames, a ``<path>.drop-backup`` copy that ``open`` points to.
        """
        self._require_append("drop episodes")
        n = self.n_episodes
        drop = {int(i) % n if -n <= int(i) < n else int(i) for i in indices}
        if out := sorted(i for i in drop if not 0 <= i < n):
            raise IndexError(f"{self.path}: episodes {out} out of range, the store has {n} episodes")
        extra = [k for k in self._root["meta"].array_keys() if k != "episode_ends"]
        if extra:
            raise StoreError(f"{self.path}: meta/ holds {extra}; dropping episodes would misalign them")
        keep = [i for i in range(n) if i not in drop]
        slices = [self.episode_slice(i) for i in keep]
        new_ends = np.cumsum([s.stop - s.start for s in slices], dtype=np.int64)

        backup = _backup_path(self.path)
        if backup.exists():
            raise StoreError(f"{self.path}: {backup} is left from an interrupted drop_episodes; remove it")
        tmp = self.path.with_name(f".{self.path.name}.dropping-{uuid.uuid4().hex[:8]}")
        try:
            self._write_copy(tmp, slices, new_ends)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        os.rename(self.path, backup)
        os.rename(tmp, self.path)
        shutil.rmtree(backup)
        self._attach(_open_group(str(self.path), "r+", self.zarr_format))

    def _write_copy(self, dest: Path, slices: Sequence[slice], ends: np.ndarray) -> None:
        """A new store at ``dest`` holding ``slices`` of every array, with the same attributes, chunks
        and codecs, and ``ends`` as its episode ends."""
        root = zarr.open_group(str(dest), mode="w-", zarr_format=self.zarr_format, attributes=self.attrs)
        data = root.require_group("data")
        for k, src in self._arrays.items():
            attributes = dict(src.attrs)
            dst = zarr.from_array(data.store_path, name=k, data=src, write_data=False, attributes=attributes)
            dst.resize((int(ends[-1]) if len(ends) else 0, *src.shape[1:]))
            row = 0
            for s in slices:
                for a, b in _row_blocks(src, s.start, s.stop):
                    dst[row : row + b - a] = src[a:b]
                    row += b - a
        root.require_group("meta").create_array(
            "episode_ends", data=ends, chunks=(1024,), compressors=None, fill_value=0
        )

    # -- reporting and export

    def summary(self) -> str:
        """Human-readable description: layout, episodes, arrays, attributes, low-dim statistics."""
        kind = "zip" if self._zip_store is not None else "directory"
        lengths = self.episode_lengths
        lines = [
            f"store     {self.path} (zarr format {self.zarr_format}, {kind}, mode {self.mode!r})",
            f"episodes  {self.n_episodes}, steps {self.n_steps}"
            + (
                f" (length min {lengths.min()} / mean {lengths.mean():.1f} / max {lengths.max()})"
                if len(lengths)
                else ""
            ),
            f"action    {self.action_key} (semantics {self.action_semantics}), "
            f"control rate {self.control_rate_hz or '?'} Hz",
            f"obs       {', '.join(self.obs_keys)}",
            "arrays",
        ]
        width = max((len(k) for k in self.keys), default=0) + 5
        for k in self.keys:
            arr = self._arrays[k]
            codecs = [*arr.filters, *arr.compressors]
            lines.append(
                f"  {'data/' + k:<{width}} {str(arr.shape):<20} {str(arr.dtype):<8} "
                f"chunks {str(arr.chunks):<20} {', '.join(map(_codec_str, codecs)) or 'uncompressed'}"
            )
        attrs = self.attrs
        if attrs:
            lines.append("attrs")
            lines += [f"  {k}: {v}" for k, v in sorted(attrs.items())]
        low_dim = [k for k in self.keys if _is_low_dim(self._arrays[k])] if self.n_steps else []
        if low_dim:
            lines.append("stats (committed steps, per dimension)")
            fmt = dict(precision=3, max_line_width=10**6, threshold=12, edgeitems=4)
            for k in low_dim:
                st = self.stats(k)
                lines.append(
                    f"  {'data/' + k:<{width}} "
                    + "  ".join(f"{s} {np.array2string(st[s], **fmt)}" for s in ("min", "max", "mean"))
                )
        return "\n".join(lines)

    def export_zip(self, dest: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write a read-only ``.zip`` copy (entries uncompressed: chunks are compressed already).

        The files are copied as they are, so an uncommitted tail (mode ``"r"`` only) travels along and
        is ignored by readers as usual.
        """
        dest = Path(dest)
        if dest.exists() and not overwrite:
            raise FileExistsError(f"{dest} exists; pass overwrite=True to replace it")
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.partial")
        if self._zip_store is not None:
            shutil.copyfile(self.path, tmp)
        else:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
                for f in sorted(self.path.rglob("*")):
                    if f.is_file() and not f.name.endswith(".partial"):  # zarr's own in-flight writes
                        zf.write(f, f.relative_to(self.path).as_posix())
        os.replace(tmp, dest)  # a reader never finds a half-written zip at dest
        return dest


# ---------------------------------------------------------------------------------------------- writer


class EpisodeWriter:
    """Append episodes to a store, creating it if absent.

    ::

        with EpisodeWriter("demos.zarr", attrs={"action_semantics": "ee_delta", "expert": "scripted"}) as w:
            for t in range(T):
                w.add_step({"state": s, "action": a, "timestamp": t * dt})
            w.commit()          # or w.discard() for a failed attempt

    ``zarr_format`` applies only when the store is created; an existing store keeps its format. Opening an
    existing store truncates an uncommitted tail (warning). ``attrs`` are merged into the root attributes;
    the schema ones (``action_key``, ``obs_keys``, ``action_semantics``, ``control_rate_hz``) must agree with
    what an existing store says.
    """

    def __init__(self, path: str | os.PathLike, zarr_format: int = 3, attrs: Mapping[str, Any] | None = None):
        path = Path(path)
        attrs = dict(attrs or {})
        if not path.exists() or (path.is_dir() and not any(path.iterdir())):
            defaults = {
                "schema_version": SCHEMA_VERSION,
                "action_key": "action",
                "obs_keys": None,
                "action_semantics": "unknown",
                "control_rate_hz": None,
            }
            _create_store(path, zarr_format, {**defaults, **attrs})
            self.store = DemoStore.open(path, "a")
        else:
            self.store = DemoStore.open(path, "a")
            existing = self.store.attrs
            for k in _SCHEMA_KEYS:
                if k in attrs and existing.get(k) is not None and existing[k] != attrs[k]:
                    raise StoreError(
                        f"{path}: the store has {k}={existing[k]!r}, the writer was given {attrs[k]!r}"
                    )
            if attrs:
                self.store.set_attrs(**attrs)
        self._steps: list[dict[str, np.ndarray]] = []

    @property
    def path(self) -> Path:
        return self.store.path

    @property
    def n_episodes(self) -> int:
        return self.store.n_episodes

    @property
    def n_buffered(self) -> int:
        """Steps of the open episode."""
        return len(self._steps)

    def set_attrs(self, **kw: Any) -> None:
        self.store.set_attrs(**kw)

    def add_step(self, step: Mapping[str, Any]) -> None:
        """Buffer one step ``{key: per-step array}``; every step of an episode has the same keys."""
        step = {k: np.asarray(v) for k, v in step.items()}
        if self._steps and step.keys() != self._steps[0].keys():
            raise StoreError(
                f"{self.path}: step {len(self._steps)} has keys {sorted(step)}, "
                f"the episode's first step had {sorted(self._steps[0])}"
            )
        self._steps.append(step)

    def commit(self) -> int:
        """Write the buffered episode atomically; returns its index."""
        if not self._steps:
            raise StoreError(f"{self.path}: refusing to commit an empty episode")
        try:
            episode = {k: np.stack([s[k] for s in self._steps]) for k in self._steps[0]}
        except ValueError as e:
            raise StoreError(f"{self.path}: steps of the open episode differ in shape: {e}") from e
        self._steps = []
        return self.store._append_episode(episode)

    def discard(self) -> None:
        """Drop the buffered steps."""
        self._steps = []

    def add_episode(self, episode: Mapping[str, Any]) -> int:
        """Commit a whole episode ``{key: (L, ...)}``; returns its index."""
        if self._steps:
            raise StoreError(
                f"{self.path}: {len(self._steps)} steps are buffered; commit or discard them first"
            )
        return self.store._append_episode({k: np.asarray(v) for k, v in episode.items()})

    def close(self) -> None:
        if self._steps:
            warnings.warn(
                f"{self.path}: closing with {len(self._steps)} uncommitted steps; they are dropped",
                StoreWarning,
                stacklevel=2,
            )
            self._steps = []
        self.store.close()

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
