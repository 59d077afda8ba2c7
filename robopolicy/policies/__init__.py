"""Policy registry: `--policy NAME` resolves here.

Each name maps to the module that defines it; the module is imported on first use, so adding a policy
family is adding its file and one line below.
"""

import importlib

from robopolicy.policies.base import Policy, PolicyConfig
from robopolicy.policies.diffusion import DiffusionConfig, DiffusionPolicy

POLICY_MODULES = {
    "diffusion": "robopolicy.policies.diffusion",
    "flow": "robopolicy.policies.flow",
    "seed": "robopolicy.policies.seed",
    "ebt": "robopolicy.policies.ebt",
    "diffuser3d": "robopolicy.policies.diffuser3d",
}


def _find_module(name: str):
    try:
        return importlib.import_module(POLICY_MODULES[name])
    except ModuleNotFoundError as e:
        if e.name == POLICY_MODULES[name]:
            return None  # reserved in the user-facing contract, not built yet
        raise


def available_policies() -> list[str]:
    return [name for name in POLICY_MODULES if _find_module(name) is not None]


def get_policy_class(name: str) -> type[Policy]:
    if name not in POLICY_MODULES:
        raise ValueError(f"unknown policy '{name}'; available: {available_policies()}")
    module = _find_module(name)
    if module is None:
        raise ValueError(f"policy '{name}' is planned but not implemented yet; available: {available_policies()}")
    for value in vars(module).values():
        if isinstance(value, type) and issubclass(value, Policy) and value.__dict__.get("name") == name:
            return value
    raise ImportError(f"{POLICY_MODULES[name]} defines no Policy subclass with name = '{name}'")


def build_config(name: str, preset: str, obs_shapes: dict, action_dim: int, **overrides) -> PolicyConfig:
    """Policy config from a named preset, filled with the store's shapes, then explicit overrides."""
    cls = get_policy_class(name)
    if preset not in cls.presets:
        raise ValueError(f"policy '{name}' has no config '{preset}'; choose one of {sorted(cls.presets)}")
    entry = cls.presets[preset]
    values = dict(entry["policy"])
    if any(k.startswith("image_") for k in obs_shapes):
        values.update(entry.get("image", {}).get("policy", {}))
    values.update(obs_shapes={k: list(v) for k, v in obs_shapes.items()}, action_dim=action_dim, **overrides)
    return cls.config_class(**values)


def preset_train_overrides(name: str, preset: str, has_images: bool) -> dict:
    entry = get_policy_class(name).presets[preset]
    values = dict(entry["train"])
    if has_images:
        values.update(entry.get("image", {}).get("train", {}))
    return values


__all__ = ["POLICY_MODULES", "Policy", "PolicyConfig", "DiffusionConfig", "DiffusionPolicy", "available_policies",
           "get_policy_class", "build_config", "preset_train_overrides"]
