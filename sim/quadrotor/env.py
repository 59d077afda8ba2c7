"""The quadrotor hover and tracking tasks as gymnasium envs (see :mod:`sim.quadrotor.tasks` for the table).

Observation ``{"state": float32 (13,) | (19,)}``: position (3, world ENU, m), orientation (4, ``wxyz``,
unit, w >= 0), linear velocity (3, world, m/s), angular velocity (3, body FLU, rad/s) and, for
tracking, the reference position and velocity (6, world) at the observation's time. With
``render=True`` also ``image_<camera>`` (uint8 HWC); cameras ``chase`` (follows the vehicle) and
``overview`` (fixed, looks at it).

Actions (4,):
- ``velocity_setpoint``: vx, vy, vz (world ENU, m/s, each in [-1, 1]) and yaw rate (rad/s, in [-1, 1]),
  followed by the onboard cascade (:class:`sim.quadrotor.control.Cascade`) at the physics rate;
- ``motor_commands``: normalised commands in [-1, 1] for the rotors FR, BR, BL, FL, held between actions.

Per episode, from the seed: a randomised vehicle (:mod:`sim.quadrotor.randomization`: mass, inertia,
arm length, motor constants, latency), disturbances (:mod:`sim.quadrotor.disturbance`; hover: pushes
and wind, tracking: wind only), the initial state (up to 10 cm, 0.1 m/s, 0.1 rad tilt, 0.5 rad heading,
0.2 rad/s off the reference) and, for tracking, the reference (:mod:`sim.quadrotor.references`).
The vehicle's parameters are in the reset ``info["params"]``; a policy does not observe them.

Execution noise (``action_noise``, off by default) is for collecting demonstrations DART-style
(Laskey et al. 2017): the env executes ``action + N(0, sigma^2)`` (per step, then clipped) while the
caller records the action it asked for, so an expert's rollouts visit the off-course states a learned
policy drifts into and label them with the expert's correction. ``sigma`` is per action dimension, in
the action's units; a ``(lo, hi)`` pair draws it per episode from U[lo, hi] (the seed's own stream),
so one store holds clean and perturbed episodes.

Episode end and success: a crash (floor contact, upside down, or leaving the 4 m box) terminates the
episode as a failure. Otherwise it runs to the cap, and the last step reports ``info["success"]``
(then ``terminated=True``): RMS position error below the task's bound (5 cm for both),
counted from 1 s on. Every step's info has ``position_error`` (m, now), ``rms_position_error``
(m, so far; the tracking RMS for tracking tasks), ``crashed`` and ``steps``. Reward: minus the
position error (m).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Sequence

import gymnasium
import numpy as np
from gymnasium import spaces

from sim.quadrotor import tasks
from sim.quadrotor.control import Cascade
from sim.quadrotor.disturbance import HOVER_DISTURBANCES, TRACK_DISTURBANCES, DisturbanceConfig, Disturbances
from sim.quadrotor.model import (
    PHYSICS_DT, ROTORS, QuadParams, apply_params, build_mjcf, command_to_speed, hover_speed,
)
from sim.quadrotor.randomization import NO_RANDOMIZATION, RandomizationRanges, sample_params
from sim.quadrotor.references import KINDS, sample_reference

CRASH_BOX = 4.0  # m; leaving |x|, |y| or z beyond this ends the episode as a crash
CRASH_HEIGHT = 0.1  # m; the hub this close to the floor is a crash


class QuadrotorEnv(gymnasium.Env):
    """One quadrotor task.

    Args:
        task: ``"hover"`` or ``"track"``.
        action: ``"velocity_setpoint"`` or ``"motor_commands"``.
        reference: tracking only: ``"figure8"``, ``"waypoints"`` or ``"mixed"`` (either, half the seeds each).
        randomize: domain-randomisation ranges; ``True`` the defaults, ``False`` the nominal vehicle.
        disturbances: a :class:`DisturbanceConfig`; ``None`` the task's default set.
        max_steps: step cap; defaults to the task's.
        action_noise: DART execution noise std, a float or a per-episode (lo, hi) range; 0 (default) is off.
        render, camera, image_size, render_size: image observations and ``render()`` frames.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 50}

    def __init__(
        self,
        task: str = "hover",
        action: str = "velocity_setpoint",
        reference: str = "mixed",
        randomize: bool | RandomizationRanges = True,
        disturbances: DisturbanceConfig | None = None,
        max_steps: int | None = None,
        action_noise: float | tuple[float, float] = 0.0,
        render: bool = False,
        camera: str | Sequence[str] = "chase",
        image_size: int = 96,
        render_size: int = 256,
        render_mode: str | None = "rgb_array",
    ):
        import mujoco

        self._mj = mujoco
        self.spec_ = tasks.make_spec(task, action)  # validates task and action
        self.task, self.action_level = task, action
        if reference not in (*KINDS, "mixed"):
            raise ValueError(f"unknown reference {reference!r}; choose one of {(*KINDS, 'mixed')}")
        self.reference_kind = reference
        if randomize is True:
            randomize = RandomizationRanges()
        elif randomize is False:
            randomize = NO_RANDOMIZATION
        if not isinstance(randomize, RandomizationRanges):
            raise TypeError(f"randomize must be a bool or RandomizationRanges, got {type(randomize).__name__}")
        self.ranges: RandomizationRanges = randomize
        default = HOVER_DISTURBANCES if task == "hover" else TRACK_DISTURBANCES
        self.disturbances = Disturbances(disturbances or default, PHYSICS_DT)
        self.max_steps = int(max_steps if max_steps is not None else self.spec_.max_steps)
        lo, hi = (action_noise, action_noise) if np.isscalar(action_noise) else action_noise
        if not 0.0 <= lo <= hi:
            raise ValueError(f"action_noise must be a std >= 0 or a range 0 <= lo <= hi, got {action_noise!r}")
        self.action_noise_range = (float(lo), float(hi))
        self.action_noise = float(lo)
        self.control_rate_hz = self.spec_.control_rate_hz
        self.control_dt = 1.0 / self.control_rate_hz
        self.substeps = int(round(self.control_dt / PHYSICS_DT))
        self.success_rms = tasks.SUCCESS_RMS[task]

        self.nominal = QuadParams()
        self.model = mujoco.MjModel.from_xml_string(build_mjcf(self.nominal))
        self.data = mujoco.MjData(self.model)
        self.body_id = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, "quadrotor")
        site = mujoco.mjtObj.mjOBJ_SITE
        self.site_ids = np.array([mujoco.mj_name2id(self.model, site, f"rotor_{n}") for n in ROTORS])
        self.target_site = mujoco.mj_name2id(self.model, site, "target")
        self.cascade = Cascade(self.nominal)  # onboard: knows only the nominal vehicle
        self.params = self.nominal

        self.cameras = [camera] if isinstance(camera, str) else list(camera)
        self.render_images = bool(render)
        self.image_size, self.render_size = int(image_size), int(render_size)
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": self.control_rate_hz}
        obs_spaces: dict[str, spaces.Space] = {
            "state": spaces.Box(-np.inf, np.inf, shape=self.spec_.obs_shapes["state"], dtype=np.float32)
        }
        if self.render_images:
            for cam in self.cameras:
                shape = (self.image_size, self.image_size, 3)
                obs_spaces[f"image_{cam}"] = spaces.Box(0, 255, shape, np.uint8)
        self.observation_space = spaces.Dict(obs_spaces)
        if action == "velocity_setpoint":
            high = np.array([tasks.MAX_SPEED] * 3 + [tasks.MAX_YAW_RATE], dtype=np.float32)
            self.action_space = spaces.Box(-high, high, dtype=np.float32)
        else:
            self.action_space = spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)
        self._renderers: dict[tuple[str, int], Any] = {}
        self._rot = np.zeros(9)
        self.last_seed: int | None = None
        self.reference = None

    # ---------------------------------------------------------------------------- gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        # seed=s gives episode seed s; seed=None continues the stream of the last seeded reset.
        episode_seed = int(seed) if seed is not None else int(self.np_random.integers(0, 2**31 - 1))
        self.last_seed = episode_seed
        # Independent streams, so that e.g. the reference kind never changes which vehicle a seed gives.
        # A fifth stream for the execution noise leaves the first four (what the seed meant before) unchanged.
        vehicle_rng, init_rng, wind_rng, ref_rng, self._noise_rng = (
            np.random.default_rng(s) for s in np.random.SeedSequence(episode_seed).spawn(5)
        )
        self.action_noise = float(self._noise_rng.uniform(*self.action_noise_range))
        self.params = sample_params(vehicle_rng, self.ranges, self.nominal)
        apply_params(self.model, self.params, self.body_id, self.site_ids)
        wind_info = self.disturbances.reset(wind_rng)
        duration = self.max_steps * self.control_dt
        if self.task == "track":
            kind = self.reference_kind
            if kind == "mixed":
                kind = KINDS[int(ref_rng.integers(len(KINDS)))]
            self.reference = sample_reference(kind, ref_rng, duration)
            self.reference_name = kind
        else:
            self.reference, self.reference_name = None, "fixed"

        mj = self._mj
        mj.mj_resetData(self.model, self.data)
        ref_p, ref_v = self._reference(0.0)
        roll, pitch = init_rng.uniform(-0.1, 0.1, size=2)
        yaw = init_rng.uniform(-0.5, 0.5)
        self.data.qpos[:3] = ref_p + init_rng.uniform(-0.1, 0.1, size=3)
        self.data.qpos[3:7] = _euler_to_quat(roll, pitch, yaw)
        self.data.qvel[:3] = ref_v + init_rng.uniform(-0.1, 0.1, size=3)
        self.data.qvel[3:6] = init_rng.uniform(-0.2, 0.2, size=3)
        mj.mj_forward(self.model, self.data)

        self.cascade.reset()
        self._motor_speed = np.full(4, hover_speed(self.params))  # spinning at hover, not spinning up
        self._alpha = 1.0 - np.exp(-PHYSICS_DT / self.params.motor_tau)
        # What acts before the first action arrives: hover (zero velocity, or the nominal hover command).
        if self.action_level == "velocity_setpoint":
            self._active = np.zeros(4)
        else:
            self._active = np.full(4, 2.0 * hover_speed(self.nominal) - 1.0)
        self._pending: deque[tuple[int, np.ndarray]] = deque()
        self._physics_step = 0
        self._steps = 0
        self._sq_err_sum, self._sq_err_count = 0.0, 0
        info = {
            "seed": episode_seed,
            "success": False,
            "params": self.params.to_dict(),
            "reference": self.reference_name,
            "action_noise": self.action_noise,
            **wind_info,
        }
        return self._obs(), info

    def step(self, action):
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (4,):
            raise ValueError(f"{self.spec_.short_name}: action must have shape (4,), got {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"{self.spec_.short_name}: non-finite action {action}")
        if self.action_noise > 0:
            action = action + self.action_noise * self._noise_rng.standard_normal(4)
        action = np.clip(action, self.action_space.low, self.action_space.high)
        self._pending.append((self._physics_step + self.params.latency_steps, action))
        crashed = False
        for _ in range(self.substeps):
            self._physics_substep()
            if self._crashed():
                crashed = True
                break
        self._steps += 1

        t = self._steps * self.control_dt
        ref_p, _ = self._reference(t)
        error = float(np.linalg.norm(self.data.qpos[:3] - ref_p))
        if t >= tasks.SETTLE_SECONDS - 1e-9:
            self._sq_err_sum += error * error
            self._sq_err_count += 1
        rms = float(np.sqrt(self._sq_err_sum / self._sq_err_count)) if self._sq_err_count else error
        at_cap = self._steps >= self.max_steps
        success = bool(at_cap and not crashed and rms < self.success_rms)
        terminated = crashed or success
        truncated = (not terminated) and at_cap
        info = {
            "success": success,
            "crashed": crashed,
            "position_error": error,
            "rms_position_error": rms,
            "steps": self._steps,
        }
        return self._obs(), -error, terminated, truncated, info

    def render(self) -> np.ndarray:
        """RGB frame (uint8, render_size squared) from the first camera."""
        return self._render(self.cameras[0], self.render_size)

    def close(self) -> None:
        for r in self._renderers.values():
            r.close()
        self._renderers.clear()

    # ---------------------------------------------------------------------------- physics
    def _physics_substep(self) -> None:
        data = self.data
        while self._pending and self._pending[0][0] <= self._physics_step:
            self._active = self._pending.popleft()[1]
        velocity, omega = data.qvel[:3], data.qvel[3:6]
        if self.action_level == "velocity_setpoint":
            self._mj.mju_quat2Mat(self._rot, data.qpos[3:7])
            R = self._rot.reshape(3, 3)
            command = self.cascade.velocity(R, velocity, omega, self._active[:3], self._active[3], PHYSICS_DT)
        else:
            command = self._active
        target_speed = command_to_speed(command)
        self._motor_speed += self._alpha * (target_speed - self._motor_speed)
        data.ctrl[:] = self.params.max_thrust * self._motor_speed**2
        data.xfrc_applied[self.body_id, :3] = self.disturbances.step(velocity, self.params.drag_coeff)
        self._mj.mj_step(self.model, data)
        self._physics_step += 1

    def _crashed(self) -> bool:
        x, y, z, _, qx, qy, _ = self.data.qpos[:7].tolist()  # floats: numpy is slow on scalars
        upright = 1.0 - 2.0 * (qx * qx + qy * qy)  # world z of the body z axis
        return (
            self.data.ncon > 0
            or z < CRASH_HEIGHT
            or upright < 0.0
            or max(abs(x), abs(y), z) > CRASH_BOX
        )

    def _reference(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        if self.reference is None:
            return np.array(tasks.HOVER_TARGET), np.zeros(3)
        return self.reference(t)

    # ---------------------------------------------------------------------------- observation
    def _obs(self) -> dict[str, np.ndarray]:
        q = self.data.qpos[3:7]
        q = q / np.linalg.norm(q)
        if q[0] < 0:  # q and -q are one rotation; one hemisphere keeps the state continuous near hover
            q = -q
        parts = [self.data.qpos[:3], q, self.data.qvel[:3], self.data.qvel[3:6]]
        ref_p, ref_v = self._reference(self._steps * self.control_dt)
        if self.task == "track":
            parts += [ref_p, ref_v]
        self.model.site_pos[self.target_site] = ref_p  # the green marker in renders
        obs = {"state": np.concatenate(parts).astype(np.float32)}
        if self.render_images:
            for cam in self.cameras:
                obs[f"image_{cam}"] = self._render(cam, self.image_size)
        return obs

    def _render(self, camera: str, size: int) -> np.ndarray:
        key = (camera, size)
        if key not in self._renderers:
            from sim.render import FrameRenderer

            self._renderers[key] = FrameRenderer(self.model, self.data, camera, size, size)
        return self._renderers[key]()

    @property
    def task_spec(self):
        return self.spec_


def _euler_to_quat(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """ZYX Euler angles -> quaternion ``wxyz``."""
    cr, sr = np.cos(roll / 2), np.sin(roll / 2)
    cp, sp = np.cos(pitch / 2), np.sin(pitch / 2)
    cy, sy = np.cos(yaw / 2), np.sin(yaw / 2)
    return np.array([
        cr * cp * cy + sr * sp * sy,
        sr * cp * cy - cr * sp * sy,
        cr * sp * cy + sr * cp * sy,
        cr * cp * sy - sr * sp * cy,
    ])
