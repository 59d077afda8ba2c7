"""Inference view of a trained ConditionalUnet1D, laid out for small batches: same weights, same math, less time.

At batch 1 the paper U-Net's forward is memory-bound (254 MB of fp32 weights for 0.6 GFLOP), and oneDNN's
conv1d kernels at sequence lengths 4-16 stream those weights at a fraction of the memory bandwidth. This view

- keeps activations time-major (B, L, C) and runs every convolution as one GEMM over the unfolded input,
  (B*L, C_in*K) @ (C_in*K, C_out), with the weights packed once: for robopolicy's `stream_linear` kernel, which
  reads them at the memory's speed (CPU with AVX-512), or else for oneDNN's small-M matmul;
- computes every FiLM scale and bias for all the timesteps of a chunk at once (`condition`; the timesteps' share,
  embedding included, once per sampler schedule), so a denoising step runs only the convolutions, GroupNorm and
  Mish;
- optionally stores the packed weights in bf16 (half the bytes; fp32 accumulation, activations rounded to bf16
  at each GEMM input, and at its output too where oneDNN runs it).

`compile_step` goes one further: inductor compiles the whole step with the weights frozen in. It fuses every
GroupNorm, FiLM and Mish into a few C++ loops around the `stream_linear` calls, and on CPU times any other GEMM
shape against its own AVX-512 template and keeps the faster. This pays at batch 1, where those small ops cost as
much as a GEMM each.

The view holds copies of the weights: rebuild it after the module's weights change (diffusion and flow policies
do this by themselves, see `FastUnetInference` in `robopolicy/policies/backbone.py`).
"""

import functools
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from robopolicy.nn import stream_linear
from robopolicy.nn.unet1d import ConditionalUnet1D, Conv1dBlock, FiLMResidualBlock, _onednn

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
LinearFactory = Callable[..., "PackedLinear"]  # (weight (N, K), bias (N,) | None, rows) -> a layer


def _onednn_packing(device: torch.device) -> bool:
    has_ops = hasattr(torch.ops.mkldnn, "_reorder_linear_weight")  # what inductor's freezing uses
    return device.type == "cpu" and _onednn() and has_ops


