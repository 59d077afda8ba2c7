"""The fused GroupNorm -> Mish -> FiLM kernel (compiled on first use) against PyTorch's ops in float64."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robopolicy.nn import group_norm_mish as gnm
from robopolicy.nn.unet1d import ConditionalUnet1D

pytestmark = pytest.mark.skipif(not gnm.available(), reason="the group_norm_mish kernel needs a C++ compiler")


def make_norm(channels, groups, gen):
    norm = nn.GroupNorm(groups, channels)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * torch.randn(channels, generator=gen))
        norm.bias.copy_(0.5 * torch.randn(channels, generator=gen))
    return norm


def run(fn, h, film, norm, grad):
    """Output and the gradients of h, film, weight and bias for the upstream gradient `grad`."""
    leaves = [h.detach().clone().requires_grad_(), film.detach().clone().requires_grad_(),
              norm.weight.detach().clone().requires_grad_(), norm.bias.detach().clone().requires_grad_()]
    y = fn(*leaves)
    y.backward(grad.to(y.dtype))
    return [y.detach().double(), *(None if leaf.grad is None else leaf.grad.double() for leaf in leaves)]


@pytest.mark.parametrize("batch,channels,length,groups", [
    (256, 1024, 4, 8), (64, 512, 8, 8), (32, 256, 16, 8), (5, 96, 5, 4), (3, 64, 37, 8), (130, 128, 12, 16)])
@pytest.mark.parametrize("film", [True, False])
def test_matches_float64(batch, channels, length, groups, film):
    gen = torch.Generator().manual_seed(channels * length + film)
    norm = make_norm(channels, groups, gen)
    h = 2 * torch.randn(batch, channels, length, generator=gen) + 0.3
    h[0, 0, 0] = 30.0  # past the z > 20 branch of Mish
    film_in = torch.randn(batch, 2 * channels, generator=gen)
    grad = torch.randn(batch, channels, length, generator=gen)

    def fused(h, film_in, weight, bias):
        # MIN_VALUES keeps small tensors on PyTorch's ops; this test wants the kernel at every size.
        return torch.ops.robopolicy.group_norm_mish(h, weight, bias, *maybe_film(film_in), groups, norm.eps)[0]

    def maybe_film(film_in):
        return [t.contiguous() for t in film_in.chunk(2, dim=1)] if film else [None, None]

    def reference(h, film_in, weight, bias):
        y = F.mish(F.group_norm(h.double(), groups, weight.double(), bias.double(), norm.eps))
        if film:
            scale, shift = film_in.double().chunk(2, dim=1)
            y = y * scale.unsqueeze(-1) + shift.unsqueeze(-1)
        return y

    got, want = run(fused, h, film_in, norm, grad), run(reference, h, film_in, norm, grad)
    for name, a, b in zip(["y", "grad h", "grad film", "grad weight", "grad bias"], got, want):
        if name == "grad film" and not film:
            assert a is None and b is None
            continue
        assert a.shape == b.shape, name
        err = float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
        assert err < 2e-5, f"{name}: relative error {err:.1e}"


def test_unet_training_step_matches_pytorch_ops(monkeypatch):
    """A whole U-Net forward and backward at a batch big enough for the kernel, against the switch turned off."""
    torch.manual_seed(0)
    unet = ConditionalUnet1D(2, 20, (64, 128, 256), kernel_size=5, n_groups=8, step_embed_dim=32)
    x, t, cond = torch.randn(64, 16, 2), torch.randint(0, 100, (64,)), torch.randn(64, 20)
    assert 64 * 256 * 4 >= gnm.MIN_VALUES  # the deepest level runs the kernel

    def step(switch):
        monkeypatch.setenv(gnm.SWITCH, switch)
        unet.zero_grad(set_to_none=True)
        with torch.profiler.profile() as prof:
            loss = unet(x, t, cond).square().mean()
            loss.backward()
        ran = any(e.key == "robopolicy::group_norm_mish" for e in prof.key_averages())
        return loss.item(), [p.grad.clone() for p in unet.parameters()], ran

    fused_loss, fused_grads, fused_ran = step("1")
    plain_loss, plain_grads, plain_ran = step("0")
    assert fused_ran and not plain_ran
    assert abs(fused_loss - plain_loss) < 1e-5 * abs(plain_loss)
    for (name, _), a, b in zip(unet.named_parameters(), fused_grads, plain_grads):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5 * b.abs().max()), name


def test_bf16_autocast_computes_in_fp32(monkeypatch):
    """Under autocast the conv output is bf16. The kernel normalises it in fp32 and returns fp32, where PyTorch's CPU
    ops stay in bf16: the same values up to bf16 rounding."""
    gen = torch.Generator().manual_seed(1)
    norm = make_norm(256, 8, gen)
    h = torch.randn(64, 256, 8, generator=gen).bfloat16()
    scale, shift = torch.randn(2, 64, 256, generator=gen).bfloat16()
    want = F.mish(norm(h.float())) * scale.float().unsqueeze(-1) + shift.float().unsqueeze(-1)
    outs = {}
    for switch in ("1", "0"):
        monkeypatch.setenv(gnm.SWITCH, switch)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outs[switch] = gnm.group_norm_mish(h, norm, scale, shift)
    assert outs["1"].dtype == torch.float32 and outs["0"].dtype == torch.bfloat16
    assert torch.allclose(outs["1"], want, atol=1e-5)
    assert (outs["0"].float() - want).abs().max() < 0.05 * want.abs().max()


def test_nan_propagates():
    norm = make_norm(64, 8, torch.Generator().manual_seed(2))
    h = torch.randn(16, 64, 64)
    h[3, 9, 5] = float("nan")
    y = gnm.group_norm_mish(h, norm)
    assert y[3, 8:16].isnan().all()  # the NaN's group
    assert y[3, :8].isfinite().all() and y[:3].isfinite().all()


def test_bad_input_is_named():
    norm = make_norm(64, 8, torch.Generator().manual_seed(3))
    h = torch.randn(16, 64, 64)
    with pytest.raises(ValueError, match="scale and shift together"):
        gnm.group_norm_mish(h, norm, torch.ones(16, 64))
    with pytest.raises(RuntimeError, match=r"scale and shift must be contiguous fp32 \(16, 64\)"):
        gnm.group_norm_mish(h, norm, torch.ones(16, 32), torch.ones(16, 32))
    with pytest.raises(RuntimeError, match="64 channels in 7 groups"):
        torch.ops.robopolicy.group_norm_mish(h, norm.weight, norm.bias, None, None, 7, 1e-5)


def test_torch_compile_traces_the_kernel():
    norm = make_norm(64, 8, torch.Generator().manual_seed(4))
    h = torch.randn(16, 64, 64, requires_grad=True)
    scale, shift = torch.randn(2, 16, 64)

    def fn(h):
        return gnm.group_norm_mish(h, norm, scale, shift)

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    y = compiled(h)
    (grad,) = torch.autograd.grad(y.square().sum(), h)
    (want,) = torch.autograd.grad(fn(h).square().sum(), h)
    assert torch.allclose(y, fn(h)) and torch.allclose(grad, want)


def test_without_a_compiler_falls_back_to_pytorch_ops(tmp_path):
    """A failed build is a warning, and the U-Net still trains (on PyTorch's ops)."""
    script = """
import torch
from robopolicy.nn import group_norm_mish as gnm
norm = torch.nn.GroupNorm(8, 256)
h = torch.randn(64, 256, 8, requires_grad=True)
y = gnm.group_norm_mish(h, norm)
y.sum().backward()
ref = torch.nn.functional.mish(norm(h.detach()))
print(gnm.available(), bool(torch.equal(y, ref)), h.grad is not None)
"""
    env = {**os.environ, "CXX": str(tmp_path / "no-such-compiler"), "TORCH_EXTENSIONS_DIR": str(tmp_path)}
    env.pop(gnm.SWITCH, None)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True", "True"]
    assert "group_norm_mish kernel could not be built" in done.stderr
