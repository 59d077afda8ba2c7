"""N 2-D point masses in pure torch, behind the two batched GPU-simulator APIs that sim/isaac.py speaks.

It exists to test the Isaac Lab adapter's batching and reset logic on a real batched env we own:

- :class:`PointMassEnv`: Isaac Lab's ``DirectRLEnv`` / ``ManagerBasedRLEnv`` API. ``reset() -> (obs, extras)``,
  ``step(actions) -> (obs, reward, terminated, truncated, extras)``; done envs are reset inside ``step``,
  so the observation returned for them is already the new episode's first.
- :class:`PointMassVecTask`: the legacy IsaacGymEnvs ``VecTask`` API. ``reset() -> obs_dict``,
  ``step(actions) -> (obs_dict, reward, reset_buf, extras)`` with ``obs_dict["obs"]``; as in IsaacGymEnvs'
  tasks, an env flagged in ``reset_buf`` is reset in the next ``step`` (after its physics, before its
  observation), so the observation returned with the flag is the terminal one.

Each env: position p (2,), velocity v (2,) and goal g (2,) in metres; the action (2,) in [-1, 1] is an
acceleration (x ``max_accel``). Observation ``(N, 6)`` = ``[p, v, g]``, float32 on ``device``. Reward
``-|p - g|``. An episode terminates with success when ``|p - g| < goal_radius`` and is truncated at
``max_episode_length`` steps. Starts and goals are drawn from a torch generator seeded with ``seed``.

Both envs keep the ground truth a test checks the adapter against: ``episode_log`` (one dict per
finished episode: env, return, length, success, initial_obs) and ``initial_obs`` (N, 6), the first
observation of each env's current episode.
"""

from __future__ import annotations

from typing import Any

import torch

OBS_DIM, ACTION_DIM = 6, 2


class PointMassEnv:
    """Isaac Lab-style batched env; see the module docstring."""

    def __init__(self, num_envs: int = 8, device: str | torch.device = "cpu", max_episode_length: int = 50,
                 goal_radius: float = 0.1, max_accel: float = 2.0, dt: float = 0.05, damping: float = 0.9,
                 arena: float = 0.5, seed: int = 0):
        if num_envs < 1 or max_episode_length < 1:
            raise ValueError(f"need num_envs >= 1 and max_episode_length >= 1, got {num_envs}, {max_episode_length}")
        self.num_envs, self.device = int(num_envs), torch.device(device)
        self.max_episode_length = int(max_episode_length)
        self.goal_radius, self.max_accel, self.step_dt, self.damping, self.arena = (
            goal_radius, max_accel, dt, damping, arena)
        self.num_observations, self.num_actions = OBS_DIM, ACTION_DIM
        self.generator = torch.Generator(self.device).manual_seed(seed)
        n, dev = self.num_envs, self.device
        self.pos, self.vel, self.goal = (torch.zeros(n, 2, device=dev) for _ in range(3))
        self.episode_length_buf = torch.zeros(n, dtype=torch.long, device=dev)
        self.episode_return = torch.zeros(n, dtype=torch.float64, device=dev)
        self.initial_obs = torch.zeros(n, OBS_DIM, device=dev)
        self.episode_log: list[dict[str, Any]] = []

    # ------------------------------------------------------------------------------- Isaac Lab API
    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[dict[str, torch.Tensor], dict]:
        if seed is not None:
            self.generator.manual_seed(seed)
        self._reset_idx(torch.arange(self.num_envs, device=self.device))
        return {"policy": self._obs()}, {}

    def step(self, actions: torch.Tensor):
        """actions (N, 2) -> obs {"policy": (N, 6)}, reward (N,), terminated (N,) bool, truncated (N,) bool,
        extras {"success": (N,) bool}. Done envs come back reset."""
        reward, success, truncated = self._physics(actions)
        done = success | truncated
        self._log(done, success)
        if done.any():
            self._reset_idx(done.nonzero().squeeze(-1))
        return {"policy": self._obs()}, reward, success, truncated, {"success": success}

    # ------------------------------------------------------------------------------- shared dynamics
    def _physics(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        actions = torch.as_tensor(actions, device=self.device, dtype=torch.float32)
        if actions.shape != (self.num_envs, ACTION_DIM):
            raise ValueError(f"actions must be ({self.num_envs}, {ACTION_DIM}), got {tuple(actions.shape)}")
        accel = actions.clamp(-1.0, 1.0) * self.max_accel
        self.vel = (self.vel + accel * self.step_dt) * self.damping
        self.pos = self.pos + self.vel * self.step_dt
        self.episode_length_buf += 1
        dist = (self.pos - self.goal).norm(dim=-1)
        reward = -dist
        self.episode_return += reward.double()
        success = dist < self.goal_radius
        truncated = ~success & (self.episode_length_buf >= self.max_episode_length)
        return reward, success, truncated

    def _log(self, done: torch.Tensor, success: torch.Tensor) -> None:
        for i in done.nonzero().flatten().tolist():
            self.episode_log.append({"env": i, "return": float(self.episode_return[i]),
                                     "length": int(self.episode_length_buf[i]), "success": bool(success[i]),
                                     "initial_obs": self.initial_obs[i].clone()})

    def _reset_idx(self, ids: torch.Tensor) -> None:
        k = len(ids)
        uniform = torch.rand(2, k, 2, device=self.device, generator=self.generator)
        self.pos[ids], self.goal[ids] = (uniform * 2 - 1) * self.arena
        self.vel[ids] = 0.0
        self.episode_length_buf[ids] = 0
        self.episode_return[ids] = 0.0
        self.initial_obs[ids] = self._obs()[ids]

    def _obs(self) -> torch.Tensor:
        return torch.cat([self.pos, self.vel, self.goal], dim=-1)

    def expert(self, obs: torch.Tensor) -> torch.Tensor:
        """A PD controller to the goal: (N, 6) -> (N, 2) in [-1, 1]; reaches it in ~15 steps."""
        p, v, g = obs[:, :2], obs[:, 2:4], obs[:, 4:]
        return (4.0 * (g - p) - 1.0 * v).clamp(-1.0, 1.0)


class PointMassVecTask(PointMassEnv):
    """IsaacGymEnvs ``VecTask``-style: ``reset_buf`` flags an episode that ended this step; the env is reset in
    the next ``step``, whose action it ignores, and whose observation is the new episode's first."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reset_buf = torch.zeros(self.num_envs, dtype=torch.long, device=self.device)
        self.progress_buf = self.episode_length_buf

    def reset(self) -> dict[str, torch.Tensor]:  # type: ignore[override]
        super().reset()
        self.reset_buf.zero_()
        return {"obs": self._obs()}

    def step(self, actions: torch.Tensor):  # type: ignore[override]
        """actions (N, 2) -> obs_dict {"obs": (N, 6)}, reward (N,), reset_buf (N,) long, extras
        {"time_outs": (N,) bool, "success": (N,) bool}."""
        pending = self.reset_buf.bool()
        reward, success, truncated = self._physics(actions)
        if pending.any():  # post_physics_step: reset the envs flagged last step, then observe
            self._reset_idx(pending.nonzero().squeeze(-1))
            reward, success, truncated = (torch.where(pending, 0.0, reward), success & ~pending, truncated & ~pending)
        done = success | truncated
        self._log(done, success)
        self.reset_buf = done.long()
        return {"obs": self._obs()}, reward, self.reset_buf.clone(), {"time_outs": truncated, "success": success}