class PackedLinear:
    """y = x @ W^T + b for x (..., K) -> (..., N), W held in `dtype` in the fastest layout that applies here:

    - `stream_linear`'s blocked layout (CPU with AVX-512, N a multiple of 16, up to 64 rows): reads the weights
      at the memory's speed, and torch.compile traces it as one operator;
    - else, with `pack`, oneDNN's packed layout for `rows` rows (CPU; what eager calls run fastest);
    - else a plain tensor (GPU, or what torch.compile then packs itself).

    `rows` is the expected number of rows M of x (any M still works).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype, rows: int,
                 pack: bool = True, stream: bool = True):
        self.dtype = dtype
        weight = weight.detach()
        self.layout = ("stream" if stream and rows <= 64 and stream_linear.supports(weight, dtype)
                       else "onednn" if pack and _onednn_packing(weight.device) else "plain")
        if self.layout == "stream":
            self.bias = None if bias is None else bias.detach().float()
            self.weight = stream_linear.pack(weight, dtype)
            return
        self.bias = None if bias is None else bias.detach().to(dtype)
        weight = weight.to(dtype).contiguous()
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight, rows) if self.layout == "onednn" else weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.layout == "stream":
            return stream_linear.linear(x, self.weight, self.bias)
        x = x.to(self.dtype)
        if self.layout == "onednn":
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


def _unfold(h: torch.Tensor, kernel: int, stride: int, padding: int) -> torch.Tensor:
    """(B, L, C) -> (B, L_out, C*kernel): each row holds the input window of one output step (im2col)."""
    windows = F.pad(h, (0, 0, padding, padding)).unfold(1, kernel, stride)  # (B, L_out, C, kernel)
    return windows.reshape(*windows.shape[:2], -1)


class _Conv:
    """nn.Conv1d on time-major activations: (B, L, C_in) -> (B, L_out, C_out)."""

    def __init__(self, conv: nn.Conv1d, linear: LinearFactory, rows: int):
        self.kernel, self.stride, self.padding = conv.kernel_size[0], conv.stride[0], conv.padding[0]
        # Conv1d weights (C_out, C_in, K) flatten to the (C_in, K) order that `_unfold` produces.
        self.linear = linear(conv.weight.flatten(1), conv.bias, rows)

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        if self.kernel == 1 and self.stride == 1:
            return self.linear(h)
        return self.linear(_unfold(h, self.kernel, self.stride, self.padding))


class _ConvTranspose:
    """nn.ConvTranspose1d(C, C, 4, stride=2, padding=1) on time-major activations: (B, L, C) -> (B, 2L, C).

    Output step 2m sums x[m-1]·W[..., 3] + x[m]·W[..., 1] and step 2m+1 sums x[m]·W[..., 2] + x[m+1]·W[..., 0]:
    two GEMMs over the length-2 windows of the input padded by one step on each side.
    """

    def __init__(self, conv: nn.ConvTranspose1d, linear: LinearFactory, rows: int):
        if (conv.kernel_size[0], conv.stride[0], conv.padding[0]) != (4, 2, 1):
            raise ValueError(f"fast path supports ConvTranspose1d(k=4, stride=2, padding=1), got {conv}")
        w = conv.weight.detach().transpose(0, 1)  # (C_out, C_in, 4)
        self.even = linear(w[:, :, [3, 1]].flatten(1), conv.bias, rows)
        self.odd = linear(w[:, :, [2, 0]].flatten(1), conv.bias, rows)

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        batch, length, _ = h.shape
        windows = _unfold(h, 2, 1, 1)  # (B, L+1, 2C): window j holds x[j-1], x[j]
        out = torch.stack([self.even(windows[:, :length]), self.odd(windows[:, 1:])], dim=2)
        return out.reshape(batch, 2 * length, -1)


class _ConvNormMish:
    """Conv1dBlock (conv -> GroupNorm -> Mish) on time-major activations; the norm runs in fp32.

    The norm is spelled out in small ops rather than F.group_norm: at batch 1 its tensors are tiny, and
    group_norm enters an OpenMP region at any size, which costs milliseconds when the cores are shared.
    """

    def __init__(self, block: Conv1dBlock, linear: LinearFactory, rows: int):
        conv, norm, _ = block
        self.conv = _Conv(conv, linear, rows)
        self.groups, self.eps = norm.num_groups, norm.eps
        self.weight, self.bias = norm.weight.detach().float(), norm.bias.detach().float()

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        h = self.conv(h).float()
        batch, length, channels = h.shape
        g = h.view(batch, length, self.groups, channels // self.groups)
        var, mean = torch.var_mean(g, dim=(1, 3), keepdim=True, correction=0)
        normed = ((g - mean) * torch.rsqrt(var + self.eps)).view(batch, length, channels)
        return F.mish(torch.addcmul(self.bias, normed, self.weight))


class _ResBlock:
    def __init__(self, block: FiLMResidualBlock, linear: LinearFactory, rows: int):
        self.conv1 = _ConvNormMish(block.conv1, linear, rows)
        self.conv2 = _ConvNormMish(block.conv2, linear, rows)
        self.skip = _Conv(block.skip, linear, rows) if isinstance(block.skip, nn.Conv1d) else None

    def __call__(self, x: torch.Tensor, film: torch.Tensor) -> torch.Tensor:
        """x (B, L, C_in), film (B, 2*C_out): this step's FiLM scale and bias -> (B, L, C_out)."""
        scale, bias = film.unsqueeze(1).chunk(2, dim=-1)
        h = torch.addcmul(bias, self.conv1(x), scale)
        skip = x if self.skip is None else self.skip(x).float()
        return self.conv2(h) + skip


@dataclass
class Conditioning:
    """Everything a chunk's denoising steps share: every block's FiLM outputs for every step, (S, B, N = Σ 2*C_out).
    A step takes one row, and the step function splits it per block: one input rather than one per block keeps
    the compiled step's per-call guard checks short."""

    film: torch.Tensor

    def step(self, i: int) -> torch.Tensor:
        return self.film[i]


