"""DDPM / DDIM noise schedules and the sampling loop, on diffusers' schedulers.

The denoiser is any callable `denoise(x_t (B, H, A), t (B,), cond) -> ε`; the loop knows nothing else
about the network, so every diffusion-family policy (and GPC composition) reuses it.
"""

from collections.abc import Callable

import torch
from diffusers import DDIMScheduler, DDPMScheduler

SAMPLERS = ("ddpm", "ddim")


def make_scheduler(sampler: str, num_train_timesteps: int = 100, beta_schedule: str = "squaredcos_cap_v2",
                   clip_sample: bool = True, prediction_type: str = "epsilon"):
    """Diffusion Policy's schedule: 100 steps, squared-cosine betas, ε-prediction, samples clipped to [-1, 1]."""
    common = dict(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule, clip_sample=clip_sample,
                  prediction_type=prediction_type)
    if sampler == "ddpm":
        return DDPMScheduler(variance_type="fixed_small", **common)
    if sampler == "ddim":
        return DDIMScheduler(set_alpha_to_one=True, steps_offset=0, **common)
    raise ValueError(f"unknown sampler '{sampler}'; choose one of {SAMPLERS}")


@torch.no_grad()
def sample(denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], scheduler, noise: torch.Tensor,
           num_inference_steps: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Runs the reverse process from `noise` (B, H, A) and returns x_0 (B, H, A).

    Timesteps are moved to the device once, before the loop, so no step waits on a host-device copy.
    """
    scheduler.set_timesteps(num_inference_steps, device=noise.device)
    x = noise
    for t in scheduler.timesteps:
        eps = denoise(x, t.reshape(1))
        x = scheduler.step(eps, t, x, generator=generator).prev_sample
    return x
