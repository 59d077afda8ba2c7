"""Conditional 1-D U-Net over the action horizon, with FiLM conditioning (Chi et al., Diffusion Policy).

The network convolves over time: a noisy chunk (B, H, A) goes in, a same-shaped ε or velocity comes out.
Conditioning (timestep embedding concatenated with the flattened observation features) modulates
every residual block through a per-channel scale and bias.
"""

import functools

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from robopolicy.nn.embeddings import timestep_mlp
from robopolicy.nn.group_norm_mish import group_norm_mish


def _matmul_nt(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (M, K) @ b (N, K)^T -> (M, N). On CPU through oneDNN's matmul: in fp32, torch.mm goes to MKL, whose
    sgemm reaches about 18% less than oneDNN on the AMD EPYC this project measures on (172-190 against
    205-217 GFLOP/s at the U-Net's weight-gradient shapes)."""
    if a.device.type == "cpu" and a.dtype == b.dtype and a.dtype in (torch.float32, torch.bfloat16) and _onednn():
        return torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
    return a @ b.T


@functools.cache
def _onednn() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def weight_grad_form(x_shape: torch.Size, weight_shape: torch.Size, dtype: torch.dtype) -> str:
    """How to compute a stride-1, 'same'-padded conv1d's weight gradient on CPU: "conv", "gemm" or "stock".

    oneDNN's own weight-gradient kernel ("stock") is slow on short sequences, and in bf16. Both alternatives
    compute the same sums, dW[o, i, j] = Σ_b Σ_l grad[b, o, l] · x_pad[b, i, l + j]: "conv" as a forward conv1d
    with the batch as channels, "gemm" as one matmul over the unfolded input. The rule follows interleaved
    timings on the 2-core AMD EPYC (Zen 4) this project benchmarks on, k=5, C_in = C_out = C:

        ms                   fp32: stock   gemm   conv      bf16: stock   gemm   conv
        B=256 C=1024 L=4            82.6   55.3   51.6            100.4   31.1   20.4
        B=256 C=512  L=8            27.1   28.3   23.3             30.6   15.4   12.7
        B=256 C=256  L=16           13.2   15.6   14.6              8.7    7.8    7.4
        B=64  C=1024 L=4            37.9   15.5   31.8             26.0    9.8    6.2
        B=64  C=512  L=8             8.9    7.8    7.4              8.6    4.3    3.7
        B=16  C=1024 L=4            12.6    4.4   10.9              9.8    3.3    3.0
        B=256 C=64   L=16            1.0    1.4    1.2              0.7    0.8    0.8

    In fp32 the conv form needs many reduction rows (B·L ≥ 512); below 128 channels nothing beats stock.
    """
    (batch, c_in, length), (c_out, _, kernel) = x_shape, weight_shape
    if kernel == 1 or min(c_in, c_out) < 128:
        return "stock"
    if dtype == torch.bfloat16 or (batch * length >= 512 and length < 2 * kernel):
        return "conv"
    return "gemm" if length < kernel else "stock"


class _ConvFastWeightGrad(torch.autograd.Function):
    """conv1d (stride 1, 'same' padding) whose weight gradient is computed in the form `weight_grad_form` picks;
    the forward and the input gradient are oneDNN's.

    Under autocast (mixed-precision training) the inputs are cast to the autocast dtype here, as autocast casts
    them for F.conv1d, and saved so: the backward then runs in that one dtype whether or not autocast is still
    on (the trainer calls backward outside it), and autograd casts the gradients back to the inputs' dtypes.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, form: str):
        if torch.is_autocast_enabled(x.device.type):
            dtype = torch.get_autocast_dtype(x.device.type)
            x, weight = x.to(dtype), weight.to(dtype)
            bias = None if bias is None else bias.to(dtype)
        ctx.save_for_backward(x, weight)
        ctx.form, ctx.has_bias = form, bias is not None
        return F.conv1d(x, weight, bias, padding=weight.shape[-1] // 2)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        (batch, c_in, length), k = x.shape, weight.shape[-1]
        p = k // 2
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(grad, x, weight, None, [1], [p], [1], False, [0], 1,
                                                         [True, False, False])[0]
        if ctx.needs_input_grad[1] and ctx.form == "conv":
            # Batch as channels: conv1d(grad as (C_out, B, L), x as (C_in, B, L), padding p) sums over b and l.
            # Reversing time on both turns conv1d's correlation into the shift dW needs (tested against stock).
            grad_w = F.conv1d(grad.transpose(0, 1).flip(-1), x.transpose(0, 1).flip(-1), padding=p)
        elif ctx.needs_input_grad[1]:
            # grad_w (C_out, C_in*k) = grad (C_out, B*L) @ cols (B*L, C_in*k), cols being the unfolded input.
            grad_rows = grad.transpose(0, 1).reshape(grad.shape[1], batch * length)  # (C_out, B*L)
            cols_t = F.pad(x, (p, p)).unfold(2, k, 1).permute(1, 3, 0, 2).reshape(c_in * k, batch * length)
            grad_w = _matmul_nt(grad_rows, cols_t).view_as(weight)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2))
        return grad_x, grad_w, grad_b, None


class Conv1d(nn.Conv1d):
    """nn.Conv1d (same parameters, same checkpoint keys) with a faster CPU weight gradient, see `weight_grad_form`.

    `Conv1d.fast_weight_grad = False` restores oneDNN's backward everywhere (benchmarks compare the two).
    """

    fast_weight_grad = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size[0]
        plain = (self.stride[0], self.groups, self.dilation[0], self.padding[0], k % 2) == (1, 1, 1, k // 2, 1)
        if (self.fast_weight_grad and plain and x.device.type == "cpu" and torch.is_grad_enabled()
                and self.weight.requires_grad and x.dim() == 3):
            dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
            form = weight_grad_form(x.shape, self.weight.shape, dtype)
            if form != "stock":
                return _ConvFastWeightGrad.apply(x, self.weight, self.bias, form)
        return super().forward(x)


class Conv1dBlock(nn.Sequential):
    """conv -> GroupNorm -> Mish, and FiLM (`* scale + shift`) when given; the last three run as one CPU kernel."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, n_groups: int = 8):
        super().__init__(
            Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(n_groups, c_out),
            nn.Mish(),
        )

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None,
                shift: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C_in, L), scale and shift (B, C_out) -> (B, C_out, L)."""
        conv, norm, _ = self
        return group_norm_mish(conv(x), norm, scale, shift)


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
        scale, bias = self.film(cond).chunk(2, dim=1)
        return self.conv2(self.conv1(x, scale, bias)) + self.skip(x)


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
