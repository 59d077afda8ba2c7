"""Run a trained robopolicy checkpoint on a batched GPU simulator: Isaac Lab, or legacy IsaacGymEnvs.

NOT RUN AGAINST ISAAC LAB OR ISAAC GYM. The contract below is written from their documented APIs and
tested (tests/sim/test_isaac.py) on our own batched torch env, sim/pointmass_vec.py, which speaks both.

The contract
------------
An Isaac Lab env (:class:`IsaacLabEnv`; ``DirectRLEnv`` / ``ManagerBasedRLEnv``, usually behind
``gymnasium.make``) runs ``N = env.num_envs`` copies on ``env.device``:

    obs, extras = env.reset()
    obs, reward, terminated, truncated, extras = env.step(actions)

    actions     (N, A_env) float32 on env.device, in the env's action-term units
    obs         {"policy": (N, D) float32}   (other groups, e.g. cameras, are further keys)
    reward      (N,) float32;  terminated, truncated (N,) bool
    extras      dict; success is read from extras[success_key] (N,) bool when the task reports it

and resets every env that is done (``terminated | truncated``) inside ``step``, so the ``obs`` rows
returned for them already belong to the new episode. The legacy IsaacGymEnvs ``VecTask`` API
(``obs_dict = env.reset(); obs_dict, rew, reset_buf, extras = env.step(actions)`` with
``obs_dict["obs"]`` (N, D) and ``extras["time_outs"]``) is wrapped by :class:`VecTaskAdapter`; there a
flagged env is reset during the *next* step (its action is ignored, its observation is the new episode's).

Mapping to the policy (:class:`ObservationMap`, :class:`ActionMap`):

- observation keys: each of the checkpoint's keys is a column slice of a group's (N, D) tensor, or a
  whole group (e.g. ``image_front`` <- an (N, H, W, 3) uint8 camera group). Values keep our units
  (DESIGN §3: metres, radians, quaternions wxyz), so the slice must already hold them.
- actions: the runner returns un-normalised actions in the checkpoint's semantics (N, A); the env
  gets ``clip(actions * scale + bias, low, high)``. Isaac Lab's ``JointPositionActionCfg`` applies
  ``target = raw * cfg.scale + default_joint_pos``; :meth:`ActionMap.joint_position` inverts that so
  our absolute ``joint_pos`` actions land as targets. Our gripper is +1 close; Isaac Lab's binary
  gripper closes on a negative command: give that column scale -1.

Episodes (:class:`IsaacRollout`): env ``i`` contributes episodes until it has run its share of the
requested total (``episodes`` spread evenly over the envs), so short episodes are not over-counted.
Each episode records success (any step), return (sum of rewards) and length (steps).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

import numpy as np
import torch

from robopolicy.nn.obs_encoder import is_image_key
from robopolicy.policies import Policy
from robopolicy.runtime.runner import ObservationError
from robopolicy.store import Normalizer


# ------------------------------------------------------------------------------------------ the contract
@runtime_checkable
class IsaacLabEnv(Protocol):
    """What the adapter needs of an Isaac Lab env (see the module docstring for shapes and devices)."""

    num_envs: int
    device: torch.device | str

    def reset(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]: ...

    def step(self, actions: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor,
                                                   torch.Tensor, dict[str, Any]]: ...


@runtime_checkable
class VecTask(Protocol):
    """The legacy IsaacGymEnvs API: ``reset() -> {"obs": (N, D)}``,
    ``step(a) -> (obs_dict, rew, reset_buf, extras)``."""

    num_envs: int
    device: torch.device | str

    def reset(self) -> dict[str, torch.Tensor]: ...

    def step(self, actions: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor,
                                                   dict[str, Any]]: ...


class VecTaskAdapter:
    """A :class:`VecTask` behind the :class:`IsaacLabEnv` API.

    ``terminated = reset_buf & ~time_outs``, ``truncated = reset_buf & time_outs`` (``extras["time_outs"]``,
    all False when the task gives none). ``reset_after_done = "next_step"`` tells :class:`IsaacRollout`
    that a flagged env is reset during the following step, whose action it ignores.
    """

    reset_after_done = "next_step"

    def __init__(self, env: VecTask, obs_key: str = "obs"):
        self.env, self.obs_key = env, obs_key
        self.num_envs, self.device = int(env.num_envs), torch.device(env.device)

    def reset(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return {"policy": self.env.reset()[self.obs_key]}, {}

    def step(self, actions: torch.Tensor):
        obs, reward, reset_buf, extras = self.env.step(actions)
        done = torch.as_tensor(reset_buf, device=self.device).bool()
        time_outs = extras.get("time_outs")
        if time_outs is None:
            time_outs = torch.zeros_like(done)
        time_outs = torch.as_tensor(time_outs, device=self.device).bool()
        return {"policy": obs[self.obs_key]}, reward, done & ~time_outs, done & time_outs, extras


@dataclass
class ObservationMap:
    """Env observation groups -> the checkpoint's observation keys, each ``(N, *shape)``.

    ``slices``: key -> (group, start, stop), a column range of a flat (N, D) group.
    ``groups``: key -> group, the whole tensor (camera images, depth).
    The default maps ``state`` to the whole ``policy`` group.
    """

    slices: dict[str, tuple[str, int, int]] = field(default_factory=dict)
    groups: dict[str, str] = field(default_factory=dict)

    def __call__(self, obs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for key, (group, start, stop) in self.slices.items():
            out[key] = self._group(obs, group, key)[:, start:stop]
        for key, group in self.groups.items():
            out[key] = self._group(obs, group, key)
        return out

    @staticmethod
    def _group(obs: Mapping[str, torch.Tensor], group: str, key: str) -> torch.Tensor:
        if group not in obs:
            raise ObservationError(f"observation group {group!r} (for key {key!r}) is not in the env's "
                                   f"observation; it has {sorted(obs)}")
        return obs[group]

    @classmethod
    def state_only(cls, dim: int, group: str = "policy") -> "ObservationMap":
        return cls(slices={"state": (group, 0, dim)})


@dataclass
class ActionMap:
    """Policy actions (N, A) in our semantics -> env actions: ``clip(a * scale + bias, low, high)``."""

    scale: Any = 1.0  # scalar or (A,)
    bias: Any = 0.0
    low: Any = None
    high: Any = None

    def __call__(self, actions: torch.Tensor) -> torch.Tensor:
        t = lambda x: torch.as_tensor(x, dtype=actions.dtype, device=actions.device)  # noqa: E731
        out = actions * t(self.scale) + t(self.bias)
        if self.low is not None or self.high is not None:
            out = out.clamp(None if self.low is None else t(self.low), None if self.high is None else t(self.high))
        return out

    @classmethod
    def joint_position(cls, cfg_scale: float | Any, default_joint_pos: Any, gripper_dims: int = 0) -> "ActionMap":
        """Absolute joint positions -> Isaac Lab ``JointPositionAction`` raw actions (``use_default_offset``),
        then ``gripper_dims`` binary-gripper columns with the sign flipped (ours +1 close, theirs negative)."""
        s = np.broadcast_to(np.asarray(cfg_scale, dtype=np.float64), np.shape(default_joint_pos))
        scale = np.concatenate([1.0 / s, -np.ones(gripper_dims)])
        bias = np.concatenate([-np.asarray(default_joint_pos, dtype=np.float64) / s, np.zeros(gripper_dims)])
        return cls(scale=scale.astype(np.float32), bias=bias.astype(np.float32))


# ------------------------------------------------------------------------------------------ batched runner
class BatchedPolicyRunner:
    """:class:`robopolicy.runtime.PolicyRunner` for N envs at once: torch tensors in and out, on ``device``.

    Each row keeps its own observation history (N, To, ...) and its own position in its action chunk
    (executing chunk indices To-1 ... To-1+Ta-1, as PolicyRunner). ``reset(mask)`` marks rows whose next
    observation starts an episode: that observation fills their whole history (as PolicyRunner repeats
    the first frame), their chunk is dropped, and the policy's recurrent state is cleared for those rows
    only (``policy.reset(mask)``).

    ``replan``: ``"per_row"`` plans for the rows whose chunk ran out (a batch of only those rows), so
    every row executes whole chunks exactly as a single env would; ``"lockstep"`` re-plans every row
    whenever one needs it, so a recurrent policy (SeedPolicy) advances its state once per executed chunk
    for every row. Default: lockstep for recurrent policies, per_row otherwise.
    """

    def __init__(self, policy: Policy, normalizer: Normalizer, meta: Mapping[str, Any], num_envs: int,
                 device: str | torch.device = "cpu", seed: int | None = None, replan: str | None = None):
        self.policy = policy.eval().to(device)
        self.normalizer, self.device, self.num_envs = normalizer, torch.device(device), int(num_envs)
        self.config = policy.config
        self.action_key = meta.get("action_key", "action")
        self.action_semantics = meta.get("action_semantics", "unknown")
        self.action_dim = self.config.action_dim
        self.obs_shapes = {k: tuple(v) for k, v in self.config.obs_shapes.items()}
        self.recurrent = bool(getattr(policy, "recurrent", "state" in vars(policy)))
        self.replan = replan or ("lockstep" if self.recurrent else "per_row")
        if self.replan not in ("per_row", "lockstep"):
            raise ValueError(f"replan must be 'per_row' or 'lockstep', got {self.replan!r}")
        if self.recurrent and self.replan == "per_row":
            raise ValueError("a recurrent policy carries one state per row of the whole batch; use replan='lockstep'")
        self.generator = torch.Generator(self.device)
        if seed is not None:
            self.generator.manual_seed(seed)
        c, n = self.config, self.num_envs
        self.start, self.end = c.n_obs_steps - 1, c.n_obs_steps - 1 + c.n_action_steps  # executed chunk slice
        self.history: dict[str, torch.Tensor] = {}  # key -> (N, To, *shape), raw units, made on first obs
        self.chunk = torch.zeros(n, c.horizon, c.action_dim, device=self.device)
        self.cursor = torch.full((n,), self.end, dtype=torch.long, device=self.device)  # next chunk index
        self.fresh = torch.ones(n, dtype=torch.bool, device=self.device)
        self.plans = 0  # predict_chunk calls, for throughput accounting
        self.reset()

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, num_envs: int, device: str = "cpu", sampler: str | None = None,
                        num_inference_steps: int | None = None, seed: int | None = None,
                        replan: str | None = None) -> "BatchedPolicyRunner":
        from robopolicy.runtime import PolicyRunner

        # One loader and one sampler-override path for both runners.
        single = PolicyRunner.from_checkpoint(path, device, sampler, num_inference_steps)
        meta = {"action_key": single.action_key, "action_semantics": single.action_semantics}
        return cls(single.policy, single.normalizer, meta, num_envs, device, seed, replan)

    @property
    def sampler(self) -> str:
        return self.policy.sampler_name

    @property
    def nfe(self) -> int:
        return self.policy.nfe

    def reset(self, mask: torch.Tensor | None = None, seed: int | None = None) -> None:
        """Rows (N,) bool (all when None) start an episode with their next observation."""
        if seed is not None:
            self.generator.manual_seed(seed)
        if mask is None:
            self.fresh[:] = True
            self.policy.reset()
            return
        mask = torch.as_tensor(mask, dtype=torch.bool, device=self.device).reshape(-1)
        if len(mask) != self.num_envs:
            raise ValueError(f"reset mask has {len(mask)} rows for {self.num_envs} envs")
        self.fresh |= mask

    def act(self, obs: Mapping[str, torch.Tensor], active: torch.Tensor | None = None) -> torch.Tensor:
        """One control step for every active row: obs {key: (N, *shape)} -> actions (N, A), un-normalised.

        Inactive rows (``active`` False; e.g. an env that the simulator resets this step) neither record
        the observation nor advance their chunk; their action is zero.
        """
        obs = self._check(obs)
        n = self.num_envs
        active = torch.ones(n, dtype=torch.bool, device=self.device) if active is None else \
            torch.as_tensor(active, dtype=torch.bool, device=self.device).reshape(n)
        starting = self.fresh & active
        if starting.any() and self.history:
            self.policy.reset(starting)  # recurrent state: these rows only
        for key, value in obs.items():
            frames = value.unsqueeze(1).expand(n, self.config.n_obs_steps, *value.shape[1:])
            if key not in self.history:
                self.history[key] = frames.clone()
                continue
            h = self.history[key]
            rolled = torch.cat([h[:, 1:], value.unsqueeze(1)], dim=1)
            h[active] = torch.where(_rows(starting, h), frames, rolled)[active]
        self.fresh &= ~active
        need = starting | (active & (self.cursor >= self.end))
        if need.any():
            rows = torch.ones_like(need) if self.replan == "lockstep" else need
            self.chunk[rows] = self._predict(rows)
            self.cursor[rows] = self.start
        actions = self.chunk[torch.arange(n, device=self.device), self.cursor.clamp(max=self.config.horizon - 1)]
        self.cursor += active.long()
        return torch.where(active[:, None], actions, torch.zeros_like(actions))

    def _predict(self, rows: torch.Tensor) -> torch.Tensor:
        """Un-normalised chunks (R, H, A) for the rows selected by ``rows`` (N,) bool."""
        window = {k: self.normalizer.normalize(k, h[rows]) for k, h in self.history.items()}
        with torch.no_grad():  # not inference_mode: energy-based policies differentiate w.r.t. actions inside
            chunk = self.policy.predict_chunk(window, generator=self.generator)
        self.plans += 1
        return self.normalizer.unnormalize(self.action_key, chunk).float()

    def _check(self, obs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for key, shape in self.obs_shapes.items():
            if key not in obs:
                raise ObservationError(f"observation is missing {key!r} (has {sorted(obs)}); the policy needs "
                                       f"{sorted(self.obs_shapes)}")
            value = torch.as_tensor(obs[key], device=self.device)
            if tuple(value.shape) != (self.num_envs, *shape):
                raise ObservationError(f"observation {key!r} has shape {tuple(value.shape)}, the policy expects "
                                       f"{(self.num_envs, *shape)} (num_envs, *shape)")
            if is_image_key(key):
                if value.dtype != torch.uint8:
                    raise ObservationError(f"image {key!r} must be uint8 (N, H, W, C), got {value.dtype}")
            else:
                value = value.float()
            out[key] = value
        return out


def _rows(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(N,) bool -> broadcastable to ``like`` (N, ...)."""
    return mask.reshape(-1, *([1] * (like.dim() - 1)))


