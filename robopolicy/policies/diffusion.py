"""Diffusion Policy (Chi et al., 2023): ε-prediction DDPM over action chunks, U-Net or transformer denoiser.

Training: x_0 is the normalised action chunk (B, H, A); t ~ U{0..T-1}; x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε;
loss = ‖ε - ε_θ(x_t, t, obs)‖². Sampling runs DDPM or DDIM (diffusers) from Gaussian noise.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from robopolicy.generative.diffusion import SAMPLERS, make_scheduler, sample
from robopolicy.nn.obs_encoder import ObservationEncoder, is_image_key
from robopolicy.nn.transformer import TransformerDenoiser
from robopolicy.nn.unet1d import ConditionalUnet1D
from robopolicy.policies.base import Policy, PolicyConfig


@dataclass
class DiffusionConfig(PolicyConfig):
    """Args (beyond PolicyConfig):
        backbone: "unet" (conditional 1-D U-Net, FiLM) or "transformer" (causal decoder).
        down_dims, kernel_size, n_groups, step_embed_dim: U-Net widths per level, conv kernel, GroupNorm
            groups, timestep-embedding size.
        n_layer, n_head, n_emb, p_drop_attn, causal_attn: transformer size and attention dropout.
        crop_shape: image crop (h, w); None keeps the full frame. image_feature_dim: per-camera feature size.
        num_train_timesteps, beta_schedule, clip_sample: the DDPM forward process.
        sampler, num_inference_steps: default chunk sampler ("ddpm" or "ddim") and its step count.
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
    num_train_timesteps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    clip_sample: bool = True
    sampler: str = "ddpm"
    num_inference_steps: int = 100

    def __post_init__(self):
        super().__post_init__()
        if self.backbone not in ("unet", "transformer"):
            raise ValueError(f"backbone must be 'unet' or 'transformer', got {self.backbone=}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler=}")
        if self.backbone == "unet" and self.horizon % 2 ** (len(self.down_dims) - 1):
            raise ValueError(f"U-Net needs horizon divisible by 2**(levels-1): {self.horizon=} {self.down_dims=}")
        if not 1 <= self.num_inference_steps <= self.num_train_timesteps:
            raise ValueError(f"need 1 <= {self.num_inference_steps=} <= {self.num_train_timesteps=}")


# Named presets. "paper" reproduces the reference repository's defaults per observation type; "cpu" is small
# enough to train to a useful policy in minutes on two cores. "image" entries apply on top when the store has
# camera keys. Training-side values (optimizer, batch) sit beside the network values they were tuned with.
PRESETS = {
    "paper": {
        "policy": dict(backbone="unet", down_dims=(256, 512, 1024), step_embed_dim=256, kernel_size=5,
                       horizon=16, n_obs_steps=2, n_action_steps=8, sampler="ddpm", num_inference_steps=100),
        "train": dict(batch_size=256, lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, warmup_steps=500),
        "image": {"policy": dict(down_dims=(512, 1024, 2048), step_embed_dim=128), "train": dict(batch_size=64)},
    },
    "cpu": {
        "policy": dict(backbone="unet", down_dims=(64, 128, 256), step_embed_dim=64, kernel_size=5,
                       horizon=16, n_obs_steps=2, n_action_steps=8, sampler="ddim", num_inference_steps=10),
        "train": dict(batch_size=256, lr=1e-3, betas=(0.95, 0.999), weight_decay=1e-6, warmup_steps=100),
        "image": {"policy": dict(image_feature_dim=32), "train": dict(batch_size=32)},
    },
    "paper-transformer": {
        "policy": dict(backbone="transformer", n_layer=8, n_head=4, n_emb=256, p_drop_attn=0.01, horizon=16,
                       n_obs_steps=2, n_action_steps=8, sampler="ddpm", num_inference_steps=100),
        "train": dict(batch_size=256, lr=1e-4, betas=(0.9, 0.95), weight_decay=1e-1, warmup_steps=1000),
        "image": {"policy": dict(horizon=10, p_drop_attn=0.3), "train": dict(batch_size=64, weight_decay=1e-3)},
    },
    "cpu-transformer": {
        "policy": dict(backbone="transformer", n_layer=4, n_head=4, n_emb=128, p_drop_attn=0.01, horizon=16,
                       n_obs_steps=2, n_action_steps=8, sampler="ddim", num_inference_steps=10),
        "train": dict(batch_size=256, lr=5e-4, betas=(0.9, 0.95), weight_decay=1e-3, warmup_steps=100),
        "image": {"policy": dict(image_feature_dim=32), "train": dict(batch_size=32)},
    },
}


