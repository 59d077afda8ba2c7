"""Timestep embeddings shared by every denoiser."""

import math

import torch
from torch import nn


class SinusoidalEmbedding(nn.Module):
    """Maps a (B,) tensor of diffusion steps or flow times to (B, dim) sin/cos features."""

    def __init__(self, dim: int):
        super().__init__()
        half = dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half) / (half - 1))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = t.float()[:, None] * self.freqs[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


def timestep_mlp(dim: int) -> nn.Sequential:
    """Sinusoidal features -> Linear(d, 4d) -> Mish -> Linear(4d, d), as in Diffusion Policy."""
    return nn.Sequential(SinusoidalEmbedding(dim), nn.Linear(dim, dim * 4), nn.Mish(), nn.Linear(dim * 4, dim))