# ------------------------------------------------------------------------------------------ rollouts
@dataclass
class EpisodeRecord:
    env: int
    success: bool | None
    ret: float
    length: int


@dataclass
class RolloutResult:
    episodes: list[EpisodeRecord]
    success_rate: float | None
    ci95: tuple[float, float] | None
    mean_return: float
    mean_length: float
    env_steps: int  # num_envs x steps
    seconds: float
    sampler: str | None = None
    nfe: float | None = None

    @property
    def env_steps_per_s(self) -> float:
        return self.env_steps / max(self.seconds, 1e-9)

    def summary_line(self) -> str:
        sr = "none" if self.success_rate is None else f"{self.success_rate:.3f}"
        ci = "none" if self.ci95 is None else f"[{self.ci95[0]:.3f},{self.ci95[1]:.3f}]"
        return (f"success_rate={sr} ci95={ci} episodes={len(self.episodes)} mean_return={self.mean_return:.3f} "
                f"mean_length={self.mean_length:.1f} sampler={self.sampler or 'none'} nfe={self.nfe}")


class IsaacRollout:
    """Steps a batched env with a :class:`BatchedPolicyRunner`, resetting rows as their episodes end.

    Args:
        env: an :class:`IsaacLabEnv` (or a :class:`VecTask` wrapped in :class:`VecTaskAdapter`).
        runner: built for ``env.num_envs`` envs on ``env.device``.
        obs_map, action_map: see their classes; default: ``state`` <- the whole ``policy`` group, actions as is.
        success: ``extras`` key of the per-env success flags (N,) bool, ``"terminated"`` to count every
            termination as success (tasks whose only termination is reaching the goal), or None.
    """

    def __init__(self, env: IsaacLabEnv, runner: BatchedPolicyRunner, obs_map: ObservationMap | None = None,
                 action_map: ActionMap | Callable[[torch.Tensor], torch.Tensor] | None = None,
                 success: str | None = "success"):
        if runner.num_envs != env.num_envs:
            raise ValueError(f"runner is built for {runner.num_envs} envs, the env runs {env.num_envs}")
        self.env, self.runner = env, runner
        self.device = torch.device(env.device)
        self.obs_map = obs_map or ObservationMap(groups={"state": "policy"})
        self.action_map = action_map or ActionMap()
        self.success_key = success
        self.next_step_reset = getattr(env, "reset_after_done", "in_step") == "next_step"
        self.obs: dict[str, torch.Tensor] | None = None

    def reset(self) -> None:
        obs, _ = self.env.reset()
        self.obs = obs
        n = self.env.num_envs
        self.runner.reset()
        self.pending = torch.zeros(n, dtype=torch.bool, device=self.device)  # reset during the next step
        self.ret = torch.zeros(n, dtype=torch.float64, device=self.device)
        self.length = torch.zeros(n, dtype=torch.long, device=self.device)
        self.succeeded = torch.zeros(n, dtype=torch.bool, device=self.device)

    def step(self) -> tuple[torch.Tensor, list[EpisodeRecord]]:
        """One env step for all envs. Returns done (N,) bool (episodes that ended) and their records."""
        if self.obs is None:
            self.reset()
        active = ~self.pending
        actions = self.action_map(self.runner.act(self.obs_map(self.obs), active))
        obs, reward, terminated, truncated, extras = self.env.step(actions)
        self.obs = obs
        done = (torch.as_tensor(terminated, device=self.device).bool()
                | torch.as_tensor(truncated, device=self.device).bool()) & active
        reward = torch.as_tensor(reward, device=self.device).double()
        self.ret += torch.where(active, reward, torch.zeros_like(reward))
        self.length += active.long()
        success = self._success(extras, terminated)
        if success is not None:
            self.succeeded |= success & active
        records = [EpisodeRecord(i, None if success is None else bool(self.succeeded[i]), float(self.ret[i]),
                                 int(self.length[i])) for i in done.nonzero().flatten().tolist()]
        self.ret[done], self.length[done], self.succeeded[done] = 0.0, 0, False
        self.runner.reset(done)
        # Envs reset inside step return the new episode's observation now; next-step ones after one more step.
        self.pending = done if self.next_step_reset else torch.zeros_like(done)
        return done, records

    def _success(self, extras: Mapping[str, Any], terminated: torch.Tensor) -> torch.Tensor | None:
        if self.success_key is None:
            return None
        if self.success_key == "terminated":
            return torch.as_tensor(terminated, device=self.device).bool()
        if self.success_key not in extras:
            raise KeyError(f"the env's extras have no {self.success_key!r} (keys: {sorted(extras)}); pass "
                           f"success=<key>, success='terminated', or success=None")
        return torch.as_tensor(extras[self.success_key], device=self.device).bool().reshape(-1)

    def run(self, episodes: int, max_steps: int | None = None) -> RolloutResult:
        """Roll until every env has run its share of ``episodes`` (or ``max_steps`` env steps)."""
        from sim.evaluate import wilson_ci

        n = self.env.num_envs
        if episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {episodes}")
        quota = torch.full((n,), episodes // n, dtype=torch.long)
        quota[: episodes % n] += 1
        counted = torch.zeros(n, dtype=torch.long)
        kept: list[EpisodeRecord] = []
        self.reset()
        steps, t0 = 0, time.perf_counter()
        while bool((counted < quota).any()) and (max_steps is None or steps < max_steps):
            _, records = self.step()
            steps += 1
            for r in records:
                if counted[r.env] < quota[r.env]:
                    counted[r.env] += 1
                    kept.append(r)
        seconds = time.perf_counter() - t0
        flags = [r.success for r in kept if r.success is not None]
        k = sum(flags)
        return RolloutResult(
            episodes=kept,
            success_rate=k / len(flags) if flags else None,
            ci95=wilson_ci(k, len(flags)) if flags else None,
            mean_return=float(np.mean([r.ret for r in kept])) if kept else float("nan"),
            mean_length=float(np.mean([r.length for r in kept])) if kept else float("nan"),
            env_steps=steps * n, seconds=seconds, sampler=self.runner.sampler, nfe=self.runner.nfe)
