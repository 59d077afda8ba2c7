"""Conditional 1-D U-Net over the action horizon, with FiLM conditioning (Chi et al., Diffusion Policy).

The network convolves over time: a noisy chunk (B, H, A) goes in, a same-shaped ε or velocity comes out.
Conditioning (timestep embedding concatenated with the flattened observation features) modulates
every residual block through a per-channel scale and bias.
"""

import torch
from torch import nn

from robopolicy.nn.embeddings import timestep_mlp


class Conv1dBlock(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel_size: int, n_groups: int = 8):
        super().__init__(
            nn.Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(n_groups, c_out),
            nn.Mish(),
        )


class FiLMResidualBlock(nn.Module):
    """Two conv blocks; the condition scales and shifts the first one's output per channel."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, kernel_size: int, n_groups: int):
        super().__init__()
        self.conv1 = Conv1dBlock(c_in, c_out, kernel_size, n_groups)
        self.conv2 = Conv1dBlock(c_out, c_out, kernel_size, n_groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * c_out))
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x: (B, C_in, H), cond: (B, cond_dim) -> (B, C_out, H)."""
        scale, bias = self.film(cond).unsqueeze(-1).chunk(2, dim=1)
        h = self.conv1(x) * scale + bias
        return self.conv2(h) + self.skip(x)


class ConditionalUnet1D(nn.Module):
    """ε/velocity network: (x (B, H, A), t (B,), global_cond (B, D)) -> (B, H, A).

    H must be divisible by 2 ** (len(down_dims) - 1).
    """

    def __init__(
        self,
        action_dim: int,
        global_cond_dim: int,
        down_dims: tuple[int, ...] = (256, 512, 1024),
        kernel_size: int = 5,
        n_groups: int = 8,
        step_embed_dim: int = 256,
    ):
        super().__init__()
        self.time_embed = timestep_mlp(step_embed_dim)
        cond_dim = step_embed_dim + global_cond_dim
        widths = [action_dim, *down_dims]
        levels = list(zip(widths[:-1], widths[1:]))

        def block(c_in, c_out):
            return FiLMResidualBlock(c_in, c_out, cond_dim, kernel_size, n_groups)

        self.down = nn.ModuleList()
        for i, (c_in, c_out) in enumerate(levels):
            last = i == len(levels) - 1
            resample = nn.Identity() if last else nn.Conv1d(c_out, c_out, 3, stride=2, padding=1)
            self.down.append(nn.ModuleList([block(c_in, c_out), block(c_out, c_out), resample]))

        self.mid = nn.ModuleList([block(down_dims[-1], down_dims[-1]), block(down_dims[-1], down_dims[-1])])

        self.up = nn.ModuleList()
        # Each up level undoes one downsample; the shallowest skip is left unused, as in the reference.
        for c_in, c_out in reversed(levels[1:]):
            upsample = nn.ConvTranspose1d(c_in, c_in, 4, stride=2, padding=1)
            self.up.append(nn.ModuleList([block(c_out * 2, c_in), block(c_in, c_in), upsample]))

        self.head = nn.Sequential(
            Conv1dBlock(down_dims[0], down_dims[0], kernel_size, n_groups), nn.Conv1d(down_dims[0], action_dim, 1)
        )
        self.downsample_factor = 2 ** (len(down_dims) - 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, global_cond: torch.Tensor) -> torch.Tensor:
        if x.shape[1] % self.downsample_factor:
            raise ValueError(f"horizon {x.shape[1]} must be divisible by {self.downsample_factor} for this U-Net")
        cond = torch.cat([self.time_embed(t.expand(x.shape[0])), global_cond], dim=-1)
        h = x.transpose(1, 2)  # (B, A, H): convolve over time
        skips = []
        for res1, res2, downsample in self.down:
            h = res2(res1(h, cond), cond)
            skips.append(h)
            h = downsample(h)
        for res in self.mid:
            h = res(h, cond)
        for res1, res2, upsample in self.up:
            h = torch.cat([h, skips.pop()], dim=1)
            h = upsample(res2(res1(h, cond), cond))
        return self.head(h).transpose(1, 2)
