"""DDPM / DDIM noise schedules and the sampling loop, on diffusers' schedulers.

The denoiser is any callable `denoise(x_t (B, H, A), t (B,), cond) -> ε`; the loop knows nothing else
about the network, so every diffusion-family policy (and GPC composition) reuses it.

`reverse_process` + `sample_steps` are the same DDPM / DDIM updates with every coefficient computed before the
loop (as the scheduler computes it, in float32): no scheduler Python and no host-device sync per step, and the
denoiser learns the step index, so it can precompute whatever depends only on the timestep (the fast U-Net's
FiLM tables).
"""

from collections.abc import Callable
from dataclasses import dataclass

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


@dataclass(frozen=True)
class ReverseStep:
    """One update x_t -> x_prev:  x0 = (x_t - sqrt_one_minus_alpha_bar·ε) / sqrt_alpha_bar, clipped;
    x_prev = coef_x0·x0 + coef_xt·x_t + coef_eps·ε + noise_std·z."""

    t: int
    sqrt_one_minus_alpha_bar: float
    sqrt_alpha_bar: float
    coef_x0: float
    coef_xt: float
    coef_eps: float
    noise_std: float


@dataclass(frozen=True)
class ReverseProcess:
    timesteps: torch.Tensor  # (S,) int64, in sampling order
    steps: tuple[ReverseStep, ...]
    clip: float | None  # x0 is clipped to [-clip, clip]


def reverse_process(scheduler, num_inference_steps: int) -> ReverseProcess:
    """The coefficient table of `scheduler`'s reverse process (DDPM `fixed_small` or DDIM with eta=0, ε-prediction).

    Raises ValueError for any other configuration; `sample` still handles those through the scheduler.
    """
    config = scheduler.config
    if config.prediction_type != "epsilon" or config.thresholding:
        raise ValueError(f"precomputed sampling needs ε-prediction without thresholding, got {dict(config)}")
    is_ddim = isinstance(scheduler, DDIMScheduler)
    if not is_ddim and (not isinstance(scheduler, DDPMScheduler) or config.variance_type != "fixed_small"):
        raise ValueError(f"precomputed sampling supports DDIM and DDPM (fixed_small), got {type(scheduler).__name__}")
    scheduler.set_timesteps(num_inference_steps)
    timesteps = scheduler.timesteps.clone()
    alpha_bar = scheduler.alphas_cumprod  # float32, as the scheduler's own step uses it
    final = scheduler.final_alpha_cumprod if is_ddim else scheduler.one
    stride = config.num_train_timesteps // num_inference_steps
    ts = [int(t) for t in timesteps]
    steps = []
    for i, t in enumerate(ts):
        prev = t - stride if is_ddim else (ts[i + 1] if i + 1 < len(ts) else -1)
        a_t = alpha_bar[t]
        a_prev = alpha_bar[prev] if prev >= 0 else final
        b_t, b_prev = 1 - a_t, 1 - a_prev
        if is_ddim:  # eta = 0: deterministic
            coef_x0, coef_xt, coef_eps, std = a_prev ** 0.5, 0.0, b_prev ** 0.5, 0.0
        else:
            current_alpha = a_t / a_prev
            current_beta = 1 - current_alpha
            coef_x0 = (a_prev ** 0.5 * current_beta) / b_t
            coef_xt = current_alpha ** 0.5 * b_prev / b_t
            coef_eps = 0.0
            std = (b_prev / b_t * current_beta).clamp(min=1e-20) ** 0.5 if t > 0 else 0.0
        steps.append(ReverseStep(t, float(b_t ** 0.5), float(a_t ** 0.5), float(coef_x0), float(coef_xt),
                                 float(coef_eps), float(std)))
    clip = float(config.clip_sample_range) if config.clip_sample else None
    return ReverseProcess(timesteps, tuple(steps), clip)


@torch.no_grad()
def sample_steps(denoise_step: Callable[[torch.Tensor, int], torch.Tensor], process: ReverseProcess,
                 noise: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Runs `process` from `noise` (B, H, A); `denoise_step(x, i)` returns ε at step i (timestep process.timesteps[i]).

    Same arithmetic, in the same order, as diffusers' DDPM/DDIM `step`, and the same noise draws from `generator`.
    """
    x = noise
    for i, s in enumerate(process.steps):
        eps = denoise_step(x, i)
        x0 = (x - s.sqrt_one_minus_alpha_bar * eps) / s.sqrt_alpha_bar
        if process.clip is not None:
            x0 = x0.clamp(-process.clip, process.clip)
        x_prev = s.coef_x0 * x0
        if s.coef_xt:
            x_prev = x_prev + s.coef_xt * x
        if s.coef_eps:
            x_prev = x_prev + s.coef_eps * eps
        if s.noise_std:
            x_prev = x_prev + s.noise_std * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = x_prev
    return x
