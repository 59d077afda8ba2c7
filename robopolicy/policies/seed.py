"""SeedPolicy (Gui et al., 2026): Diffusion Policy conditioned through a recurrent latent state (SEGA).

SEGA (robopolicy/nn/sega.py) sits between the observation encoder and the denoiser. The per-frame features
O_t (B, To, D_s) update a fixed-size state S (B, N_s, D_s) once per call, and the enhanced features E_t
(B, To, D_s) condition the denoiser in O_t's place: U-Net global_cond = flatten(E_t), transformer cond
tokens = E_t. The rest (ε-prediction DDPM, DDPM/DDIM sampling, backbones, `denoise`) is Diffusion Policy's.

The state is carried
- at inference in `self.state`: advanced once per predict_chunk, i.e. once per executed chunk, and cleared
  by reset() at each episode start (or for some rows, reset(mask));
- in training by the stateful sampler (batch_indices): slot b of batch k+1 holds the chunk executed after
  slot b of batch k, so the state of each slot continues from one batch to the next. It is detached in
  between (no backpropagation through time), and rows flagged `is_reset` start from the initial state.
"""

import bisect
import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from robopolicy.nn.sega import SEGA
from robopolicy.policies.diffusion import PRESETS as DIFFUSION_PRESETS
from robopolicy.policies.diffusion import DiffusionConfig, DiffusionPolicy


@dataclass
class SeedConfig(DiffusionConfig):
    """Args (beyond DiffusionConfig):
        num_state_tokens: N_s, tokens in the latent state.
        state_dim: D_s, width of the state and of SEGA (observation features are projected to it).
        sega_depth, sega_heads: layers and attention heads of the parallel state updater.
        reset_interval: in training, a slot's state restarts every this many batches of its walk.
        walk_seed: seeds the training walks (which episode each slot walks, from which offset).
    """

    num_state_tokens: int = 60
    state_dim: int = 256
    sega_depth: int = 6
    sega_heads: int = 8
    reset_interval: int = 40
    walk_seed: int = 0

    def __post_init__(self):
        super().__post_init__()
        if min(self.num_state_tokens, self.state_dim, self.sega_depth, self.sega_heads, self.reset_interval) < 1:
            raise ValueError(f"need num_state_tokens, state_dim, sega_depth, sega_heads, reset_interval >= 1, got "
                             f"{self.num_state_tokens=} {self.state_dim=} {self.sega_depth=} {self.sega_heads=} "
                             f"{self.reset_interval=}")
        if self.state_dim % self.sega_heads:
            raise ValueError(f"state_dim must be divisible by sega_heads: {self.state_dim=} {self.sega_heads=}")


# "paper" follows the reference's CNN variant (RoboTwin 2.0 DP: To 3, H 8, Ta 6, DDPM 100) and
# "paper-transformer" its transformer variant (H 9); both with a 60 x 256 state, depth 6, 8 heads, resets every
# 40 calls. "cpu" trains in minutes on two cores; "cpu-long" is "cpu" with a 16-frame observation window, for
# comparing what the state remembers with what a long window sees.
_PAPER_SEGA = dict(num_state_tokens=60, state_dim=256, sega_depth=6, sega_heads=8, reset_interval=40)
_CPU_SEGA = dict(num_state_tokens=16, state_dim=64, sega_depth=2, sega_heads=4, reset_interval=40)


def _with_sega(diffusion_preset: str, sega: dict, **policy_overrides) -> dict:
    entry = copy.deepcopy(DIFFUSION_PRESETS[diffusion_preset])
    entry["policy"].update(**sega, **policy_overrides)
    return entry


