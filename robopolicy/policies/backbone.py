"""The observation encoder and action-chunk network that the diffusion and flow policies share (Chi et al.).

Both families condition the same 1-D U-Net (FiLM) or causal transformer on the same observation features;
only what the network's time input and output mean differs. Building them in one place keeps comparisons
across generative families like for like, and a checkpoint's `obs_encoder.*` / `denoiser.*` weights the same.
"""

from dataclasses import dataclass

import torch
from torch import nn

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
