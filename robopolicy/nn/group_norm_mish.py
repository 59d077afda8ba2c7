"""GroupNorm -> Mish -> optional FiLM (`y * scale + shift`) as one CPU operator with its own backward.

The U-Net follows every convolution with GroupNorm and Mish, and modulates the first block of every residual
block with FiLM. Eager PyTorch spends five passes over the activations on that in the forward and five in the
backward, and aten's GroupNorm backward is slow on the U-Net's short sequences (L = 4-16). At training batch
256 that was about 11% of the paper U-Net's step; the kernel in `csrc/group_norm_mish.cpp` reads each group
once and recomputes the normalised values and Mish in the backward rather than saving them.

It is compiled on first use (torch.utils.cpp_extension, -march=native, ~10 s, cached) and registered as
`robopolicy::group_norm_mish`, with autograd and a fake implementation for torch.compile. Where it cannot run
(a GPU tensor, no compiler), on small tensors and while exporting, `group_norm_mish` computes the same thing
with PyTorch ops. Setting the environment variable ROBOPOLICY_GROUP_NORM_MISH=0 turns the kernel off.

    y = group_norm_mish(h, norm)                    # h (B, C, L) -> mish(norm(h))
    y = group_norm_mish(h, norm, scale, shift)      # ... * scale[..., None] + shift[..., None]; scale (B, C)
"""

import functools
import os

import torch
import torch.nn.functional as F
from torch import nn

from robopolicy.nn import native

SWITCH = "ROBOPOLICY_GROUP_NORM_MISH"  # "0": don't use the kernel
MIN_VALUES = 1 << 16  # smaller activations (batch-1 inference) take PyTorch's ops: the gain is in big batches, and
#                       a robot's first action must not wait for the kernel's build


@functools.cache
def _built() -> bool:
    """Builds and loads the kernel once per process; whether it can run."""
    if not native.load("robopolicy_group_norm_mish", "group_norm_mish.cpp",
                       ["-O3", "-fopenmp", "-march=native", "-fno-math-errno", "-fno-trapping-math"]):
        return False
    torch.library.register_fake("robopolicy::group_norm_mish")(_forward_like)
    torch.library.register_fake("robopolicy::group_norm_mish_backward")(_backward_like)
    torch.library.register_autograd("robopolicy::group_norm_mish", _backward, setup_context=_setup_context)
    return True


@torch.compiler.assume_constant_result  # torch.compile decides once, when it traces
def available() -> bool:
    """Whether the kernel runs here and is switched on (builds it on the first call)."""
    return os.environ.get(SWITCH, "1") != "0" and _built()


def group_norm_mish(h: torch.Tensor, norm: nn.GroupNorm, scale: torch.Tensor | None = None,
                    shift: torch.Tensor | None = None) -> torch.Tensor:
    """mish(norm(h)) (* scale + shift): h (B, C, L), scale and shift (B, C) -> (B, C, L).

    The kernel computes in fp32 and returns fp32, also for bf16 `h` under autocast (where PyTorch's CPU ops stay
    in bf16 and round at every op).
    """
    if (scale is None) != (shift is None):
        raise ValueError("group_norm_mish takes scale and shift together")
    if (h.device.type != "cpu" or h.dim() != 3 or h.numel() < MIN_VALUES or not norm.affine
            or torch.jit.is_tracing() or not available()):  # exports (TorchScript, ONNX) keep standard ops
        y = F.mish(norm(h))
        return y if scale is None else y * scale.unsqueeze(-1) + shift.unsqueeze(-1)
    if scale is not None:
        scale, shift = scale.float().contiguous(), shift.float().contiguous()
    y, _, _ = torch.ops.robopolicy.group_norm_mish(h.float().contiguous(), norm.weight.float(), norm.bias.float(),
                                                   scale, shift, norm.num_groups, norm.eps)
    return y


def _setup_context(ctx, inputs, output):
    h, weight, bias, scale, shift, groups, _ = inputs
    _, mean, rstd = output
    ctx.save_for_backward(h, mean, rstd, weight, bias, scale, shift)
    ctx.groups = groups


def _backward(ctx, grad_y, _grad_mean, _grad_rstd):
    h, mean, rstd, weight, bias, scale, shift = ctx.saved_tensors
    grads = torch.ops.robopolicy.group_norm_mish_backward(grad_y, h, mean, rstd, weight, bias, scale, shift,
                                                          ctx.groups)
    return *grads, None, None


def _forward_like(h, weight, bias, scale, shift, groups, eps):
    stats = h.new_empty((h.shape[0], groups))
    return torch.empty_like(h), stats, torch.empty_like(stats)


def _backward_like(grad, h, mean, rstd, weight, bias, scale, shift, groups):
    return (torch.empty_like(h), torch.empty_like(weight), torch.empty_like(bias),
            None if scale is None else torch.empty_like(scale), None if shift is None else torch.empty_like(shift))
