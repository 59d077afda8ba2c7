"""Policy registry: `--policy NAME` resolves here."""

from robopolicy.policies.base import Policy, PolicyConfig
from robopolicy.policies.diffusion import DiffusionConfig, DiffusionPolicy

POLICIES: dict[str, type[Policy]] = {cls.name: cls for cls in (DiffusionPolicy,)}
# Names the user-facing contract reserves for families that are not built yet.
PLANNED = ("flow", "seed", "ebt", "diffuser3d")


def get_policy_class(name: str) -> type[Policy]:
    if name in POLICIES:
        return POLICIES[name]
    if name in PLANNED:
        raise ValueError(f"policy '{name}' is planned but not implemented yet; available: {sorted(POLICIES)}")
    raise ValueError(f"unknown policy '{name}'; available: {sorted(POLICIES)}")


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


__all__ = ["POLICIES", "Policy", "PolicyConfig", "DiffusionConfig", "DiffusionPolicy", "get_policy_class",
           "build_config", "preset_train_overrides"]