PRESETS = {
    "paper": {
        "policy": dict(backbone="unet", down_dims=(256, 512, 1024), step_embed_dim=128, kernel_size=5, horizon=8,
                       n_obs_steps=3, n_action_steps=6, sampler="ddpm", num_inference_steps=100, **_PAPER_SEGA),
        "train": dict(batch_size=32, lr=1e-4, betas=(0.9, 0.95), weight_decay=1e-6, warmup_steps=500),
        "image": {"policy": dict(image_feature_dim=512)},
    },
    "paper-transformer": {
        "policy": dict(backbone="transformer", n_layer=8, n_head=4, n_emb=256, p_drop_attn=0.3, causal_attn=True,
                       horizon=9, n_obs_steps=3, n_action_steps=6, sampler="ddpm", num_inference_steps=100,
                       **_PAPER_SEGA),
        "train": dict(batch_size=128, lr=1e-4, betas=(0.9, 0.95), weight_decay=1e-3, warmup_steps=500),
        "image": {"policy": dict(image_feature_dim=512)},
    },
    # The CPU presets are Diffusion Policy's (same network and optimiser, so comparisons isolate SEGA) plus a
    # small state.
    "cpu": _with_sega("cpu", _CPU_SEGA),
    "cpu-long": _with_sega("cpu", _CPU_SEGA, horizon=24, n_obs_steps=16),
    "cpu-transformer": _with_sega("cpu-transformer", _CPU_SEGA),
}


