"""Energy descent: a prediction made by a few gradient steps on a learned scalar energy (EBT, Gladstone et al.).

    ŷ_0 ~ N(0, I)  (or given)
    ŷ_{k+1} = ỹ_k − α ∇_ỹ E(x, ỹ_k, k),   ỹ_k = ŷ_k + σ ε_k  (Langevin noise, σ = 0 by default)

The energy is any callable `energy_fn(y (B, ...), k) -> (B,)`; the loop knows nothing else about the
network, so it serves every energy-based policy. Training unrolls it with `create_graph=True`, so a loss
on the iterates reaches θ through ∇_ŷE (second-order gradients) and reaches α directly. As in EBT, each
step starts from a detached ŷ_k: gradients do not flow back through earlier steps.
"""

from collections.abc import Callable
from contextlib import nullcontext
from typing import NamedTuple

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

EnergyFn = Callable[[torch.Tensor, int], torch.Tensor]


class Descent(NamedTuple):
    """iterates: [ŷ_0, ..., ŷ_n], each (B, ...). energies: [E(ŷ_0, 0), ..., E(ŷ_{n-1}, n-1)], each (B,), plus
    E(ŷ_n, n-1) when the final iterate was scored. steps: (B,) updates applied to each sample (< n where
    dynamic compute froze it early)."""

    iterates: list[torch.Tensor]
    energies: list[torch.Tensor]
    steps: torch.Tensor


def descend(energy_fn: EnergyFn, y0: torch.Tensor, steps: int, step_size: torch.Tensor | float,
            create_graph: bool = False, truncate: bool = False, langevin_std: float = 0.0,
            generator: torch.Generator | None = None, tolerance: float | None = None,
            score_final: bool = True) -> Descent:
    """Runs up to `steps` gradient steps on `energy_fn` from `y0` (B, ...).

    Args:
        step_size: α, a float or a tensor broadcastable to y0 (e.g. (B, 1, 1) for per-sample step sizes).
        create_graph: keep the graph of each gradient, so iterates are differentiable w.r.t. θ (training).
        truncate: build that graph for the last step only (EBT's truncate_mcmc); earlier iterates then reach
            θ through nothing, only α.
        langevin_std: σ of the noise added to ŷ_k before each step.
        tolerance: dynamic compute. A sample stops (keeps its ŷ_k) once |E_k − E_{k−1}| < tolerance; the loop
            ends when every sample has stopped.
        score_final: also evaluate E(ŷ_n, n-1), the converged energy (one forward pass, no gradient).

    Works under `torch.no_grad()` (the runner's context): gradients w.r.t. ŷ are switched on inside.
    """
    if steps < 1:
        raise ValueError(f"need at least one descent step, got {steps=}")
    y = y0
    iterates, energies = [y0], []
    active = torch.ones(y0.shape[0], dtype=torch.bool, device=y0.device)
    taken = torch.zeros(y0.shape[0], dtype=torch.long, device=y0.device)
    with torch.enable_grad():
        for k in range(steps):
            graph = create_graph and (not truncate or k == steps - 1)
            start = y = y.detach().requires_grad_()
            if langevin_std > 0:
                noise = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
                y = y + langevin_std * noise
            # Fused attention kernels have no second derivative; the math kernel does.
            with sdpa_kernel(SDPBackend.MATH) if graph else nullcontext():
                energy = energy_fn(y, k)
                if tolerance is not None and k > 0:
                    active = active & ((energy - energies[-1]).abs() >= tolerance)
                energies.append(energy if graph else energy.detach())
                if not active.any():
                    break
                (grad,) = torch.autograd.grad(energy.sum(), y, create_graph=graph)
            y = torch.where(_rows(active, y), y - step_size * grad, start)  # stopped samples stay put
            taken += active
            iterates.append(y)
        if score_final and len(energies) < len(iterates):
            with torch.no_grad():
                energies.append(energy_fn(y, steps - 1))
    return Descent(iterates, energies, taken)


def select_lowest_energy(samples: torch.Tensor, energies: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Best-of-G self-verification: samples (G, B, ...), energies (G, B) -> (the lowest-energy sample per row
    (B, ...), its index (B,))."""
    if samples.shape[:2] != energies.shape:
        raise ValueError(f"samples {tuple(samples.shape)} and energies {tuple(energies.shape)} disagree on (G, B)")
    best = energies.argmin(0)
    rows = torch.arange(samples.shape[1], device=samples.device)
    return samples[best, rows], best


class ReplayBuffer:
    """EBT's System-2 replay buffer: earlier final predictions become initial conditions again.

    Holds the last `size` training rows (every batch tensor, so targets stay paired with their observations)
    with the final prediction made for each. `mix` replaces a `fraction` of a fresh batch with stored rows
    whose descent then starts from that stored prediction, so training also sees long optimisation chains.
    """

    def __init__(self, size: int = 192, fraction: float = 0.5):
        if size < 1 or not 0 < fraction <= 1:
            raise ValueError(f"need size >= 1 and 0 < fraction <= 1, got {size=} {fraction=}")
        self.size, self.fraction = size, fraction
        self.rows: dict[str, torch.Tensor] = {}
        self.predictions: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.predictions is None else self.predictions.shape[0]

    def mix(self, batch: dict[str, torch.Tensor], y0: torch.Tensor
            ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """batch tensors (B, ...), y0 (B, ...) -> the same with the last rows swapped for replayed ones."""
        n = min(int(self.fraction * y0.shape[0]), len(self))
        if n == 0:
            return batch, y0
        idx = torch.randint(len(self), (n,), device=y0.device)
        keep = y0.shape[0] - n
        mixed = {k: torch.cat([v[:keep], self.rows[k][idx]]) if k in self.rows else v for k, v in batch.items()}
        return mixed, torch.cat([y0[:keep], self.predictions[idx]])

    def add(self, batch: dict[str, torch.Tensor], predictions: torch.Tensor) -> None:
        """Appends rows (B, ...) and their final predictions; the oldest rows drop out beyond `size`."""
        predictions = predictions.detach()
        if self.predictions is None:
            self.rows = {k: v.detach()[-self.size:] for k, v in batch.items()}
            self.predictions = predictions[-self.size:]
            return
        self.rows = {k: torch.cat([self.rows[k], batch[k].detach()])[-self.size:] for k in self.rows}
        self.predictions = torch.cat([self.predictions, predictions])[-self.size:]


def _rows(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ...), broadcastable against `like`."""
    return mask.reshape(-1, *[1] * (like.dim() - 1))
