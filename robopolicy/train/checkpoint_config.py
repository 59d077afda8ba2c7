"""A checkpoint's config.json, read with ``json`` alone: no torch, no model code.

What a deployment checks before it loads any weights (the observation keys, the action semantics and
dimension, the normaliser's statistics) is in config.json. Reading it here, rather than through
:mod:`robopolicy.train.checkpoint` (which imports torch and safetensors), makes a refusal instant:
the ROS policy node says no in well under a second on a robot's small computer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

FORMAT = "robopolicy-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    pass


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint dir, or a run dir (then `best/` if evaluation ran, else `latest/`)."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    for child in ("best", "latest"):
        if (path / child / "config.json").is_file():
            return path / child
    raise CheckpointError(f"{path} is not a checkpoint: no config.json in it, nor in {path}/best or {path}/latest")


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's config.json as a dict; CheckpointError if it is not one of ours."""
    path = resolve_checkpoint(path)
    try:
        config = json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}/config.json is not valid JSON: {e}") from e
    if config.get("format") != FORMAT:
        raise CheckpointError(f"{path}/config.json is not a robopolicy checkpoint (format={config.get('format')!r})")
    return config
