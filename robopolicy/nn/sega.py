"""SEGA (SeedPolicy): a fixed-size latent state, written to by gated cross-attention once per action chunk.

A state of N_s tokens summarises the episode so far. Each call reads the current observation features O_t,
updates the state, and returns enhanced features E_t: the observation stream after it has attended to the
state. E_t (not the state) conditions the action denoiser. Per call, compute and memory are O(1) in the
episode length.

    X             = S_{t-1} + P                            (B, N_s, D), P a learnable positional embedding
    S~, E_t, {L_l} = ParallelStateUpdater(X, O_t)          O_t, E_t (B, To, D); L_l (B, heads, N_s, To)
    g             = sigmoid(mean_{l, h, j} L_l[:, h, i, j])  (B, N_s, 1): one gate per state token
    g             = 1 on the first call (no state) and on reset rows
    S_t           = g * S~ + (1 - g) * X - P               the stored state excludes P

The gate reads the state->observation cross-attention logits before the softmax: a token whose queries match
the new observation strongly is overwritten, one that does not keeps its content.
"""

import math

import torch
from torch import nn


class Attention(nn.Module):
    """Multi-head attention of queries x (B, N, D) over memory m (B, M, D) -> out (B, N, D), logits (B, heads, N, M).

    Written out as softmax(QKᵀ/√d_h)V, rather than nn.MultiheadAttention, because the gate needs the logits
    taken before the softmax.
    """

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.q(x).unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (B, heads, N, d_h)
        k, v = self.kv(memory).unflatten(-1, (2, self.heads, -1)).permute(2, 0, 3, 1, 4)  # each (B, heads, M, d_h)
        logits = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        out = (logits.softmax(dim=-1) @ v).transpose(1, 2).flatten(2)
        return self.proj(out), logits


class StateUpdaterBlock(nn.Module):
    """Pre-norm block: self-attention, cross-attention to a memory, MLP (ratio 4, GELU).

    (x (B, N, D), memory (B, M, D)) -> (x' (B, N, D), cross-attention logits (B, heads, N, M)).
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.norm_self = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, heads)
        self.norm_cross = nn.LayerNorm(dim)
        self.norm_memory = nn.LayerNorm(dim)
        self.cross_attn = Attention(dim, heads)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.norm_self(x)
        x = x + self.self_attn(h, h)[0]
        out, logits = self.cross_attn(self.norm_cross(x), self.norm_memory(memory))
        x = x + out
        x = x + self.mlp(self.norm_mlp(x))
        return x, logits


class ParallelStateUpdater(nn.Module):
    """Two streams, state and observation, each reading the other at every layer.

    (state (B, N_s, D), obs (B, To, D)) -> (state (B, N_s, D), obs (B, To, D), logits (depth, B, heads, N_s, To)),
    where logits are every layer's state->obs cross-attention logits.
    """

    def __init__(self, dim: int, depth: int, heads: int):
        super().__init__()
        self.state_blocks = nn.ModuleList(StateUpdaterBlock(dim, heads) for _ in range(depth))
        self.obs_blocks = nn.ModuleList(StateUpdaterBlock(dim, heads) for _ in range(depth))
        self.norm_state = nn.LayerNorm(dim)
        self.norm_obs = nn.LayerNorm(dim)

    def forward(self, state: torch.Tensor, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = []
        for state_block, obs_block in zip(self.state_blocks, self.obs_blocks):
            # Both blocks read the previous layer's tensors: the two streams update in parallel, not in turn.
            (state, layer_logits), (obs, _) = state_block(state, obs), obs_block(obs, state)
            logits.append(layer_logits)
        return self.norm_state(state), self.norm_obs(obs), torch.stack(logits)


class SEGA(nn.Module):
    """State-Enhanced Gated Attention: (obs features (B, To, D), state (B, N_s, D) or None, reset (B,) bool or None)
    -> (enhanced obs E_t (B, To, D), new state S_t (B, N_s, D), gate g (B, N_s, 1)).

    `state=None` starts every row from the learned initial state; `reset` does so for the rows where it is True.
    Rows that start afresh take g = 1, so their new state is the updater's output alone.
    """

    def __init__(self, dim: int, num_state_tokens: int, depth: int, heads: int):
        super().__init__()
        self.initial_state = nn.Parameter(torch.randn(1, num_state_tokens, dim) * 0.02)
        self.pos = nn.Parameter(torch.zeros(1, num_state_tokens, dim))
        self.updater = ParallelStateUpdater(dim, depth, heads)

    def initial(self, batch_size: int) -> torch.Tensor:
        """The learned initial state, (B, N_s, D)."""
        return self.initial_state.expand(batch_size, -1, -1)

    def forward(self, obs: torch.Tensor, state: torch.Tensor | None = None, reset: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, expected = obs.shape[0], tuple(self.initial_state.shape[1:])
        if obs.shape[-1] != expected[1]:
            raise ValueError(f"observation features are {obs.shape[-1]}-d, SEGA's width is {expected[1]}")
        if state is None:
            fresh = torch.ones(batch, dtype=torch.bool, device=obs.device)
            previous = self.initial(batch)
        else:
            if tuple(state.shape) != (batch, *expected):
                raise ValueError(f"state has shape {tuple(state.shape)}, expected {(batch, *expected)}")
            fresh = (torch.zeros(batch, dtype=torch.bool, device=obs.device) if reset is None
                     else torch.as_tensor(reset, dtype=torch.bool, device=obs.device).reshape(batch))
            previous = torch.where(fresh[:, None, None], self.initial(batch), state)
        x = previous + self.pos
        updated, enhanced, logits = self.updater(x, obs)
        gate = torch.sigmoid(logits.mean(dim=(0, 2, 4))).unsqueeze(-1)  # mean over layers, heads, obs tokens
        gate = torch.where(fresh[:, None, None], torch.ones_like(gate), gate)
        new_state = gate * updated + (1 - gate) * x - self.pos
        return enhanced, new_state, gate
