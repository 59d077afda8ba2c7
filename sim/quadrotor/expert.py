"""The quadrotor tasks' scripted expert: the position loop on top of the cascade.

It tracks the reference in the state (tracking) or the fixed hover target (hover) with
:func:`sim.quadrotor.control.position_loop` and holds heading 0 (east). For ``velocity_setpoint``
tasks that velocity set point and yaw rate are the action (the env's onboard cascade flies them);
for ``motor_commands`` tasks the expert runs the whole cascade itself, at the task's control rate,
and sends its motor commands. It knows only the nominal vehicle.
"""

from __future__ import annotations

import numpy as np

from sim.quadrotor import tasks
from sim.quadrotor.control import Cascade, Gains, heading_hold, position_loop, quat_to_rotmat


class QuadrotorExpert:
    """``reset()``; ``expert(obs)`` / ``expert.act(obs)`` -> float32 (4,) from ``obs["state"]``."""

    action_dim = 4
    sampler = "scripted"
    nfe = 0

    def __init__(self, task: str = "hover", action: str = "velocity_setpoint", gains: Gains = Gains()):
        spec = tasks.make_spec(task, action)
        self.task, self.action_semantics = task, action
        self.state_dim = spec.obs_shapes["state"][0]
        self.dt = 1.0 / spec.control_rate_hz
        self.gains = gains
        self.cascade = Cascade(gains=gains)
        self.held: np.ndarray | None = None  # a failsafe position hold, see hold()
        self.name = f"QuadrotorExpert({spec.short_name})"

    def reset(self) -> None:
        self.cascade.reset()
        self.held = None

    def hold(self, position) -> None:
        """From now on fly to and hold ``position`` (3,) m, world, whatever the task's reference: a flight
        controller's failsafe position hold (the ROS sim bridge's, when a motor-level policy falls silent).
        ``reset()`` forgets it."""
        self.held = np.asarray(position, dtype=np.float64).reshape(3)

    def __call__(self, obs: dict[str, np.ndarray] | np.ndarray) -> np.ndarray:
        state = obs["state"] if isinstance(obs, dict) else obs
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (self.state_dim,):
            raise ValueError(f"{self.name} expects a ({self.state_dim},) state, got {state.shape}")
        position, quat, velocity, omega = state[0:3], state[3:7], state[7:10], state[10:13]
        if self.held is not None:
            ref_p, ref_v = self.held, np.zeros(3)
        elif self.task == "track":
            ref_p, ref_v = state[13:16], state[16:19]
        else:
            ref_p, ref_v = np.array(tasks.HOVER_TARGET), np.zeros(3)
        R = quat_to_rotmat(quat / np.linalg.norm(quat))
        v_sp = position_loop(position, ref_p, ref_v, self.gains, tasks.MAX_SPEED)
        yaw_rate = heading_hold(R, 0.0, max_rate=tasks.MAX_YAW_RATE)
        if self.action_semantics == "velocity_setpoint":
            action = np.append(v_sp, yaw_rate)
        else:
            action = self.cascade.velocity(R, velocity, omega, v_sp, yaw_rate, self.dt)
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    act = __call__

    def __repr__(self) -> str:
        return self.name