class SeedPolicy(DiffusionPolicy):
    name = "seed"
    config_class = SeedConfig
    presets = PRESETS

    def __init__(self, config: SeedConfig):
        # The denoiser is conditioned on E_t, D_s wide, not on the encoder's raw features.
        super().__init__(config, cond_feature_dim=config.state_dim)
        c = config
        d = self.obs_encoder.feature_dim
        self.obs_proj = nn.Linear(d, c.state_dim) if d != c.state_dim else nn.Identity()
        self.sega = SEGA(c.state_dim, c.num_state_tokens, c.sega_depth, c.sega_heads)
        self.state: torch.Tensor | None = None  # inference carry, (B, N_s, D_s)
        self.reset_rows: torch.Tensor | None = None  # (B,) bool, rows to restart on the next call
        self.train_state: torch.Tensor | None = None  # training carry, (B, N_s, D_s), detached
        self._walks: _EpisodeWalks | None = None

    def features(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Normalised observations (B, >=To, ...) -> per-frame features O_t (B, To, D_s)."""
        window = {k: obs[k][:, : self.config.n_obs_steps] for k in self.config.obs_keys}
        return self.obs_proj(self.obs_encoder(window))

    def as_condition(self, enhanced: torch.Tensor) -> torch.Tensor:
        """E_t (B, To, D_s) -> the denoiser's condition: (B, To*D_s) for the U-Net, (B, To, D_s) for the transformer."""
        return enhanced.flatten(1) if self.config.backbone == "unet" else enhanced

    def encode_obs(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Inference: normalised obs (B, >=To, ...) -> condition, advancing the carried state by one chunk.

        predict_chunk calls this once per chunk. Rows marked by reset(mask) restart from the initial state.
        """
        features = self.features(obs)
        if self.state is not None and len(self.state) != len(features):
            raise ValueError(f"the carried state holds {len(self.state)} rows but the observation has "
                             f"{len(features)}; call reset() when the batch of episodes changes")
        enhanced, state, _ = self.sega(features, self.state, self.reset_rows)
        self.state, self.reset_rows = state.detach(), None
        return self.as_condition(enhanced)

    def reset(self, mask: torch.Tensor | np.ndarray | None = None) -> None:
        """Clears the inference state: all rows, or those where `mask` (B,) is True (they take g = 1 next call)."""
        if mask is None or self.state is None:
            self.state, self.reset_rows = None, None
            return
        mask = torch.as_tensor(mask, dtype=torch.bool, device=self.state.device).reshape(-1)
        if len(mask) != len(self.state):
            raise ValueError(f"reset mask has {len(mask)} rows, the carried state {len(self.state)}")
        self.reset_rows = mask if self.reset_rows is None else self.reset_rows | mask

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """ε-MSE as Diffusion Policy's, conditioned on E_t.

        With `batch["is_reset"]` (B,) bool (from batch_indices) row b continues the training state of row b of
        the previous batch unless flagged. Without it (validation windows, drawn in no order) every row starts
        from the initial state and the training carry is left alone.
        """
        features = self.features(batch)
        is_reset = batch.get("is_reset")
        if is_reset is None:
            enhanced, _, _ = self.sega(features)
        else:
            carried = self.train_state
            if carried is not None:
                if len(carried) != len(features):
                    raise ValueError(f"the training state holds {len(carried)} rows but the batch has "
                                     f"{len(features)}; stateful training needs a fixed batch size")
                carried = carried.to(features.device)
            enhanced, state, _ = self.sega(features, carried, is_reset)
            # Detached: gradients reach SEGA through this batch's update only, as in the reference.
            self.train_state = state.detach()
        return {"loss": self.epsilon_loss(batch["action"], self.as_condition(enhanced))}

    # The training carry travels in the checkpoint (as the module's extra state), so a resumed run continues
    # every slot's state where it stopped. A copy: safetensors refuses the live and EMA entries sharing memory.
    def get_extra_state(self) -> torch.Tensor:
        return self.train_state.clone() if self.train_state is not None else torch.zeros(0)

    def set_extra_state(self, state: torch.Tensor) -> None:
        self.train_state = state if state.numel() else None

    def batch_indices(self, n_windows: int, window_episode: np.ndarray, batch_size: int, step: int,
                      rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Stateful sampler: slot b of each batch walks one episode, one executed chunk (Ta windows) per batch.

        A slot's walk is a sequence of chains. A chain picks an episode and a start offset in [0, Ta), and
        advances Ta windows per batch until the episode ends; then the next chain starts. `is_reset` is True
        at a chain's start and every `reset_interval` batches along it. The walks are a pure function of
        (walk_seed, process rank, slot, step), so a resumed run repeats them; `rng` is not used.
        Returns idx (B,) window indices and {"is_reset": (B,) bool}.
        """
        if len(window_episode) != n_windows:
            raise ValueError(f"window_episode has {len(window_episode)} entries for {n_windows} windows")
        c = self.config
        if self._walks is None or not self._walks.serves(window_episode, c.n_action_steps, c.walk_seed):
            self._walks = _EpisodeWalks(window_episode, c.n_action_steps, c.walk_seed)
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        rank = torch.distributed.get_rank() if distributed else 0
        # Each process walks its own slots, so a DDP global batch holds batch_size x processes distinct walks.
        walked = [self._walks.at(rank * batch_size + b, step) for b in range(batch_size)]
        idx = np.array([window for window, _ in walked], dtype=np.int64)
        is_reset = np.array([calls % c.reset_interval == 0 for _, calls in walked])
        return idx, {"is_reset": is_reset}


class _EpisodeWalks:
    """Memoised chains of every slot; see SeedPolicy.batch_indices.

    Chains are drawn one after another from a generator seeded with (seed, slot), so slot b's chain at step k
    does not depend on which steps were asked for before.
    """

    def __init__(self, window_episode: np.ndarray, stride: int, seed: int):
        episodes = np.asarray(window_episode)
        if len(episodes) == 0:
            raise ValueError("no training windows to walk")
        # The WindowSampler lays each episode's windows out contiguously and in time order; walks rely on it.
        first = np.flatnonzero(np.r_[True, episodes[1:] != episodes[:-1]])
        if len(first) != len(np.unique(episodes)):
            raise ValueError("the windows of each episode must be contiguous and in time order")
        self.episodes, self.stride, self.seed = episodes, stride, seed
        self.first_window = first
        self.n_windows = np.diff(np.r_[first, len(episodes)])
        self.slots: dict[int, tuple[np.random.Generator, list[int], list[tuple[int, int]]]] = {}

    def serves(self, window_episode: np.ndarray, stride: int, seed: int) -> bool:
        return (stride, seed) == (self.stride, self.seed) and (
            window_episode is self.episodes or np.array_equal(window_episode, self.episodes))

    def at(self, slot: int, step: int) -> tuple[int, int]:
        """(window index, batches since the chain started) of `slot` at `step`."""
        rng, starts, chains = self.slots.setdefault(slot, (np.random.default_rng([self.seed, slot]), [], []))
        while not starts or starts[-1] + chains[-1][1] <= step:
            episode = int(rng.integers(len(self.first_window)))
            offset = int(rng.integers(min(self.stride, self.n_windows[episode])))
            calls = -(-(self.n_windows[episode] - offset) // self.stride)  # ceil: the last call may be short of Ta
            starts.append(starts[-1] + chains[-1][1] if starts else 0)
            chains.append((int(self.first_window[episode]) + offset, calls))
        i = bisect.bisect_right(starts, step) - 1
        calls_since_start = step - starts[i]
        return chains[i][0] + calls_since_start * self.stride, calls_since_start
