"""EBT-Policy: an energy-based transformer scores (observation, action chunk) pairs, and a chunk is predicted by
a few gradient steps on that energy (EBT, Gladstone et al. 2025; EBT-Policy, Davies et al. 2025).

Tokens [obs_1 … obs_To ; step k ; a_1 … a_H] go through a bidirectional pre-LN transformer; each action token
gets one energy (Linear(d, 1, bias=False)) and they sum to E(x, ŷ, k), one scalar per sample. The step token
(EBT's `time_embed` variant) gives every descent step its own landscape E_k.

Training: ŷ_0 ~ N(0, I); K unrolled steps ŷ_{k+1} = ŷ_k − α ∇_ŷ E(x, ŷ_k, k) with second-order gradients;
loss = mean_k Recon(ŷ_k, y), α learnable. Inference runs the same steps (optionally best-of-G by lowest
final energy, or stopping once the energy settles) and clips to [-1, 1]. The converged energy is EBT-Policy's
uncertainty signal: `last_energy` after `predict_chunk`, or `energy(obs, actions)` for any chunk. Compare it
across observations as `last_relative_energy`, E(x, ŷ_K) − E(x, ŷ_0): the loss supervises only the iterates,
i.e. ∇_ŷ E, so any offset c(x) of the energy is left free by training, and the difference cancels it
(bench/ebt_energy.py measures both as OOD signals).

No public EBT-Policy code exists; this is the "faithful-to-EBT action instantiation" of methods.md §2.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from robopolicy.generative.energy import ReplayBuffer, descend, select_lowest_energy
from robopolicy.policies.backbone import build_obs_encoder
from robopolicy.policies.base import Policy, PolicyConfig

LOSSES = {"smooth_l1": F.smooth_l1_loss, "mse": F.mse_loss}


@dataclass
class EBTConfig(PolicyConfig):
    """Args (beyond PolicyConfig):
        n_layer, n_head, n_emb, p_drop: transformer depth, heads, width and dropout.
        step_token: prepend a learned token per descent step (EBT `time_embed`), so each step has its own landscape.
        crop_shape: image crop (h, w); None takes 90 % of the frame. image_feature_dim: per-camera feature size.
        descent_steps: K unrolled in training; also the number of step landscapes.
        num_inference_steps: steps at inference (the most, with dynamic compute); steps past `descent_steps`
            stay on the last landscape.
        step_size: initial α. step_size_lr_multiplier: α's learning rate is this times the base rate (read
            by the trainer from its optimiser group). learn_step_size: False freezes α.
        step_size_jitter: s > 1 draws α·U[1/s, s] per sample in training (EBT System 2); 1 turns it off.
        langevin_std: σ of the noise added to ŷ before each step, in training and inference; 0 is deterministic.
        truncate: second-order graph and loss on the last step only (EBT truncate_mcmc).
        replay_buffer: start half of each training batch from earlier final predictions (192 rows kept).
        loss: reconstruction loss per iterate, "smooth_l1" (EBT's) or "mse".
        num_samples: G; inference descends from G initial chunks and keeps the lowest-energy one.
        dynamic_tolerance: τ; inference stops a sample once |E_k − E_{k−1}| < τ. None runs every step.
    """

    n_layer: int = 3
    n_head: int = 4
    n_emb: int = 64
    p_drop: float = 0.0
    step_token: bool = True
    crop_shape: tuple[int, int] | None = None
    image_feature_dim: int = 64
    descent_steps: int = 2
    num_inference_steps: int = 2
    step_size: float = 1.0
    step_size_lr_multiplier: float = 10.0
    learn_step_size: bool = True
    step_size_jitter: float = 1.0
    langevin_std: float = 0.0
    truncate: bool = False
    replay_buffer: bool = False
    loss: str = "smooth_l1"
    num_samples: int = 1
    dynamic_tolerance: float | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.n_emb % self.n_head:
            raise ValueError(f"n_emb must be divisible by n_head, got {self.n_emb=} {self.n_head=}")
        if self.descent_steps < 1 or self.num_inference_steps < 1 or self.num_samples < 1:
            raise ValueError(f"need descent_steps, num_inference_steps, num_samples >= 1, got "
                             f"{self.descent_steps=} {self.num_inference_steps=} {self.num_samples=}")
        if self.step_size <= 0 or self.step_size_jitter < 1 or self.langevin_std < 0:
            raise ValueError(f"need step_size > 0, step_size_jitter >= 1, langevin_std >= 0, got {self.step_size=} "
                             f"{self.step_size_jitter=} {self.langevin_std=}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {self.loss=}")
        if self.dynamic_tolerance is not None and self.dynamic_tolerance <= 0:
            raise ValueError(f"dynamic_tolerance must be positive or None, got {self.dynamic_tolerance=}")


# "paper": a mid-size EBT (6 layers, d=256, 8 heads) with the transformer-policy optimiser settings of Diffusion
# Policy; EBT-Policy's own sizes are unpublished. "cpu" is small because every training step costs about four
# forward and backward passes (K=2 unrolled with second-order gradients); it trains in minutes on two cores.
PRESETS = {
    "paper": {
        "policy": dict(n_layer=6, n_head=8, n_emb=256, p_drop=0.0, horizon=16, n_obs_steps=2, n_action_steps=8,
                       descent_steps=2, num_inference_steps=2),
        "train": dict(batch_size=256, lr=1e-4, betas=(0.9, 0.95), weight_decay=1e-1, warmup_steps=1000),
        "image": {"policy": dict(horizon=10), "train": dict(batch_size=64, weight_decay=1e-3)},
    },
    "cpu": {
        "policy": dict(n_layer=3, n_head=4, n_emb=64, p_drop=0.0, horizon=16, n_obs_steps=2, n_action_steps=8,
                       descent_steps=2, num_inference_steps=2),
        "train": dict(batch_size=256, lr=1e-3, betas=(0.9, 0.95), weight_decay=1e-3, warmup_steps=100),
        "image": {"policy": dict(image_feature_dim=32), "train": dict(batch_size=32)},
    },
}


class EnergyTransformer(nn.Module):
    """E(context (B, To, d), actions (B, H, A), step k) -> (B,): bidirectional pre-LN encoder, energy per action token."""

    def __init__(self, action_dim: int, horizon: int, n_steps: int, n_layer: int, n_head: int, n_emb: int,
                 p_drop: float, step_token: bool):
        super().__init__()
        self.n_steps = n_steps
        self.action_emb = nn.Linear(action_dim, n_emb)
        self.action_pos = nn.Parameter(torch.randn(1, horizon, n_emb) * 0.02)
        self.step_emb = nn.Embedding(n_steps, n_emb) if step_token else None
        layer = nn.TransformerEncoderLayer(n_emb, n_head, 4 * n_emb, p_drop, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, n_layer, enable_nested_tensor=False)
        self.ln_f = nn.LayerNorm(n_emb)
        self.energy_head = nn.Linear(n_emb, 1, bias=False)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, context: torch.Tensor, actions: torch.Tensor, step: int) -> torch.Tensor:
        tokens = [context]
        if self.step_emb is not None:
            # Steps past the trained ones keep descending the last landscape (EBT's extra final-landscape steps).
            k = self.step_emb.weight[min(step, self.n_steps - 1)]
            tokens.append(k.expand(context.shape[0], 1, -1))
        tokens.append(self.action_emb(actions) + self.action_pos)
        h = self.encoder(torch.cat(tokens, dim=1))
        per_token = self.energy_head(self.ln_f(h[:, -actions.shape[1]:]))  # (B, H, 1)
        return per_token.sum(dim=(1, 2))


class EBTPolicy(Policy):
    name = "ebt"
    config_class = EBTConfig
    presets = PRESETS

    def __init__(self, config: EBTConfig):
        super().__init__(config)
        c = config
        self.obs_encoder = build_obs_encoder(c)
        self.obs_proj = nn.Linear(self.obs_encoder.feature_dim, c.n_emb)
        self.obs_pos = nn.Parameter(torch.randn(1, c.n_obs_steps, c.n_emb) * 0.02)
        self.energy_net = EnergyTransformer(c.action_dim, c.horizon, c.descent_steps, c.n_layer, c.n_head, c.n_emb,
                                            c.p_drop, c.step_token)
        # log α keeps α > 0 and makes its updates relative, whatever its scale.
        self.log_step_size = nn.Parameter(torch.tensor(math.log(c.step_size)), requires_grad=c.learn_step_size)
        self.replay = ReplayBuffer(size=192, fraction=0.5) if c.replay_buffer else None
        self.last_energy: torch.Tensor | None = None
        self.last_relative_energy: torch.Tensor | None = None
        self.last_steps: torch.Tensor | None = None

    @property
    def step_size(self) -> torch.Tensor:
        return self.log_step_size.exp()

    def encode_obs(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Normalised observations (B, >=To, ...) -> observation tokens (B, To, d), one per step."""
        window = {k: obs[k][:, : self.config.n_obs_steps] for k in self.config.obs_keys}
        return self.obs_proj(self.obs_encoder(window)) + self.obs_pos

    def energy(self, obs: dict[str, torch.Tensor], actions: torch.Tensor) -> torch.Tensor:
        """E(obs, actions) on the last trained landscape: actions (B, H, A) -> (B,). Lower is more expert-like.

        Reconstruction training shapes the energy only along descent paths from the data: expert chunks score
        below random or corrupted ones, but energies across unfamiliar observations are not calibrated.
        """
        return self.energy_net(self.encode_obs(obs), actions, self.config.descent_steps - 1)

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        c = self.config
        y0 = torch.randn_like(batch["action"])
        if self.replay is not None and self.training:
            batch, y0 = self.replay.mix(batch, y0)
        actions = batch["action"]
        context = self.encode_obs(batch)
        alpha = self.step_size
        if self.training and c.step_size_jitter > 1:
            s = c.step_size_jitter
            alpha = alpha * (1 / s + torch.rand(actions.shape[0], 1, 1, device=actions.device) * (s - 1 / s))
        descent = descend(lambda y, k: self.energy_net(context, y, k), y0, c.descent_steps, alpha,
                          create_graph=self.training, truncate=c.truncate, langevin_std=c.langevin_std,
                          score_final=False)
        if self.replay is not None and self.training:
            self.replay.add(batch, descent.iterates[-1])
        recon = LOSSES[c.loss]
        losses = [recon(y, actions) for y in descent.iterates[1:]]
        loss = losses[-1] if c.truncate else torch.stack(losses).mean()
        return {"loss": loss, "initial_loss": losses[0].detach(), "final_step_loss": losses[-1].detach(),
                "energy_gap": (descent.energies[0] - descent.energies[-1]).mean().detach(),
                "step_size": self.step_size.detach()}

    @torch.no_grad()
    def predict_chunk(self, obs: dict[str, torch.Tensor], noise: torch.Tensor | None = None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """Normalised obs (B, To, ...) -> normalised action chunk (B, H, A).

        `noise` fixes ŷ_0: (B, H, A), or (G, B, H, A) with best-of-G. Sets `last_energy` (B,), the energy of
        each returned chunk (before clipping) on the landscape of its last step; `last_relative_energy` (B,),
        that minus the energy of its ŷ_0 on the first landscape; and `last_steps` (B,), the steps it took.
        """
        # Autograd (w.r.t. the actions) cannot record inference tensors; normal copies of the inputs can.
        with torch.inference_mode(False):
            obs = {k: v.clone() for k, v in obs.items()}
            noise = None if noise is None else noise.clone()
            return self._descend_chunk(obs, noise, generator)

    def _descend_chunk(self, obs, noise, generator) -> torch.Tensor:
        c = self.config
        context = self.encode_obs(obs)
        b = context.shape[0]
        shape = (c.num_samples, b, c.horizon, c.action_dim)
        if noise is None:
            noise = torch.randn(shape, device=context.device, generator=generator)
        elif c.num_samples == 1 and noise.dim() == 3:
            noise = noise[None]
        if noise.shape != shape:
            raise ValueError(f"noise must be (B, H, A) = {tuple(shape[1:])} or (G, B, H, A) = {shape}, "
                             f"got {tuple(noise.shape)}")
        context = context.repeat(c.num_samples, 1, 1)  # sample-major, matching noise.flatten(0, 1)
        descent = descend(lambda y, k: self.energy_net(context, y, k), noise.flatten(0, 1),
                          c.num_inference_steps, self.step_size, langevin_std=c.langevin_std, generator=generator,
                          tolerance=c.dynamic_tolerance)
        final = descent.iterates[-1].detach().unflatten(0, (c.num_samples, b))
        energies = descent.energies[-1].unflatten(0, (c.num_samples, b))
        chunk, best = select_lowest_energy(final, energies)
        rows = torch.arange(b, device=best.device)
        self.last_energy = energies[best, rows]
        self.last_relative_energy = self.last_energy - descent.energies[0].unflatten(0, (c.num_samples, b))[best, rows]
        self.last_steps = descent.steps.unflatten(0, (c.num_samples, b))[best, rows]
        return chunk.clamp(-1, 1)

    @property
    def sampler_name(self) -> str:
        c = self.config
        name = f"ebt-K{c.num_inference_steps}"
        if c.num_samples > 1:
            name += f"-G{c.num_samples}"
        if c.dynamic_tolerance is not None:
            name += f"-tol{c.dynamic_tolerance:g}"
        return name

    @property
    def nfe(self) -> int:
        """Energy gradients per chunk (the most, with dynamic compute): each is a forward and a backward pass,
        and one more forward scores the final chunk(s)."""
        return self.config.num_inference_steps * self.config.num_samples

    def optim_groups(self, weight_decay: float) -> list[dict]:
        """Weights decay; biases, norms, embeddings and positions do not (minGPT). α gets its own group with
        weight decay 0 and `lr_multiplier` (EBT's mcmc_step_size_lr_multiplier), for the trainer to apply."""
        decay, no_decay = [], []
        for module in self.modules():
            for p_name, p in module.named_parameters(recurse=False):
                if not p.requires_grad or p is self.log_step_size:
                    continue
                plain = p_name.endswith("bias") or p_name.endswith("_pos") or isinstance(
                    module, (nn.LayerNorm, nn.Embedding))
                (no_decay if plain else decay).append(p)
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if self.log_step_size.requires_grad:
            groups.append({"params": [self.log_step_size], "weight_decay": 0.0,
                           "lr_multiplier": self.config.step_size_lr_multiplier})
        return groups
