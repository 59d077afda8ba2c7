"""stream_linear, the batch-1 GEMM kernel (compiled on first use), against float64 matmuls.

bf16 weights: the kernel rounds x and W to bf16 and accumulates in fp32, so the reference is the float64 product
of the rounded values; what remains is fp32 summation order (~1e-7 relative seen, 1e-5 allowed).
"""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from robopolicy.nn import stream_linear
from robopolicy.nn.fast_unet import FastUnet1D
from robopolicy.nn.unet1d import ConditionalUnet1D

DTYPES = [d for d in (torch.float32, torch.bfloat16) if stream_linear.available(d)]
pytestmark = pytest.mark.skipif(not DTYPES, reason="stream_linear needs an x86 CPU with AVX-512 and a compiler")


def reference(x, weight, bias, dtype):
    """x @ W^T + b in float64, on x and W rounded to `dtype` as the kernel sees them."""
    x, weight = x.to(dtype).double(), weight.to(dtype).double()
    return F.linear(x, weight, None if bias is None else bias.double())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,in_features,out_features", [
    (1, 10, 256), (3, 1285, 48), (4, 5120, 1024), (7, 33, 16), (16, 1280, 512), (64, 96, 80)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_matches_float64_matmul(dtype, rows, in_features, out_features, with_bias):
    gen = torch.Generator().manual_seed(rows * in_features)
    x = torch.randn(2, rows, in_features, generator=gen)  # leading dims are kept
    weight = torch.randn(out_features, in_features, generator=gen) / in_features ** 0.5
    bias = torch.randn(out_features, generator=gen) if with_bias else None
    y = stream_linear.linear(x, stream_linear.pack(weight, dtype), bias)
    ref = reference(x, weight, bias, dtype)
    assert y.dtype == torch.float32 and y.shape == (2, rows, out_features)
    assert float((y.double() - ref).abs().max() / ref.abs().max()) < 1e-5


def test_bad_input_is_named():
    weight = torch.randn(32, 40)
    packed = stream_linear.pack(weight, torch.float32)
    with pytest.raises(RuntimeError, match="input has 41 features, the packed weight expects 40"):
        stream_linear.linear(torch.randn(2, 41), packed)
    with pytest.raises(RuntimeError, match="packed by robopolicy.nn.stream_linear.pack"):
        stream_linear.linear(torch.randn(2, 40), weight)
    with pytest.raises(RuntimeError, match="bias has 31 values for 32 outputs"):
        stream_linear.linear(torch.randn(2, 40), packed, torch.randn(31))
    with pytest.raises(ValueError, match="16 output features per block, got 30"):
        stream_linear.pack(torch.randn(30, 40), torch.float32)
    with pytest.raises(ValueError, match="float32 and bfloat16"):
        stream_linear.pack(weight, torch.float16)


@pytest.mark.parametrize("dtype", DTYPES)
def test_torch_compile_traces_the_operator(dtype):
    weight, bias = torch.randn(64, 30), torch.randn(64)
    packed = stream_linear.pack(weight, dtype)

    def layer(x):
        return torch.relu(stream_linear.linear(x, packed, bias)) * 2

    x = torch.randn(4, 30)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")  # fullgraph: no fallback to eager
    assert torch.equal(compiled(x), layer(x))


def test_unet_view_streams_every_gemm_it_can():
    unet = ConditionalUnet1D(3, 10, (32, 64), kernel_size=5, n_groups=8, step_embed_dim=32).eval()
    for stream in (True, False):
        view = FastUnet1D(unet, "fp32", horizon=8, stream=stream)
        head_conv = view.head[1].linear
        convs = [res.conv1.conv.linear for level in view.down for res in level[:2]] + [view.up[0][2].even]
        assert all((conv.layout == "stream") == stream for conv in convs)
        assert head_conv.layout != "stream"  # 3 outputs: not a multiple of 16


def test_without_a_compiler_the_view_keeps_onednn(tmp_path):
    """A machine without a C++ compiler: the build fails, a warning says so, and the view runs oneDNN's GEMMs."""
    script = """
import torch
from robopolicy.nn import stream_linear
from robopolicy.nn.fast_unet import FastUnet1D
from robopolicy.nn.unet1d import ConditionalUnet1D
unet = ConditionalUnet1D(3, 10, (32, 64), kernel_size=5, n_groups=8, step_embed_dim=32).eval()
view = FastUnet1D(unet, "fp32", horizon=8)
x, t, cond = torch.randn(1, 8, 3), torch.tensor([5]), torch.randn(1, 10)
with torch.no_grad():
    err = float((view(x, t, cond) - unet(x, t, cond)).norm() / unet(x, t, cond).norm())
print(view.down[0][0].conv1.conv.linear.layout, err < 1e-4)
"""
    env = {**os.environ, "CXX": str(tmp_path / "no-such-compiler"), "TORCH_EXTENSIONS_DIR": str(tmp_path)}
    env.pop(stream_linear.SWITCH, None)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["onednn", "True"]
    assert "stream_linear kernel could not be built" in done.stderr
