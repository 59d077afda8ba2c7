"""Checkpoints as directories: config.json + model.safetensors (+ training state). Nothing is unpickled.

    <ckpt>/config.json                 policy name and config, normaliser statistics, action semantics,
                                       observation keys, training config and provenance
    <ckpt>/model.safetensors           "model.*" live weights and "ema.*" EMA weights
    <ckpt>/training_state.safetensors  optimiser moments (to resume), flattened to tensors
    <ckpt>/training_state.json         step, optimiser param groups, LR schedule, RNG seeds

A training run directory holds `latest/` and, when evaluation ran, `best/`.
"""

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from robopolicy.policies import Policy, get_policy_class
from robopolicy.store import Normalizer
# config.json alone, torch-free (what a deployment reads before deciding to load weights); re-exported here
from robopolicy.train.checkpoint_config import (FORMAT, FORMAT_VERSION, CheckpointError,  # noqa: F401
                                                read_config, resolve_checkpoint)


def save_checkpoint(directory: str | os.PathLike, policy: Policy, normalizer: Normalizer, meta: dict[str, Any],
                    ema_state: dict[str, torch.Tensor] | None = None,
                    optimizer: torch.optim.Optimizer | None = None, training_state: dict | None = None) -> Path:
    """Writes into a temporary sibling and renames it into place, so a crash never leaves half a checkpoint."""
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "policy": policy.name,
        "policy_config": policy.config.to_dict(),
        "normalizer": normalizer.to_dict(),
        "param_count": sum(p.numel() for p in policy.parameters()),
        **meta,
    }
    (tmp / "config.json").write_text(json.dumps(config, indent=2, default=_json_default))
    tensors = {f"model.{k}": v for k, v in policy.state_dict().items()}
    if ema_state is not None:
        tensors.update({f"ema.{k}": v for k, v in ema_state.items()})
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp / "model.safetensors")
    if optimizer is not None:
        _save_optimizer(tmp, optimizer, training_state or {})
    if directory.exists():
        old = directory.with_name(directory.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        directory.rename(old)
        tmp.rename(directory)
        shutil.rmtree(old)
    else:
        tmp.rename(directory)
    return directory


def load_policy(path: str | os.PathLike, device: str | torch.device = "cpu", use_ema: bool = True,
                expect_policy: str | None = None, expect_action_dim: int | None = None
                ) -> tuple[Policy, Normalizer, dict[str, Any]]:
    """Builds the policy from config.json and loads weights from safetensors (EMA weights when present)."""
    path = resolve_checkpoint(path)
    config = read_config(path)
    name = config["policy"]
    if expect_policy is not None and name != expect_policy:
        raise CheckpointError(f"{path} holds a '{name}' policy, not '{expect_policy}'")
    cls = get_policy_class(name)
    policy_config = cls.config_class.from_dict(config["policy_config"])
    if expect_action_dim is not None and policy_config.action_dim != expect_action_dim:
        raise CheckpointError(f"{path} predicts {policy_config.action_dim}-d actions, but {expect_action_dim}-d "
                              "are needed here")
    policy = cls(policy_config)
    tensors = load_file(path / "model.safetensors", device=str(device))
    prefix = "ema." if use_ema and any(k.startswith("ema.") for k in tensors) else "model."
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    missing, unexpected = policy.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}/model.safetensors does not match its config.json: "
                              f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    policy.to(device)
    return policy, Normalizer.from_dict(config["normalizer"]), config


def load_training_state(path: str | os.PathLike, policy: Policy, optimizer: torch.optim.Optimizer
                        ) -> tuple[dict[str, torch.Tensor] | None, dict]:
    """Restores live weights and optimiser moments in place; returns (EMA weights or None, training_state)."""
    path = Path(path)
    tensors = load_file(path / "model.safetensors")
    policy.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    ema = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")} or None
    state_json = json.loads((path / "training_state.json").read_text())
    moments = load_file(path / "training_state.safetensors")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if "rng.torch" in moments:
        torch.set_rng_state(moments.pop("rng.torch"))
    per_param = {}
    for key, value in moments.items():
        index, name = key.split(".", 1)
        per_param.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({
        "state": {i: per_param[i] for i in range(len(params)) if i in per_param},
        "param_groups": state_json["param_groups"],
    })
    return ema, state_json["training_state"]


def _save_optimizer(directory: Path, optimizer: torch.optim.Optimizer, training_state: dict) -> None:
    state = optimizer.state_dict()
    moments = {f"{i}.{name}": t.detach().cpu().contiguous()
               for i, s in state["state"].items() for name, t in s.items() if torch.is_tensor(t)}
    # The noise stream too, so an interrupted run resumes bit for bit where it stopped.
    moments["rng.torch"] = torch.get_rng_state()
    save_file(moments, directory / "training_state.safetensors")
    payload = {"param_groups": state["param_groups"], "training_state": training_state}
    (directory / "training_state.json").write_text(json.dumps(payload, default=_json_default))


def _json_default(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint's JSON")