class FastUnet1D:
    """Inference-only twin of a ConditionalUnet1D: `condition(t, global_cond)` once per chunk, then
    `step(x, conditioning, i)` per denoising step i.

    precision: "fp32" or "bf16" (GEMM weights and inputs; norms, FiLM and the head stay fp32).
    batch_hint: the batch size the weights are packed for. pack: oneDNN-packed weights (CPU); off for
    torch.compile, which cannot trace them. stream: `stream_linear`'s kernel wherever it applies (see
    `PackedLinear`); off, every GEMM is oneDNN's (or inductor's, compiled).
    """

    def __init__(self, unet: ConditionalUnet1D, precision: str = "fp32", batch_hint: int = 1, horizon: int = 16,
                 pack: bool = True, stream: bool = True):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got '{precision}'")
        dtype = PRECISIONS[precision]
        self.precision, self.packed = precision, pack

        def linear(weight, bias, rows, dtype=dtype):
            return PackedLinear(weight, bias, dtype, rows, pack, stream)

        self.downsample_factor = unet.downsample_factor
        self.time_embed = unet.time_embed
        length = horizon

        def res(block):
            return _ResBlock(block, linear, batch_hint * length)

        blocks, self.down = [], []
        for res1, res2, downsample in unet.down:
            level = [res(res1), res(res2), None]
            blocks += [res1, res2]
            if isinstance(downsample, nn.Conv1d):
                length //= 2
                level[2] = _Conv(downsample, linear, batch_hint * length)
            self.down.append(level)
        self.mid = [res(block) for block in unet.mid]
        blocks += list(unet.mid)
        self.up = []
        for res1, res2, upsample in unet.up:
            self.up.append((res(res1), res(res2), _ConvTranspose(upsample, linear, batch_hint * length)))
            blocks += [res1, res2]
            length *= 2
        head_block, head_conv = unet.head
        self.head = (_ConvNormMish(head_block, linear, batch_hint * length),
                     _Conv(head_conv, functools.partial(linear, dtype=torch.float32), batch_hint * length))
        # Every block's FiLM layer as one matrix, split by input: it is linear in mish([t_emb, global_cond]) =
        # [mish(t_emb), mish(global_cond)], and the timestep half is fixed by the sampler's schedule, so it is
        # computed once per schedule (`_timestep_film`) and a chunk only multiplies its observation half.
        self._film_sizes = [b.film[1].out_features for b in blocks]
        film_weight = torch.cat([b.film[1].weight.detach() for b in blocks]).float()
        embed_dim = unet.time_embed[-1].out_features
        self._film_time_weight = film_weight[:, :embed_dim].contiguous()
        self._film_cond_weight = film_weight[:, embed_dim:].contiguous()
        self._film_bias = torch.cat([b.film[1].bias.detach() for b in blocks]).float()
        self._timestep_films: dict[tuple[int, ...], torch.Tensor] = {}

    @torch.no_grad()
    def condition(self, timesteps: torch.Tensor, global_cond: torch.Tensor) -> Conditioning:
        """timesteps (S,) of the chunk's denoising steps, global_cond (B, D) -> FiLM for every (step, block).

        The timesteps' share is cached: a sampler passes the same schedule with every chunk."""
        key = tuple(timesteps.tolist())
        if key not in self._timestep_films:
            if len(self._timestep_films) >= 4:
                self._timestep_films.clear()
            self._timestep_films[key] = self._timestep_film(timesteps)
        return self._conditioning(self._timestep_films[key], global_cond)

    def _timestep_film(self, timesteps: torch.Tensor) -> torch.Tensor:
        """(S,) -> the timesteps' share of every FiLM output, (S, N = sum 2*C_out)."""
        t_emb = self.time_embed(timesteps.to(self._film_bias.device))  # (S, E)
        return F.linear(F.mish(t_emb), self._film_time_weight)

    def _conditioning(self, timestep_film: torch.Tensor, global_cond: torch.Tensor) -> Conditioning:
        """timestep_film (S, N), global_cond (B, D) -> FiLM outputs (S, B, N), split per block."""
        cond_film = F.linear(F.mish(global_cond.float()), self._film_cond_weight, self._film_bias)  # (B, N)
        return Conditioning(timestep_film[:, None] + cond_film[None])

    @torch.no_grad()
    def step(self, x: torch.Tensor, conditioning: Conditioning, i: int) -> torch.Tensor:
        """ε/velocity for x (B, H, A) at the chunk's i-th timestep -> (B, H, A), fp32."""
        return self.run(x, conditioning.step(i))

    def run(self, x: torch.Tensor, film: torch.Tensor) -> torch.Tensor:
        """x (B, H, A) and one step's FiLM outputs (B, N) -> ε/velocity (B, H, A), fp32."""
        if x.shape[1] % self.downsample_factor:
            raise ValueError(f"horizon {x.shape[1]} must be divisible by {self.downsample_factor} for this U-Net")
        film = iter(film.split(self._film_sizes, dim=-1))
        h, skips = x.float(), []
        for res1, res2, downsample in self.down:
            h = res2(res1(h, next(film)), next(film))
            skips.append(h)
            if downsample is not None:
                h = downsample(h).float()
        for res in self.mid:
            h = res(h, next(film))
        for res1, res2, upsample in self.up:
            h = torch.cat([h, skips.pop()], dim=-1)
            h = upsample(res2(res1(h, next(film)), next(film))).float()
        head_block, head_conv = self.head
        return head_conv(head_block(h))

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: torch.Tensor, global_cond: torch.Tensor) -> torch.Tensor:
        """Same signature as ConditionalUnet1D.forward, for one step: x (B, H, A), t (B,) or (1,), cond (B, D)."""
        conditioning = self._conditioning(self._timestep_film(t.reshape(-1)), global_cond)  # not cached
        if t.numel() != 1:
            # Per-row timesteps (training-style calls): condition each row on its own step.
            return self.step(x, _diagonal(conditioning), 0)
        return self.step(x, conditioning, 0)