class DiffusionPolicy(Policy):
    name = "diffusion"
    config_class = DiffusionConfig
    presets = PRESETS

    # What GPC and DSRL read to drive `denoise` without special cases.
    parameterization = "epsilon"
    time_convention = "integer DDPM step t in [0, num_train_timesteps), t=0 is clean"

    def __init__(self, config: DiffusionConfig):
        super().__init__(config)
        c = config
        if any(is_image_key(k) for k in c.obs_shapes) and c.crop_shape is None:
            h, w = next(c.obs_shapes[k][:2] for k in c.obs_keys if is_image_key(k))
            c.crop_shape = (int(h * 0.9), int(w * 0.9))
        self.obs_encoder = ObservationEncoder(c.obs_shapes, c.crop_shape, c.image_feature_dim)
        d = self.obs_encoder.feature_dim
        if c.backbone == "unet":
            self.denoiser = ConditionalUnet1D(c.action_dim, d * c.n_obs_steps, tuple(c.down_dims), c.kernel_size,
                                              c.n_groups, c.step_embed_dim)
        else:
            self.denoiser = TransformerDenoiser(c.action_dim, d, c.horizon, c.n_obs_steps, c.n_layer, c.n_head,
                                                c.n_emb, p_drop_attn=c.p_drop_attn, causal_attn=c.causal_attn)
        self.noise_scheduler = make_scheduler("ddpm", c.num_train_timesteps, c.beta_schedule, c.clip_sample)
        self._samplers = {}

    def encode_obs(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Normalised observations (B, >=To, ...) -> condition: (B, To*D) for the U-Net, (B, To, D) for the transformer."""
        window = {k: obs[k][:, : self.config.n_obs_steps] for k in self.config.obs_keys}
        features = self.obs_encoder(window)
        return features.flatten(1) if self.config.backbone == "unet" else features

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """ε_θ(x_t, t | cond): x_t (B, H, A), t (B,) or (1,) integer steps -> ε (B, H, A)."""
        return self.denoiser(x_t, t, cond)

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        actions = batch["action"]
        cond = self.encode_obs(batch)
        noise = torch.randn_like(actions)
        t = torch.randint(0, self.config.num_train_timesteps, (actions.shape[0],), device=actions.device)
        noisy = self.noise_scheduler.add_noise(actions, noise, t)
        loss = F.mse_loss(self.denoise(noisy, t, cond), noise)
        return {"loss": loss}

    def scheduler_for(self, sampler: str):
        if sampler not in self._samplers:
            c = self.config
            self._samplers[sampler] = make_scheduler(sampler, c.num_train_timesteps, c.beta_schedule, c.clip_sample)
        return self._samplers[sampler]

    @torch.no_grad()
    def predict_chunk(self, obs: dict[str, torch.Tensor], noise: torch.Tensor | None = None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """Normalised obs (B, To, ...) -> normalised action chunk (B, H, A). `noise` (B, H, A) fixes x_T."""
        cond = self.encode_obs(obs)
        batch = cond.shape[0]
        c = self.config
        if noise is None:
            noise = torch.randn(batch, c.horizon, c.action_dim, device=cond.device, generator=generator)
        scheduler = self.scheduler_for(c.sampler)
        return sample(lambda x, t: self.denoise(x, t, cond), scheduler, noise, c.num_inference_steps, generator)

    @property
    def sampler_name(self) -> str:
        return f"{self.config.sampler}-{self.config.num_inference_steps}"

    @property
    def nfe(self) -> int:
        return self.config.num_inference_steps

    def optim_groups(self, weight_decay: float) -> list[dict]:
        if self.config.backbone != "transformer":
            return super().optim_groups(weight_decay)
        exempt = {f"denoiser.{n}" for n in self.denoiser.no_decay_parameter_names()}
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            (no_decay if name in exempt else decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
