"""The one interface every policy implements (DESIGN.md §5).

    compute_loss(batch) -> {"loss": scalar, ...}     batch: normalised obs (B, To, ...), "action" (B, H, A)
    predict_chunk(obs, noise=None) -> (B, H, A)       normalised obs in, normalised actions out
    reset(mask=None)                                   clears recurrent state (no-op for stateless policies)

Normalisation lives outside the policy (the trainer and the runner apply the checkpoint's Normalizer),
so a policy only ever sees data in [-1, 1] or standardised units.
"""

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn


@dataclass
class PolicyConfig:
    """Fields every policy shares. They also declare the windows the policy needs from the store.

    Args:
        obs_shapes: per-step shape of each observation key, e.g. {"state": [39]}; filled from the store.
        action_dim: A, filled from the store.
        horizon: H, the predicted chunk length.
        n_obs_steps: To, observation frames the policy conditions on.
        n_action_steps: Ta, steps the runner executes from each chunk, starting at index To-1.
    """

    obs_shapes: dict[str, list[int]] = field(default_factory=dict)
    action_dim: int = 0
    horizon: int = 16
    n_obs_steps: int = 2
    n_action_steps: int = 8

    def __post_init__(self):
        if self.n_obs_steps < 1 or self.horizon < 1:
            raise ValueError(f"need n_obs_steps >= 1 and horizon >= 1, got {self.n_obs_steps=} {self.horizon=}")
        if self.n_obs_steps - 1 + self.n_action_steps > self.horizon:
            raise ValueError(
                f"executed steps run past the chunk: {self.n_obs_steps=} - 1 + {self.n_action_steps=} > {self.horizon=}"
            )

    @property
    def obs_keys(self) -> list[str]:
        return sorted(self.obs_shapes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "PolicyConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"{cls.__name__} has no field(s) {sorted(unknown)}; known: {sorted(known)}")
        hints = typing.get_type_hints(cls)
        # JSON turns tuples into lists; restore them so configs compare equal after a round trip.
        fixed = {k: tuple(v) if isinstance(v, list) and "tuple" in str(hints[k]) else v for k, v in values.items()}
        return cls(**fixed)


class Policy(nn.Module):
    """Base class: subclasses set `name` and `config_class` and implement the protocol above."""

    name: ClassVar[str]
    config_class: ClassVar[type[PolicyConfig]]
    # {"cpu": {"policy": {...}, "train": {...}, "image": {...}}, "paper": {...}}: named configs for --config.
    presets: ClassVar[dict[str, dict]]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for attr in ("name", "config_class"):
            if attr not in cls.__dict__:
                raise TypeError(f"policy class {cls.__name__} must define `{attr}`")

    def __init__(self, config: PolicyConfig):
        super().__init__()
        if not config.obs_shapes or config.action_dim < 1:
            raise ValueError("config.obs_shapes and config.action_dim must be filled in (from the store) first")
        self.config = config

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # DDP synchronises gradients only through forward(), so training calls the module, not compute_loss.
        return self.compute_loss(batch)

    def predict_chunk(self, obs: dict[str, torch.Tensor], noise: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def reset(self, mask: torch.Tensor | None = None) -> None:
        """Stateless by default."""

    def batch_indices(self, n_windows: int, window_episode: np.ndarray, batch_size: int, step: int,
                      rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Which training windows make batch `step`, plus extra per-row arrays to put in the batch.

        Uniform over windows by default. A recurrent policy overrides this to walk episodes in order (and
        flag resets), as long as the result depends only on (step, rng) so that resumed runs repeat it.
        `window_episode` (n_windows,) gives each window's episode.
        """
        return rng.integers(0, n_windows, batch_size), {}

    @property
    def sampler_name(self) -> str:
        """Short label of how chunks are produced, reported next to every success rate."""
        return self.name

    @property
    def nfe(self) -> float:
        """Network evaluations per chunk (a running mean for adaptive samplers)."""
        return 1

    def optim_groups(self, weight_decay: float) -> list[dict]:
        return [{"params": [p for p in self.parameters() if p.requires_grad], "weight_decay": weight_decay}]
