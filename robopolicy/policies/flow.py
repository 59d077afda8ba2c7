"""Flow-matching policy (π0's objective, AdaFlow's adaptive sampler) on Diffusion Policy's networks.

Training: a is the normalised action chunk (B, H, A), ε ~ N(0, I), t ~ U(0, 1) or π0's noise-skewed Beta;
x_t = (1 - t)·ε + t·a; loss = ‖(a - ε) - v_θ(x_t, t, obs)‖² (conditional flow matching).
Sampling integrates dx/dt = v_θ from noise at t = 0 to actions at t = 1: fixed-step Euler (1-10 steps), or
AdaFlow's adaptive steps driven by a small σ head that predicts how uncertain the velocity is.

The σ head (AdaFlow, Hu et al. 2024) is trained jointly with NLL ‖u - v̂‖²/(2σ²) + log σ on the *detached*
velocity error and detached observation features, so it never changes what the velocity network learns:
the same gradients as AdaFlow's second stage (frozen flow, fit σ), in one run. AdaFlow reads σ from pooled
U-Net features; a separate MLP on (x_t, t, obs) needs no change to the shared backbones and serves the
transformer too.
"""

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from robopolicy.generative.flow import (
    TIME_CONVENTION,
    TIME_DISTRIBUTIONS,
    Inpainting,
    adaptive_sample,
    euler_sample,
    euler_sample_steps,
    euler_times,
    guided_euler_sample,
    interpolate,
    sample_time,
    target_velocity,
)
from robopolicy.nn.embeddings import SinusoidalEmbedding
from robopolicy.policies.backbone import (BackboneConfig, FastUnetInference, backbone_optim_groups, build_backbone,
                                          encode_obs)
from robopolicy.policies.base import Policy
from robopolicy.policies.diffusion import PRESETS as DIFFUSION_PRESETS

SAMPLERS = ("euler", "adaptive")


@dataclass
class FlowConfig(BackboneConfig):
    """Args (beyond BackboneConfig):
        time_scale: flow time t in [0, 1] is multiplied by this before the sinusoidal embedding; 100 spans the
            same range as Diffusion Policy's 100 DDPM steps (AdaFlow's pos_emb_scale).
        time_distribution: training times, "uniform" or "beta" (π0: skewed towards noise).
        sampler: "euler" (fixed steps) or "adaptive" (AdaFlow; needs sigma_head).
        num_inference_steps: Euler steps; for "adaptive", N: the step cap, and 1/N the smallest step.
        sigma_head: also learn AdaFlow's σ(x_t, t | obs), which the adaptive sampler needs.
        adaptive_eta: η in the adaptive step h = min(max(η/σ, 1/N), 1 - t).
    """

    time_scale: float = 100.0
    time_distribution: str = "beta"
    sampler: str = "euler"
    num_inference_steps: int = 10
    sigma_head: bool = True
    adaptive_eta: float = 0.1

    def __post_init__(self):
        super().__post_init__()
        if self.sampler not in SAMPLERS:
            raise ValueError(f"flow sampler must be one of {SAMPLERS}, got {self.sampler=}")
        if self.sampler == "adaptive" and not self.sigma_head:
            raise ValueError("the adaptive sampler needs the σ head: set sigma_head=True and train with it")
        if self.time_distribution not in TIME_DISTRIBUTIONS:
            raise ValueError(f"time_distribution must be one of {TIME_DISTRIBUTIONS}, got "
                             f"{self.time_distribution=}")
        if self.num_inference_steps < 1:
            raise ValueError(f"need num_inference_steps >= 1, got {self.num_inference_steps=}")
        if self.adaptive_eta <= 0 or self.time_scale <= 0:
            raise ValueError(f"need adaptive_eta > 0 and time_scale > 0, got {self.adaptive_eta=} "
                             f"{self.time_scale=}")


def _from_diffusion(preset: str) -> dict:
    """Diffusion Policy's preset with its sampler swapped for 10 Euler steps: same networks, same training."""
    entry = copy.deepcopy(DIFFUSION_PRESETS[preset])
    entry["policy"].update(sampler="euler", num_inference_steps=10)
    return entry


# Network sizes and optimiser settings are Diffusion Policy's for the same preset name, so a flow-vs-diffusion
# comparison changes only the generative objective and the sampler. π0 samples with 10 Euler steps.
PRESETS = {name: _from_diffusion(name) for name in ("paper", "cpu", "paper-transformer", "cpu-transformer")}


