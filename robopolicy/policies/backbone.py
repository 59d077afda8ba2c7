"""The observation encoder and action-chunk network that the diffusion and flow policies share (Chi et al.).

Both families condition the same 1-D U-Net (FiLM) or causal transformer on the same observation features;
only what the network's time input and output mean differs. Building them in one place keeps comparisons
across generative families like for like, and a checkpoint's `obs_encoder.*` / `denoiser.*` weights the same.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from robopolicy.nn.fast_unet import PRECISIONS, FastUnet1D, compile_step
from robopolicy.nn.obs_encoder import ObservationEncoder, is_image_key
from robopolicy.nn.transformer import TransformerDenoiser
from robopolicy.nn.unet1d import ConditionalUnet1D
from robopolicy.policies.base import Policy, PolicyConfig


@dataclass
class BackboneConfig(PolicyConfig):
    """Args (beyond PolicyConfig):
        backbone: "unet" (conditional 1-D U-Net, FiLM) or "transformer" (causal decoder).
        down_dims, kernel_size, n_groups, step_embed_dim: U-Net widths per level, conv kernel, GroupNorm
            groups, timestep-embedding size.
        n_layer, n_head, n_emb, p_drop_attn, causal_attn: transformer size and attention dropout.
        crop_shape: image crop (h, w); None: 90% of the frame. image_feature_dim: per-camera feature size.
    """

    backbone: str = "unet"
    down_dims: tuple[int, ...] = (256, 512, 1024)
    kernel_size: int = 5
    n_groups: int = 8
    step_embed_dim: int = 256
    n_layer: int = 8
    n_head: int = 4
    n_emb: int = 256
    p_drop_attn: float = 0.01
    causal_attn: bool = True
    crop_shape: tuple[int, int] | None = None
    image_feature_dim: int = 64

    def __post_init__(self):
        super().__post_init__()
        if self.backbone not in ("unet", "transformer"):
            raise ValueError(f"backbone must be 'unet' or 'transformer', got {self.backbone=}")
        if self.backbone == "unet" and self.horizon % 2 ** (len(self.down_dims) - 1):
            raise ValueError(f"U-Net needs horizon divisible by 2**(levels-1): {self.horizon=} "
                             f"{self.down_dims=}")


def build_obs_encoder(c) -> ObservationEncoder:
    """The observation encoder for any config with obs_shapes, crop_shape and image_feature_dim.

    Fills `c.crop_shape` with 90% of the first camera's frame when cameras are present and none is set.
    """
    if any(is_image_key(k) for k in c.obs_shapes) and c.crop_shape is None:
        h, w = next(c.obs_shapes[k][:2] for k in c.obs_keys if is_image_key(k))
        c.crop_shape = (int(h * 0.9), int(w * 0.9))
    return ObservationEncoder(c.obs_shapes, c.crop_shape, c.image_feature_dim)


def build_backbone(c: BackboneConfig, cond_feature_dim: int | None = None) -> tuple[ObservationEncoder, nn.Module]:
    """(observation encoder, chunk network) for the config; fills `c.crop_shape` when cameras are present.

    The network is conditioned on per-step features of the encoder's width, or of `cond_feature_dim` when a
    policy transforms the features first (SeedPolicy's SEGA).
    """
    obs_encoder = build_obs_encoder(c)
    d = cond_feature_dim or obs_encoder.feature_dim
    if c.backbone == "unet":
        network = ConditionalUnet1D(c.action_dim, d * c.n_obs_steps, tuple(c.down_dims), c.kernel_size,
                                    c.n_groups, c.step_embed_dim)
    else:
        network = TransformerDenoiser(c.action_dim, d, c.horizon, c.n_obs_steps, c.n_layer, c.n_head, c.n_emb,
                                      p_drop_attn=c.p_drop_attn, causal_attn=c.causal_attn)
    return obs_encoder, network


def encode_obs(obs_encoder: ObservationEncoder, obs: dict[str, torch.Tensor], c: BackboneConfig
               ) -> torch.Tensor:
    """Normalised obs (B, >=To, ...) -> condition (B, To*D) (U-Net) or (B, To, D) (transformer)."""
    window = {k: obs[k][:, : c.n_obs_steps] for k in c.obs_keys}
    features = obs_encoder(window)
    return features.flatten(1) if c.backbone == "unet" else features


def backbone_optim_groups(policy: Policy, weight_decay: float, network_name: str = "denoiser") -> list[dict]:
    """AdamW groups; the transformer's biases, norms and position embeddings are not decayed (minGPT)."""
    network = getattr(policy, network_name)
    if not isinstance(network, TransformerDenoiser):
        return [{"params": [p for p in policy.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    exempt = {f"{network_name}.{n}" for n in network.no_decay_parameter_names()}
    decay, no_decay = [], []
    for name, p in policy.named_parameters():
        if p.requires_grad:
            (no_decay if name in exempt else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _same_weights(a: tuple, b: tuple) -> bool:
    return a[:2] == b[:2] and torch.equal(a[2], b[2])


class FastUnetInference:
    """`set_inference` and the cached `FastUnet1D` view, for a policy whose `denoiser` may be a ConditionalUnet1D.

    The view reproduces `self.denoiser(x, t, cond)` with the network's own time input, so a policy's `denoise`
    must be that call (up to how it maps its time to the network's): a class declares it by setting
    `fast_view_matches_denoise = True` next to its `denoise`. A subclass that overrides `denoise` without
    declaring it again runs the eager module.
    """

    fast_view_matches_denoise = False

    def _init_fast_inference(self) -> None:
        self._fast_views = {}  # (precision, compile) -> (weights key, view, step)
        self.set_inference()

    def set_inference(self, fast: bool = True, precision: str = "fp32", compile: bool = False):
        """How `predict_chunk` runs the U-Net (the weights, the checkpoint and `denoise` stay the same).

        fast: the inference view `FastUnet1D` (conv as packed GEMMs, FiLM precomputed per chunk, schedule
            coefficients precomputed); equal to the eager module to ~1e-5 relative in fp32. On CPUs with AVX-512
            its GEMMs run robopolicy's `stream_linear` kernel (built on first use; ROBOPOLICY_STREAM_LINEAR=0
            keeps oneDNN's).
        precision: "fp32", or "bf16" weights with fp32 accumulation (fast path only; ~1e-2 relative on ε).
        compile: inductor-compile the fast step with the weights frozen in (`fast_unet.compile_step`): on CPU
            with per-shape GEMM autotuning (first call 20 s to 2 min), on CUDA as a CUDA graph (untested on GPUs).

        The view holds its own (packed) copy of the weights and is rebuilt when they change: in place through
        autograd-visible ops (optimizer steps, load_state_dict), by reallocation (.to), or through `.data` as
        far as a sample of every tensor shows (EMA's copy_to). After editing a few weights by hand through
        `.data`, call set_inference() again: it drops the cached views.
        """
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got '{precision}'")
        if precision != "fp32" and not fast:
            raise ValueError(f"precision='{precision}' needs fast=True (the eager module runs in fp32)")
        self.fast_inference, self.inference_precision, self.inference_compile = fast, precision, compile
        self._fast_views.clear()
        return self

    def __getstate__(self) -> dict:
        # The packed views hold oneDNN tensors that can be neither copied nor pickled; a copy builds its own.
        state = self.__dict__.copy()
        state["_fast_views"] = {}
        return state

    def _fast_view(self) -> tuple[FastUnet1D, Callable] | None:
        """(view, its step function), cached and rebuilt whenever the U-Net's weights changed (training, EMA,
        loading); None when predict_chunk runs the eager module (option off, transformer, `denoise` overridden)."""
        owner = next(k for k in type(self).__mro__ if "denoise" in vars(k))
        if not (self.fast_inference and isinstance(self.denoiser, ConditionalUnet1D)
                and vars(owner).get("fast_view_matches_denoise", False)):
            return None
        params = list(self.denoiser.parameters())
        with torch.no_grad():  # 16 values per tensor: sees writes that bypass the version counter (.data)
            sample = torch.cat([p.reshape(-1)[:: max(1, p.numel() // 16)] for p in params])
        weights = (tuple(p._version for p in params), tuple(p.data_ptr() for p in params), sample)
        if any(not _same_weights(entry[0], weights) for entry in self._fast_views.values()):
            self._fast_views.clear()  # stale copies of old weights: free them
        option = (self.inference_precision, self.inference_compile)
        if option not in self._fast_views:
            view = FastUnet1D(self.denoiser, self.inference_precision, horizon=self.config.horizon,
                              pack=not self.inference_compile)
            step = compile_step(view) if self.inference_compile else view.step
            self._fast_views[option] = (weights, view, step)
        return self._fast_views[option][1:]