class _StepModule(nn.Module):
    """`FastUnet1D.run` as a module that owns the view's tensors as buffers, which inductor's freezing then
    treats as constants (folded, and pre-packed for the GEMMs). FiLM enters as an input, so one graph serves
    every denoising step."""

    def __init__(self, view: FastUnet1D):
        super().__init__()
        self.view = view
        for i, tensor in enumerate(_tensors(vars(view))):
            self.register_buffer(f"tensor{i}", tensor, persistent=False)

    def forward(self, x: torch.Tensor, film: torch.Tensor) -> torch.Tensor:
        return self.view.run(x, film)


def _tensors(obj) -> Iterator[torch.Tensor]:
    """Every tensor held by the view's own objects (lists, tuples, dicts, our layer classes); not nn.Modules."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)
    elif hasattr(obj, "__dict__") and not isinstance(obj, nn.Module):
        yield from _tensors(vars(obj))


def compile_step(view: FastUnet1D) -> Callable[[torch.Tensor, Conditioning, int], torch.Tensor]:
    """`view.step`, compiled by inductor with the weights frozen in; same call signature.

    On CPU, max-autotune times each GEMM shape that `stream_linear` does not run once (the first call takes 20 s,
    up to two minutes without the kernel; later processes reuse inductor's on-disk cache). On CUDA, the step is
    captured as a CUDA graph. Needs a C++ compiler on CPU and an unpacked view (`pack=False`): inductor packs the
    frozen weights itself.
    """
    if view.packed:
        raise ValueError("compile_step needs a view built with pack=False; inductor packs the weights itself")
    import torch._inductor.config as inductor_config  # loaded here: importing the compiler stack costs ~1 s

    module = _StepModule(view).eval()
    settings = {"freezing": True}
    if next(module.buffers()).device.type == "cuda":
        settings["triton.cudagraphs"] = True
    else:
        # Per shape, the faster of oneDNN/MKL and inductor's own AVX-512 GEMM template (better at M = 4..16).
        # The C++ wrapper calls a step's ~100 kernels without Python in between: 2.7 ms less a DDIM-10 chunk.
        settings |= {"max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN", "cpp_wrapper": True,
                     "autotune_num_choices_displayed": 0, "max_autotune_report_choices_stats": False}  # quiet
    # Dynamo keeps its compiled graphs per code object and checks them in turn at every call: with one shared
    # `forward`, each further compiled view would add its guard checks to every step of the others (1 ms a step
    # with two views). A copy of the code object gives this view a cache of its own.
    forward = _StepModule.forward
    module.forward = types.MethodType(types.FunctionType(forward.__code__.replace(), forward.__globals__), module)
    compiled = torch.compile(module, dynamic=False, options={"guard_filter_fn": _identity_guards_on_modules})
    compiled_for = set()  # input signatures already compiled

    def step(x: torch.Tensor, conditioning: Conditioning, i: int) -> torch.Tensor:
        signature = (x.shape, x.dtype, x.device)
        if signature in compiled_for:
            return compiled(x, conditioning.step(i))
        # Inductor reads freezing and autotuning from its global config when it compiles, which happens lazily
        # (a new input shape), and torch.compile's `options` do not reach freezing. Patching that config costs
        # ~35 µs, so only calls that can compile pay it.
        with inductor_config.patch(settings):
            out = compiled(x, conditioning.step(i))
        compiled_for.add(signature)
        return out
    return step


def _identity_guards_on_modules(guards) -> list[bool]:
    """Of dynamo's guards on the step module, keep only identity checks. Its buffers are frozen into the compiled
    code, so checking each of them at every call (~0.5 ms per step) adds nothing, but the module's identity must
    stay checked: every step module shares one `forward`, and without it a second view would run the first
    one's weights."""
    return [not entry.orig_guard.source.is_unspecialized_nn_module() or entry.guard_type == "ID_MATCH"
            for entry in guards]


def _diagonal(conditioning: Conditioning) -> Conditioning:
    """FiLM for S = B per-row timesteps: row b takes step b's values -> one step of shape (1, B, N)."""
    return Conditioning(conditioning.film.diagonal(dim1=0, dim2=1).T.unsqueeze(0))
