"""Flow matching: the time convention, training-time distributions, and the Euler and adaptive samplers.

Convention (rectified flow, as AdaFlow and RTC use it): t = 0 is noise, t = 1 is data,

    x_t = (1 - t)·ε + t·a,        u = dx_t/dt = a - ε,

and a sampler integrates dx/dt = v(x, t) from x_0 = ε to x_1. π0 runs the mirror image (t = 1 is noise,
u = ε - a); its field converts with t_π0 = 1 - t and v_π0 = -v.

The velocity function is any callable `velocity_fn(x_t (B, ...), t (B,)) -> v (B, ...)`: the samplers know
nothing else about the network, so flow policies, GPC composition and RTC guidance all reuse them.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch

TIME_CONVENTION = "flow time t in [0, 1]; t=0 noise, t=1 data; x_t = (1-t)*noise + t*data; v = data - noise"
TIME_DISTRIBUTIONS = ("uniform", "beta")

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def interpolate(noise: torch.Tensor, data: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t for noise and data (B, ...) at times t (B,)."""
    t = t.reshape(-1, *[1] * (data.dim() - 1))
    return (1 - t) * noise + t * data


def target_velocity(noise: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
    """The straight path's constant velocity u = a - ε, the regression target of flow matching."""
    return data - noise


def sample_time(batch: int, distribution: str = "uniform", device: torch.device | str | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Training times t (batch,) in [0, 1].

    "uniform": U(0, 1) (rectified flow, AdaFlow). "beta": π0's choice, s ~ Beta(1.5, 1)·0.999 + 0.001 on its
    own time axis (s = 1 is noise), i.e. t = 1 - s here: density 1.5·(1 - t)^0.5 on [0, 0.999], so the noisy
    end, where the velocity is hardest to predict, gets most of the samples.
    """
    u = torch.rand(batch, device=device, generator=generator)
    if distribution == "uniform":
        return u
    if distribution == "beta":
        # Beta(1.5, 1) has CDF s^1.5: inverse-CDF sampling needs no distribution object and takes a generator.
        s = u.pow(2.0 / 3.0) * 0.999 + 0.001
        return 1 - s
    raise ValueError(f"unknown time distribution '{distribution}'; choose one of {TIME_DISTRIBUTIONS}")


def euler_times(steps: int, like: torch.Tensor) -> torch.Tensor:
    """The times (steps,) at which `steps` equal Euler steps evaluate the field: k / steps, on `like`'s device
    and in its dtype (built before the loop, so no step waits on a host-device copy)."""
    if steps < 1:
        raise ValueError(f"need at least one Euler step, got {steps=}")
    return torch.arange(steps, device=like.device, dtype=like.dtype) / steps


@torch.no_grad()
def euler_sample_steps(velocity_at: Callable[[torch.Tensor, int], torch.Tensor], noise: torch.Tensor,
                       steps: int) -> torch.Tensor:
    """Euler integration from x_0 = noise (B, ...) to x_1, with the field given per step index:
    `velocity_at(x, k)` is v(x, euler_times(steps)[k]). For callers that precompute per-step inputs."""
    x, dt = noise, 1.0 / steps
    for k in range(steps):
        x = x + dt * velocity_at(x, k)
    return x


@torch.no_grad()
def euler_sample(velocity_fn: VelocityFn, noise: torch.Tensor, steps: int) -> torch.Tensor:
    """Integrates from x_0 = noise (B, ...) to t = 1 in `steps` equal Euler steps; returns x_1 (B, ...)."""
    times, b = euler_times(steps, noise), noise.shape[0]
    return euler_sample_steps(lambda x, k: velocity_fn(x, times[k].expand(b)), noise, steps)


@torch.no_grad()
def adaptive_sample(velocity_fn: VelocityFn, sigma_fn: VelocityFn, noise: torch.Tensor, eta: float = 0.1,
                    max_steps: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """AdaFlow's variance-adaptive Euler sampler. Returns x_1 (B, ...) and the per-sample NFE (B,) int64.

    `sigma_fn(x_t, t) -> σ (B,)` estimates how far the true velocity may lie from the predicted one
    (σ² ≈ E‖u - v(x_t, t)‖²). Each sample steps h = min(max(η/σ, 1/N), 1 - t) with N = max_steps: where the
    velocity is certain (σ ≤ η, e.g. a unimodal action) one step goes all the way; where it is not, the
    sampler falls back to steps of down to 1/N. A finished sample stands still (h = 0) and stops counting NFE.
    Deciding whether every sample has finished reads one flag from the device per step; the fixed-step
    sampler above avoids even that.
    """
    if eta <= 0 or max_steps < 1:
        raise ValueError(f"need eta > 0 and max_steps >= 1, got {eta=} {max_steps=}")
    b = noise.shape[0]
    x = noise
    t = torch.zeros(b, device=noise.device, dtype=noise.dtype)
    nfe = torch.zeros(b, dtype=torch.long, device=noise.device)
    for _ in range(max_steps):
        remaining = 1 - t
        v = velocity_fn(x, t)
        h = torch.minimum((eta / sigma_fn(x, t)).clamp(min=1.0 / max_steps), remaining)
        # Accumulated float steps stop a hair short of 1; take the exact remainder then, so t lands on 1.
        h = torch.where(t + h >= 1 - 1e-6, remaining, h)
        x = x + h.reshape(-1, *[1] * (x.dim() - 1)) * v
        nfe += remaining > 0
        t = torch.where(h == remaining, torch.ones_like(t), t + h)
        if bool((t >= 1).all()):
            break
    return x, nfe


# ---- Real-time chunking (Black et al. 2025): a new chunk inpainted onto the one still executing ----------


@dataclass(frozen=True)
class Inpainting:
    """What a guided sampler pulls toward: `target` (B, H, A) in the sampler's space, per-index `weights`
    (H,), and the guidance cap β."""

    target: torch.Tensor
    weights: torch.Tensor
    max_guidance: float = 5.0


def guided_euler_sample(velocity_fn: VelocityFn, noise: torch.Tensor, steps: int, target: torch.Tensor,
                        weights: torch.Tensor, max_guidance: float = 5.0) -> torch.Tensor:
    """Euler sampling with RTC's ΠGDM-style inpainting guidance toward `target`; returns x_1 (B, H, A).

    At each step the field's own guess of the end point, x̂_1 = x_t + (1 - t)·v(x_t, t), is pulled toward the
    target where the weights (H,) say so: v += c(t)·(∂x̂_1/∂x_t)ᵀ [W ⊙ (target - x̂_1)], with
    c(t) = min(β, (1 - t)/t · (t² + (1 - t)²)/(1 - t)²) and β = `max_guidance`. One vector-Jacobian product
    per step, so a guided step costs about three network evaluations. β = 0 (or W = 0) is plain Euler.
    """
    if steps < 1:
        raise ValueError(f"need at least one Euler step, got {steps=}")
    b = noise.shape[0]
    w = weights.to(noise).reshape(1, -1, *[1] * (noise.dim() - 2))
    x, dt = noise, 1.0 / steps
    for k in range(steps):
        t = k / steps
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            v = velocity_fn(x_in, torch.full((b,), t, device=noise.device, dtype=noise.dtype))
            x1_hat = x_in + (1 - t) * v
            error = w * (target - x1_hat)
            (pull,) = torch.autograd.grad(x1_hat, x_in, grad_outputs=error.detach())
        scale = max_guidance if t == 0 else min(max_guidance, (1 - t) / t * (t**2 + (1 - t) ** 2) / (1 - t) ** 2)
        x = x + dt * (v.detach() + scale * pull)
    return x.detach()
