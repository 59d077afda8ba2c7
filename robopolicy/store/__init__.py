"""Demonstration store (zarr, Diffusion Policy layout), training windows and normalisation.

The store itself imports without torch, so ``robopolicy info`` and writer processes start fast;
the torch-facing parts (windows, normalizer) load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from robopolicy.store.zarr_store import (
    SCHEMA_VERSION,
    DemoStore,
    EpisodeWriter,
    StoreError,
    StoreWarning,
    register_codecs,
)

if TYPE_CHECKING:
    from robopolicy.store.normalize import MODES, Normalizer, UnknownKeyError
    from robopolicy.store.windows import WindowDataset, WindowSampler, split_episodes

_LAZY = {
    "MODES": "normalize",
    "Normalizer": "normalize",
    "UnknownKeyError": "normalize",
    "WindowDataset": "windows",
    "WindowSampler": "windows",
    "split_episodes": "windows",
}

__all__ = [
    "MODES",
    "SCHEMA_VERSION",
    "DemoStore",
    "EpisodeWriter",
    "Normalizer",
    "StoreError",
    "StoreWarning",
    "UnknownKeyError",
    "WindowDataset",
    "WindowSampler",
    "register_codecs",
    "split_episodes",
]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
