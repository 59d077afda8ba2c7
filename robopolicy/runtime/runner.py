"""PolicyRunner: observation history -> action chunk -> one action per control step.

The same object runs in simulation and behind the ROS 2 node, so what is evaluated is what is deployed.

Timeline with To=2, H=16, Ta=8 (naive executor): at control step k the runner holds obs k-1 and k,
predicts actions for steps k-1 ... k+14, and executes k ... k+7 (chunk indices To-1 ... To-1+Ta-1)
before it plans again.

    chunk index   0    1    2 ... 8    9 ... 15
    time          k-1  k    k+1   k+7  k+8   k+14
    executed           ^----------^
"""

import collections
import os
from pathlib import Path

import numpy as np
import torch

from robopolicy.generative.flow import Inpainting
from robopolicy.nn.obs_encoder import is_image_key
from robopolicy.policies import Policy
from robopolicy.runtime.executors import ChunkGuide
from robopolicy.store import Normalizer
from robopolicy.train.checkpoint import load_policy


class ObservationError(ValueError):
    pass


class PolicyRunner:
    def __init__(self, policy: Policy, normalizer: Normalizer, meta: dict, device: str | torch.device = "cpu",
                 seed: int | None = None):
        self.policy = policy.eval()
        self.normalizer = normalizer
        self.device = torch.device(device)
        self.config = policy.config
        self.action_key = meta.get("action_key", "action")
        self.action_semantics = meta.get("action_semantics", "unknown")
        self.action_dim = self.config.action_dim
        self.obs_shapes = {k: tuple(v) for k, v in self.config.obs_shapes.items()}
        self.generator = torch.Generator(self.device)
        if seed is not None:
            self.generator.manual_seed(seed)
        self.reset()

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str = "cpu", sampler: str | None = None,
                        num_inference_steps: int | None = None, seed: int | None = None, fast: bool = True,
                        precision: str = "fp32", compile: bool = False) -> "PolicyRunner":
        """Loads EMA weights; `sampler`/`num_inference_steps` override the checkpoint's defaults (diffusion).

        `fast`/`precision`/`compile` choose how diffusion-family and flow policies run their U-Net
        (`FastUnetInference.set_inference`: the fp32 fast path equals the eager module to ~1e-5; "bf16" halves the
        weight bytes; `compile` has inductor compile the step, which makes the first chunk take 20 s to 2 min);
        other policies accept only the defaults.
        """
        policy, normalizer, meta = load_policy(path, device)
        if hasattr(policy, "set_inference"):
            policy.set_inference(fast=fast, precision=precision, compile=compile)
        elif precision != "fp32" or compile:
            raise ValueError(f"precision='{precision}', compile={compile} need a diffusion-family or flow policy, "
                             f"got '{policy.name}'")
        if sampler is not None:
            policy.config.sampler = sampler
        if num_inference_steps is not None:
            policy.config.num_inference_steps = num_inference_steps
        if sampler or num_inference_steps:
            policy.config.__post_init__()  # re-validate: the policy's config knows which samplers it has
        return cls(policy, normalizer, meta, device, seed)

    @property
    def sampler(self) -> str:
        return self.policy.sampler_name

    @property
    def nfe(self) -> int:
        return self.policy.nfe

    def reset(self, seed: int | None = None) -> None:
        """Starts an episode. A seed makes its sampling noise reproducible whatever else ran before."""
        if seed is not None:
            self.generator.manual_seed(seed)
        self.history: collections.deque = collections.deque(maxlen=self.config.n_obs_steps)
        self.queue: collections.deque = collections.deque()
        self.policy.reset()

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """One control step: record obs, plan when the queue is empty, return the next action (A,)."""
        self.history.append(self._check(obs))
        if not self.queue:
            chunk = self.predict_chunk()
            start = self.config.n_obs_steps - 1
            self.queue.extend(chunk[start : start + self.config.n_action_steps])
        return self.queue.popleft()

    def predict_from(self, frames, guide: ChunkGuide | None = None) -> np.ndarray:
        """Chunk (H, A) from these observation frames (oldest first, at most To) in place of the history: for
        callers that keep their own history, such as the ROS node."""
        self.history.clear()
        self.history.extend(frames)
        return self.predict_chunk(guide)

    def predict_chunk(self, guide: ChunkGuide | None = None) -> np.ndarray:
        """Whole un-normalised chunk (H, A) from the current history (the first frame repeats until To arrive).

        `guide` (real-time chunking, a flow policy's Euler sampler): inpaint toward the chunk still running.
        """
        frames = list(self.history)
        frames = [frames[0]] * (self.config.n_obs_steps - len(frames)) + frames
        obs = {}
        for key in self.obs_shapes:
            stacked = torch.from_numpy(np.stack([f[key] for f in frames])[None]).to(self.device)
            obs[key] = self.normalizer.normalize(key, stacked)
        extra = {} if guide is None else {"inpaint": self._inpainting(guide)}
        # no_grad rather than inference_mode: energy-based policies and RTC take gradients inside.
        with torch.no_grad():
            chunk = self.policy.predict_chunk(obs, generator=self.generator, **extra)
        return self.normalizer.unnormalize(self.action_key, chunk)[0].float().cpu().numpy()

    def _inpainting(self, guide: ChunkGuide) -> Inpainting:
        if getattr(self.policy, "parameterization", None) != "velocity":
            raise ValueError(f"real-time chunking needs a flow policy (a velocity field to guide); this "
                             f"checkpoint is '{self.policy.name}'")
        shape = (self.config.horizon, self.action_dim)
        if guide.actions.shape != shape or guide.weights.shape != shape[:1]:
            raise ValueError(f"a chunk guide needs actions {shape} and weights {shape[:1]}, got "
                             f"{guide.actions.shape} and {guide.weights.shape}")
        target = torch.from_numpy(np.asarray(guide.actions, np.float32)[None]).to(self.device)
        return Inpainting(self.normalizer.normalize(self.action_key, target), torch.from_numpy(guide.weights),
                          guide.max_guidance)

    def _check(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        checked = {}
        for key, shape in self.obs_shapes.items():
            if key not in obs:
                raise ObservationError(f"observation is missing '{key}' (has {sorted(obs)}); the policy needs "
                                       f"{sorted(self.obs_shapes)}")
            value = np.asarray(obs[key])
            if value.shape != shape:
                raise ObservationError(f"observation '{key}' has shape {value.shape}, the policy expects {shape}")
            if is_image_key(key):
                if value.dtype != np.uint8:
                    raise ObservationError(f"image '{key}' must be uint8 HWC, got {value.dtype}")
            else:
                value = value.astype(np.float32)
                if not np.all(np.isfinite(value)):
                    raise ObservationError(f"observation '{key}' contains NaN or inf: {value}")
            checked[key] = value
        return checked


class CheckpointPolicy:
    """Picklable factory for evaluation workers: each process loads its own runner from disk."""

    def __init__(self, checkpoint: str | os.PathLike, device: str = "cpu", sampler: str | None = None,
                 num_inference_steps: int | None = None, seed: int = 0, fast: bool = True, precision: str = "fp32"):
        self.checkpoint = str(Path(checkpoint))
        self.device, self.sampler, self.num_inference_steps, self.seed = device, sampler, num_inference_steps, seed
        self.fast, self.precision = fast, precision

    def __call__(self) -> PolicyRunner:
        return PolicyRunner.from_checkpoint(self.checkpoint, self.device, self.sampler, self.num_inference_steps,
                                            self.seed, fast=self.fast, precision=self.precision)