class SigmaHead(nn.Module):
    """log σ(x_t, t | obs) -> (B,): AdaFlow's estimate of the velocity's uncertainty, a small MLP.

    Inputs: x_t (B, H, A), scaled time (B,), condition (B, To*D) or (B, To, D).
    """

    def __init__(self, chunk_dim: int, cond_dim: int, time_dim: int = 64, hidden: int = 256):
        super().__init__()
        self.time_emb = SinusoidalEmbedding(time_dim)
        self.mlp = nn.Sequential(nn.Linear(chunk_dim + cond_dim + time_dim, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        b = x_t.shape[0]
        features = torch.cat([x_t.flatten(1), cond.flatten(1), self.time_emb(t.expand(b))], dim=-1)
        return self.mlp(features).squeeze(-1)


class FlowPolicy(FastUnetInference, Policy):
    name = "flow"
    config_class = FlowConfig
    presets = PRESETS

    # What GPC, DSRL and RTC read to drive `denoise` without special cases.
    parameterization = "velocity"
    time_convention = TIME_CONVENTION

    def __init__(self, config: FlowConfig):
        super().__init__(config)
        c = config
        self.obs_encoder, self.denoiser = build_backbone(c)
        if c.sigma_head:
            cond_dim = self.obs_encoder.feature_dim * c.n_obs_steps
            self.sigma_head = SigmaHead(c.horizon * c.action_dim, cond_dim)
        # Per-sample NFE of the last batch, and the running mean over adaptive chunks (their NFE varies).
        self.last_nfe: torch.Tensor | None = None
        self._nfe_total, self._chunks = 0.0, 0
        self._init_fast_inference()

    def encode_obs(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Normalised obs (B, >=To, ...) -> condition (B, To*D) (U-Net) or (B, To, D) (transformer)."""
        return encode_obs(self.obs_encoder, obs, self.config)

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """v_θ(x_t, t | cond): x_t (B, H, A), flow time t (B,) or (1,) in [0, 1] -> velocity (B, H, A)."""
        return self.denoiser(x_t, t * self.config.time_scale, cond)

    fast_view_matches_denoise = True  # the view takes the network's time, t * time_scale (`_fast_euler`)

    def log_sigma(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """AdaFlow's log σ(x_t, t | cond) (B,); σ² estimates ‖u - v_θ(x_t, t)‖² summed over the chunk."""
        if not self.config.sigma_head:
            raise RuntimeError("this flow policy was built without a σ head (sigma_head=False)")
        return self.sigma_head(x_t, t * self.config.time_scale, cond)

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        actions = batch["action"]
        cond = self.encode_obs(batch)
        noise = torch.randn_like(actions)
        t = sample_time(actions.shape[0], self.config.time_distribution, actions.device)
        x_t = interpolate(noise, actions, t)
        target = target_velocity(noise, actions)
        velocity = self.denoise(x_t, t, cond)
        flow_loss = F.mse_loss(velocity, target)
        losses = {"loss": flow_loss, "flow_loss": flow_loss}
        if self.config.sigma_head:
            error = (target - velocity.detach()).pow(2).sum(dim=(1, 2))
            log_sigma = self.log_sigma(x_t, t, cond.detach())
            sigma_nll = (0.5 * error * torch.exp(-2 * log_sigma) + log_sigma).mean()
            # Per action entry, so the logged loss stays on the flow MSE's scale; σ's optimum is unchanged.
            losses["loss"] = flow_loss + sigma_nll / actions[0].numel()
            losses["sigma_nll"] = sigma_nll
        return losses

    @torch.no_grad()
    def predict_chunk(self, obs: dict[str, torch.Tensor], noise: torch.Tensor | None = None,
                      generator: torch.Generator | None = None, inpaint: Inpainting | None = None) -> torch.Tensor:
        """Normalised obs (B, To, ...) -> normalised action chunk (B, H, A) in [-1, 1].

        `noise` (B, H, A) is the starting point x_0; given it, the chunk is a deterministic function of obs.
        `inpaint` (real-time chunking): Euler steps guided toward a target chunk in normalised action space.
        """
        c = self.config
        cond = self.encode_obs(obs)
        batch = cond.shape[0]
        if noise is None:
            noise = torch.randn(batch, c.horizon, c.action_dim, device=cond.device, generator=generator)
        elif noise.shape != (batch, c.horizon, c.action_dim):
            raise ValueError(f"noise must be (B, H, A) = {(batch, c.horizon, c.action_dim)}, "
                             f"got {tuple(noise.shape)}")

        def velocity(x, t):
            return self.denoise(x, t, cond)

        if inpaint is not None:
            if c.sampler != "euler":
                raise ValueError(f"inpainting (real-time chunking) needs the euler sampler, not '{c.sampler}'")
            x = guided_euler_sample(velocity, noise, c.num_inference_steps, inpaint.target.to(noise),
                                    inpaint.weights, inpaint.max_guidance)
            self.last_nfe = torch.full((batch,), c.num_inference_steps, dtype=torch.long, device=noise.device)
        elif c.sampler == "euler":
            fast = self._fast_view()
            x = (euler_sample(velocity, noise, c.num_inference_steps) if fast is None
                 else self._fast_euler(*fast, cond, noise, c.num_inference_steps))
            self.last_nfe = torch.full((batch,), c.num_inference_steps, dtype=torch.long, device=noise.device)
        else:
            x, self.last_nfe = adaptive_sample(velocity, lambda x, t: self.log_sigma(x, t, cond).exp(), noise,
                                               c.adaptive_eta, c.num_inference_steps)
            # The adaptive loop already synchronises every step, so reading its NFE here costs nothing extra.
            self._nfe_total += self.last_nfe.float().mean().item()
            self._chunks += 1
        return x.clamp(-1, 1)

    def _fast_euler(self, view, step, cond: torch.Tensor, noise: torch.Tensor, steps: int) -> torch.Tensor:
        """`euler_sample` through the U-Net's inference view: the same time grid, every step's FiLM computed
        once per chunk (the grid's share once per step count). cond (B, D), noise (B, H, A) -> x_1 (B, H, A)."""
        conditioning = view.condition(euler_times(steps, noise) * self.config.time_scale, cond)
        return euler_sample_steps(lambda x, k: step(x, conditioning, k), noise, steps)

    @property
    def sampler_name(self) -> str:
        c = self.config
        return f"euler-{c.num_inference_steps}" if c.sampler == "euler" else "adaptive"

    @property
    def nfe(self) -> float:
        """Velocity evaluations per chunk: the step count for Euler, the running mean for adaptive steps."""
        if self.config.sampler == "euler" or self._chunks == 0:
            return self.config.num_inference_steps
        return self._nfe_total / self._chunks

    def optim_groups(self, weight_decay: float) -> list[dict]:
        return backbone_optim_groups(self, weight_decay)
