"""Diffusion Policy (Chi et al., 2023): ε-prediction DDPM over action chunks, U-Net or transformer denoiser.

Training: x_0 is the normalised action chunk (B, H, A); t ~ U{0..T-1}; x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε;
loss = ‖ε - ε_θ(x_t, t, obs)‖². Sampling runs DDPM or DDIM (diffusers) from Gaussian noise.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from robopolicy.generative.diffusion import (SAMPLERS, ReverseProcess, make_scheduler, reverse_process, sample,
                                          sample_steps)
from robopolicy.policies.backbone import (BackboneConfig, FastUnetInference, backbone_optim_groups, build_backbone,
                                          encode_obs)
from robopolicy.policies.base import Policy


@dataclass
class DiffusionConfig(BackboneConfig):
    """Args (beyond BackboneConfig: the U-Net / transformer and observation encoder sizes):
        num_train_timesteps, beta_schedule, clip_sample: the DDPM forward process.
        sampler, num_inference_steps: default chunk sampler ("ddpm" or "ddim") and its step count.
    """

    num_train_timesteps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    clip_sample: bool = True
    sampler: str = "ddpm"
    num_inference_steps: int = 100

    def __post_init__(self):
        super().__post_init__()
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler=}")
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


class DiffusionPolicy(FastUnetInference, Policy):
    name = "diffusion"
    config_class = DiffusionConfig
    presets = PRESETS

    # What GPC and DSRL read to drive `denoise` without special cases.
    parameterization = "epsilon"
    time_convention = "integer DDPM step t in [0, num_train_timesteps), t=0 is clean"

    def __init__(self, config: DiffusionConfig, cond_feature_dim: int | None = None):
        super().__init__(config)
        c = config
        self.obs_encoder, self.denoiser = build_backbone(c, cond_feature_dim)
        self.noise_scheduler = make_scheduler("ddpm", c.num_train_timesteps, c.beta_schedule, c.clip_sample)
        self._samplers, self._processes = {}, {}
        self._init_fast_inference()

    def encode_obs(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Normalised observations (B, >=To, ...) -> condition: (B, To*D) for the U-Net, (B, To, D) for the transformer."""
        return encode_obs(self.obs_encoder, obs, self.config)

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """ε_θ(x_t, t | cond): x_t (B, H, A), t (B,) or (1,) integer steps -> ε (B, H, A)."""
        return self.denoiser(x_t, t, cond)

    fast_view_matches_denoise = True  # the U-Net's own time input is the DDPM step

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"loss": self.epsilon_loss(batch["action"], self.encode_obs(batch))}

    def epsilon_loss(self, actions: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """‖ε - ε_θ(x_t, t | cond)‖² for clean normalised actions (B, H, A) and t ~ U{0..T-1}."""
        noise = torch.randn_like(actions)
        t = torch.randint(0, self.config.num_train_timesteps, (actions.shape[0],), device=actions.device)
        noisy = self.noise_scheduler.add_noise(actions, noise, t)
        return F.mse_loss(self.denoise(noisy, t, cond), noise)

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
        fast = self._fast_view()
        if fast is None:
            scheduler = self.scheduler_for(c.sampler)
            return sample(lambda x, t: self.denoise(x, t, cond), scheduler, noise, c.num_inference_steps, generator)
        view, step = fast
        process = self.process_for(c.sampler, c.num_inference_steps)
        conditioning = view.condition(process.timesteps, cond)
        return sample_steps(lambda x, i: step(x, conditioning, i), process, noise, generator)

    def process_for(self, sampler: str, steps: int) -> ReverseProcess:
        """The sampler's precomputed coefficient table for `steps` denoising steps (cached)."""
        if (sampler, steps) not in self._processes:
            c = self.config
            scheduler = make_scheduler(sampler, c.num_train_timesteps, c.beta_schedule, c.clip_sample)
            self._processes[sampler, steps] = reverse_process(scheduler, steps)
        return self._processes[sampler, steps]

    @property
    def sampler_name(self) -> str:
        return f"{self.config.sampler}-{self.config.num_inference_steps}"

    @property
    def nfe(self) -> int:
        return self.config.num_inference_steps

    def optim_groups(self, weight_decay: float) -> list[dict]:
        return backbone_optim_groups(self, weight_decay)
