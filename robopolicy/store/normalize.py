"""Per-key affine normalisation, ``y = x * scale + offset`` over the last (feature) axis.

Modes:

- ``minmax``: ``[min, max] -> [-1, 1]``. Dimensions whose range is below 1e-4 are only shifted, their
  minimum to 0, since scaling a near-constant would blow noise up (Diffusion Policy's ``limits`` mode).
- ``gaussian``: ``(x - mean) / std``, std floored at 1e-6.
- ``image``: ``uint8 [0, 255] -> [-1, 1]``, no statistics.

A Normalizer is plain data; ``to_dict()`` is JSON and travels in a checkpoint's ``config.json``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["MODES", "Normalizer", "UnknownKeyError"]

MODES = ("minmax", "gaussian", "image")
_RANGE_EPS = 1e-4
_STD_EPS = 1e-6


class UnknownKeyError(KeyError):
    """A key the normalizer has no parameters for. Never passed through silently."""

    def __str__(self) -> str:  # KeyError would print the message with quotes
        return str(self.args[0])


class Normalizer:
    """Affine normalisers per key, for numpy arrays or torch tensors.

    Args:
        params: ``{key: {"mode": str, "scale": array, "offset": array, "stats": {name: array} | None}}``.
            Usually built by :meth:`from_store_stats` or :meth:`from_dict`.
    """

    def __init__(self, params: Mapping[str, Mapping[str, Any]]):
        self._params: dict[str, dict[str, Any]] = {}
        for key, p in params.items():
            if p["mode"] not in MODES:
                raise ValueError(f"normalizer key {key!r}: unknown mode {p['mode']!r}, expected {MODES}")
            stats = p.get("stats")
            self._params[key] = {
                "mode": p["mode"],
                "scale": np.asarray(p["scale"], dtype=np.float32),
                "offset": np.asarray(p["offset"], dtype=np.float32),
                "stats": None if stats is None else {s: np.asarray(v, np.float32) for s, v in stats.items()},
            }
        self._cache: dict[tuple[str, torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_store_stats(
        cls, stats: Mapping[str, Mapping[str, Any]], modes: Mapping[str, str] | None = None
    ) -> Normalizer:
        """From ``{key: {"min", "max", "mean", "std"}}`` (as ``DemoStore.stats``) and ``{key: mode}``.

        Keys with statistics default to ``minmax``; ``image`` keys need no statistics.
        """
        modes = dict(modes or {})
        params = {}
        for key in sorted({*stats, *modes}):
            mode = modes.get(key, "minmax")
            if mode == "image":
                params[key] = {"mode": mode, "scale": 2.0 / 255.0, "offset": -1.0, "stats": None}
                continue
            if key not in stats:
                raise ValueError(f"normalizer key {key!r}: mode {mode!r} needs statistics, none given")
            st = {s: np.asarray(stats[key][s], dtype=np.float64) for s in ("min", "max", "mean", "std")}
            if mode == "minmax":
                lo, hi = st["min"], st["max"]
                flat = (hi - lo) < _RANGE_EPS
                scale = np.where(flat, 1.0, 2.0 / np.where(flat, 1.0, hi - lo))
                offset = np.where(flat, -lo, -1.0 - scale * lo)
            elif mode == "gaussian":
                scale = 1.0 / np.maximum(st["std"], _STD_EPS)
                offset = -st["mean"] * scale
            else:
                raise ValueError(f"normalizer key {key!r}: unknown mode {mode!r}, expected one of {MODES}")
            params[key] = {"mode": mode, "scale": scale, "offset": offset, "stats": st}
        return cls(params)

    # -- lookup

    @property
    def keys(self) -> list[str]:
        """The normalised keys, sorted (a property, like ``DemoStore.keys``)."""
        return sorted(self._params)

    def __contains__(self, key: str) -> bool:
        return key in self._params

    def _get(self, key: str) -> dict[str, Any]:
        if key not in self._params:
            raise UnknownKeyError(f"normalizer has no key {key!r}; known keys: {self.keys}")
        return self._params[key]

    def mode(self, key: str) -> str:
        return self._get(key)["mode"]

    def stats(self, key: str) -> dict[str, np.ndarray] | None:
        """The statistics the key was fitted on (None for images)."""
        return self._get(key)["stats"]

    # -- applying

    def normalize(self, key: str, x: np.ndarray | torch.Tensor, out: torch.Tensor | None = None
                  ) -> np.ndarray | torch.Tensor:
        """``x (..., D)`` -> normalised; integer input becomes float32, float input keeps its dtype.

        A tensor is normalised into ``out`` when given (tensors only; it may be ``x`` itself). An integer
        tensor (a uint8 image) is first cast into the float destination and then scaled there in place: aten's
        mixed-dtype arithmetic casts element by element, 2-3x slower than a cast followed by a float op.
        """
        if not isinstance(x, torch.Tensor):
            if out is not None:
                raise TypeError(f"normalizer key {key!r}: out= needs a torch tensor, got {type(x).__name__}")
            x = _as_float(x)
            scale, offset = self._affine(key, x)
            return x * scale + offset
        dtype = x.dtype if x.is_floating_point() else torch.float32
        scale, offset = self._affine(key, x, dtype)
        if not x.is_floating_point():
            x = x.to(dtype) if out is None else out.copy_(x)
        p = self._params[key]
        if p["scale"].ndim == 0:  # one scale for all entries (images): offset + scale·x, scale a Python float
            return torch.add(offset, x, alpha=float(p["scale"]), out=out)
        return torch.addcmul(offset, x, scale, out=out)

    def unnormalize(self, key: str, x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        x = _as_float(x)
        scale, offset = self._affine(key, x)
        return (x - offset) / scale

    def _affine(self, key: str, x: np.ndarray | torch.Tensor, dtype: torch.dtype | None = None
                ) -> tuple[Any, Any]:
        """``scale, offset`` in ``x``'s float dtype, or ``dtype`` (and ``x``'s device)."""
        p = self._get(key)
        shape = p["scale"].shape
        if shape and tuple(x.shape[-len(shape) :]) != shape:
            raise ValueError(f"normalizer key {key!r} expects (..., {shape[-1]}), got shape {tuple(x.shape)}")
        if isinstance(x, torch.Tensor):
            dtype = dtype or x.dtype
            slot = (key, x.device, dtype)
            if slot not in self._cache:
                # Built once per device/dtype: normalising a batch must not re-create the tensors.
                self._cache[slot] = (
                    torch.as_tensor(p["scale"], dtype=dtype, device=x.device),
                    torch.as_tensor(p["offset"], dtype=dtype, device=x.device),
                )
            return self._cache[slot]
        return p["scale"].astype(x.dtype), p["offset"].astype(x.dtype)

    # -- serialisation

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable parameters (floats in lists)."""

        def lst(a: np.ndarray) -> Any:
            return np.asarray(a, dtype=np.float32).tolist()

        return {
            "format": 1,
            "keys": {
                k: {
                    "mode": p["mode"],
                    "scale": lst(p["scale"]),
                    "offset": lst(p["offset"]),
                    "stats": None if p["stats"] is None else {s: lst(v) for s, v in p["stats"].items()},
                }
                for k, p in sorted(self._params.items())
            },
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Normalizer:
        if d.get("format") != 1 or "keys" not in d:
            raise ValueError(f"not a normalizer dict (format {d.get('format')!r}, keys {sorted(d)})")
        return cls(d["keys"])

    def __repr__(self) -> str:
        modes = ", ".join(f"{k}: {p['mode']}" for k, p in sorted(self._params.items()))
        return f"Normalizer({modes})"


def _as_float(x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x if x.is_floating_point() else x.float()
    x = np.asarray(x)
    return x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float32)
