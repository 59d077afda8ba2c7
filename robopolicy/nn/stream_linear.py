"""A linear layer for a handful of rows that reads its weights at the memory's speed (CPU, AVX-512).

At batch 1 a U-Net step is a chain of GEMMs with 4-16 rows: each weight is read once and used for a few
FLOPs, so the step takes as long as reading the weights. oneDNN streams them at 21-25 GB/s on the benchmark
machine, where plain loads reach 34-36 GB/s once each core reads several independent streams. The kernel in
`csrc/stream_linear.cpp` does that: weights packed in blocks of 16 output features, four blocks walked at once
per core. On the paper U-Net's 36 GEMM shapes it is 1.45x (fp32) and 1.6x (bf16) faster than oneDNN's packed
small-M GEMM (`bench/floor.py` measures both rates).

The kernel is compiled on first use (torch.utils.cpp_extension, ~10 s, cached under ~/.cache/torch_extensions)
and registered as the operator `robopolicy::stream_linear`, which torch.compile can trace. Where it cannot run
(no AVX-512, no compiler, a GPU tensor) `available` and `supports` say so and callers keep their GEMM. Setting the
environment variable ROBOPOLICY_STREAM_LINEAR=0 turns it off for views built afterwards (oneDNN's GEMMs then).

    packed = pack(weight, torch.bfloat16)        # weight (N, K) -> blocked layout
    y = linear(x, packed, bias)                  # x (..., K) fp32 -> y (..., N) fp32
"""

import functools
import os

import torch

from robopolicy.nn import native

LANES = 16  # output features per packed block: one AVX-512 register of fp32
SWITCH = "ROBOPOLICY_STREAM_LINEAR"  # "0": don't use the kernel


@functools.cache
def _built_dtypes() -> frozenset[torch.dtype]:
    """Builds and loads the kernel once per process; the dtypes it was built for (empty if it cannot run)."""
    flags = native.cpu_flags()
    if "avx512f" not in flags or "avx512bw" not in flags:
        return frozenset()
    dtypes = {torch.float32}
    cflags = ["-O3", "-fopenmp", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma"]
    if "avx512_bf16" in flags:
        dtypes.add(torch.bfloat16)
        cflags.append("-mavx512bf16")
    # The library registers `robopolicy::stream_linear` with the dispatcher when it is loaded.
    name = "robopolicy_stream_linear" + ("_bf16" if torch.bfloat16 in dtypes else "")
    if not native.load(name, "stream_linear.cpp", cflags):
        return frozenset()
    torch.library.register_fake("robopolicy::stream_linear")(_output_like)
    return frozenset(dtypes)


def _output_like(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Shape and dtype of stream_linear's output, for torch.compile's tracing."""
    return input.new_empty((*input.shape[:-1], weight.shape[0] * LANES), dtype=torch.float32)


def available(dtype: torch.dtype) -> bool:
    """Whether the kernel runs here for `dtype` weights and is switched on (builds it on the first call)."""
    return os.environ.get(SWITCH, "1") != "0" and dtype in _built_dtypes()


def supports(weight: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether `linear` can run a weight (N, K) in `dtype` here."""
    return weight.device.type == "cpu" and weight.shape[0] % LANES == 0 and available(dtype)


def pack(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """weight (N, K) -> fp32 (N/16, K, 16), or bf16 (N/16, ceil(K/2), 16, 2) with K zero-padded to even."""
    out_features, in_features = weight.shape
    if out_features % LANES:
        raise ValueError(f"stream_linear packs {LANES} output features per block, got {out_features}")
    weight = weight.detach()
    if dtype == torch.float32:
        return weight.float().reshape(out_features // LANES, LANES, in_features).transpose(1, 2).contiguous()
    if dtype != torch.bfloat16:
        raise ValueError(f"stream_linear supports float32 and bfloat16 weights, got {dtype}")
    pairs = (in_features + 1) // 2
    padded = torch.nn.functional.pad(weight.float(), (0, 2 * pairs - in_features)).to(torch.bfloat16)
    return padded.view(out_features // LANES, LANES, pairs, 2).permute(0, 2, 1, 3).contiguous()


def linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., K) -> x @ W^T + bias, (..., N) fp32, for a weight packed by `pack` (bf16 rounds x to bf16)."""
    return torch.ops.robopolicy.stream_linear(x.float(), packed, bias)
