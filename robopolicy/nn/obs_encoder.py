"""Turns a normalised observation window into per-step feature vectors, for any mix of keys."""

import torch
from torch import nn

from robopolicy.nn.vision import ImageEncoder


def is_image_key(key: str) -> bool:
    return key.startswith("image_")


class ObservationEncoder(nn.Module):
    """dict of normalised observations, each (B, To, ...) -> features (B, To, D).

    Low-dim keys (e.g. `state`, (B, To, S)) pass through unchanged; each `image_<cam>` key, (B, To, H, W, 3)
    scaled to [-1, 1], gets its own ResNet-18 encoder. Keys are concatenated in sorted order so the
    feature layout does not depend on dict order.
    """

    def __init__(self, obs_shapes: dict[str, list[int]], crop_shape: tuple[int, int] | None = None,
                 image_feature_dim: int = 64):
        super().__init__()
        self.keys = sorted(obs_shapes)
        self.image_encoders = nn.ModuleDict()
        self.feature_dim = 0
        for key in self.keys:
            shape = obs_shapes[key]
            if is_image_key(key):
                self.image_encoders[key] = ImageEncoder(tuple(shape[:2]), crop_shape, image_feature_dim)
                self.feature_dim += image_feature_dim
            elif len(shape) == 1:
                self.feature_dim += shape[0]
            else:
                raise ValueError(f"observation '{key}' has per-step shape {tuple(shape)}: expected a vector "
                                 "or an image_<cam> key with an HWC image")

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        features = []
        for key in self.keys:
            x = obs[key]
            if key in self.image_encoders:
                b, t = x.shape[:2]
                images = x.flatten(0, 1).permute(0, 3, 1, 2)  # (B*To, 3, H, W)
                x = self.image_encoders[key](images).unflatten(0, (b, t))
            features.append(x)
        return torch.cat(features, dim=-1)
