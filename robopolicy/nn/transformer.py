"""Causal transformer denoiser (Chi et al., "time-series diffusion transformer", minGPT-style).

Condition tokens are [timestep, obs_1 ... obs_To]; action tokens pass through a pre-LN decoder that
self-attends causally and cross-attends to the condition tokens.
"""

import torch
from torch import nn

from robopolicy.nn.embeddings import SinusoidalEmbedding


class TransformerDenoiser(nn.Module):
    """(x (B, H, A), t (B,), obs_tokens (B, To, D)) -> (B, H, A)."""

    def __init__(
        self,
        action_dim: int,
        obs_feature_dim: int,
        horizon: int,
        n_obs_steps: int,
        n_layer: int = 8,
        n_head: int = 4,
        n_emb: int = 256,
        p_drop_emb: float = 0.0,
        p_drop_attn: float = 0.01,
        causal_attn: bool = True,
    ):
        super().__init__()
        self.action_emb = nn.Linear(action_dim, n_emb)
        self.action_pos = nn.Parameter(torch.zeros(1, horizon, n_emb))
        self.time_emb = SinusoidalEmbedding(n_emb)
        self.obs_emb = nn.Linear(obs_feature_dim, n_emb)
        self.cond_pos = nn.Parameter(torch.zeros(1, 1 + n_obs_steps, n_emb))
        self.cond_encoder = nn.Sequential(nn.Linear(n_emb, 4 * n_emb), nn.Mish(), nn.Linear(4 * n_emb, n_emb))
        self.drop = nn.Dropout(p_drop_emb)
        layer = nn.TransformerDecoderLayer(
            n_emb, n_head, 4 * n_emb, p_drop_attn, activation="gelu", batch_first=True, norm_first=True
        )
        self.decoder = nn.TransformerDecoder(layer, n_layer)
        self.ln_f = nn.LayerNorm(n_emb)
        self.head = nn.Linear(n_emb, action_dim)

        if causal_attn:
            steps = torch.arange(horizon)
            self.register_buffer("self_mask", _additive_mask(steps[:, None] >= steps[None, :]), persistent=False)
            # Action step t may see the timestep token and observation tokens up to t (token s <-> obs s-1).
            cond = torch.arange(1 + n_obs_steps)
            self.register_buffer("cond_mask", _additive_mask(steps[:, None] >= cond[None, :] - 1), persistent=False)
        else:
            self.self_mask = self.cond_mask = None
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor, t: torch.Tensor, obs_tokens: torch.Tensor) -> torch.Tensor:
        t_token = self.time_emb(t.expand(x.shape[0])).unsqueeze(1)
        cond = torch.cat([t_token, self.obs_emb(obs_tokens)], dim=1)
        cond = self.cond_encoder(self.drop(cond + self.cond_pos))
        h = self.drop(self.action_emb(x) + self.action_pos)
        h = self.decoder(h, cond, tgt_mask=self.self_mask, memory_mask=self.cond_mask)
        return self.head(self.ln_f(h))

    def no_decay_parameter_names(self) -> set[str]:
        """Biases, LayerNorm weights and position embeddings are exempt from weight decay (as in minGPT)."""
        names = {"action_pos", "cond_pos"}
        for mod_name, module in self.named_modules():
            for p_name, _ in module.named_parameters(recurse=False):
                full = f"{mod_name}.{p_name}" if mod_name else p_name
                if p_name.endswith("bias") or isinstance(module, (nn.LayerNorm, nn.Embedding)):
                    names.add(full)
        return names


def _additive_mask(allowed: torch.Tensor) -> torch.Tensor:
    return torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
