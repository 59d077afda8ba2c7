"""robosuite Panda tasks (Lift, Stack, PickPlaceCan) behind the robopolicy env interface.

Two action variants per task (DESIGN §3):

- ``ee_delta`` (``robopolicy/robosuite-<Task>-v0``): robosuite's OSC_POSE controller, 7-d in [-1, 1]:
  position delta (x 0.05 m), axis-angle delta (x 0.5 rad), both in the world frame (the Panda base is
  not rotated), then the gripper (-1 open, +1 close). The target is relative to the achieved pose.
- ``joint_pos`` (``robopolicy/robosuite-<Task>-joint-v0``): absolute joint positions, 8-d: the 7 arm
  joints in radians (clipped to the joint limits), then the gripper (-1 open, +1 close). robosuite's
  JOINT_POSITION controller with ``input_type: absolute`` tracks them with a PD law on top of
  gravity compensation, so a held command is held exactly.

Observation ``{"state": float32 (D,)}`` plus, on request (:mod:`sim.camera_obs`), ``image_<camera>``
(uint8 HWC, upright), ``depth_<camera>`` (float32 HW, metres) and ``points`` (float32 N x 3|6, world
frame, cropped to the task's workspace above the table). ``state`` is the robot's proprioception
followed by the objects' poses:

    [0:3]    end-effector (grip site) position, world frame, metres
    [3:7]    end-effector orientation, quaternion wxyz, sign in the hemisphere of the home pose
    [7:9]    gripper finger joint positions (m)
    [9:16]   arm joint positions (rad)
    [16:]    per object: position (3, world) and quaternion (4, wxyz, w >= 0)
             Lift: cube (D = 23); Stack: cubeA (the one to pick), cubeB (D = 30);
             PickPlaceCan: can (D = 23; its goal, the can's quarter of bin 2, is fixed: CAN_BIN)

``reset(seed=s)`` is deterministic: robosuite draws object placements and the robot's initial joint
noise from numpy's global generator, so the reset runs with that generator seeded by ``s`` and its
previous state restored afterwards. The env is built once (robosuite's ``hard_reset`` is off), under
seed 0, so the model itself (e.g. Lift's cube size) is the same in every process. Episodes terminate
at success and are truncated at the task's step cap (DESIGN §8). Control runs at 20 Hz.

``import sim.robosuite_tasks`` does not import robosuite; building an env does.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from typing import Any, Iterator, Sequence

import gymnasium
import numpy as np
from gymnasium import spaces

from sim.camera_obs import DEFAULT_NUM_POINTS, CameraObserver, camera_obs_config
from sim.registry import PREFIX, TaskSpec, register_task, task_spec

CONTROL_RATE_HZ = 20.0
ROBOT = "Panda"
ARM_DOF = 7
PROPRIO_DIM = 3 + 4 + 2 + ARM_DOF
OSC_POS_SCALE = 0.05  # metres per unit of action (robosuite's default Panda OSC_POSE output range)
OSC_ROT_SCALE = 0.5  # radians per unit of action
JOINT_KP = 150.0  # the OSC's stiffness, so both variants move the arm alike

# robosuite env name, the bodies whose poses enter the state (MJCF body names), step cap.
# Step caps: 1.5x the 95th percentile of the expert's successful episode lengths over seeds 0..99,
# rounded up to a multiple of 50 (python -m bench.experts_robosuite, bench/results/experts_robosuite.json;
# p95 39 / 97 / 133 steps for Lift / Stack / PickPlaceCan under ee_delta, about the same under joint_pos).
# Workspace: the world box kept in point clouds, the space above the table top (z = 0.8 m, 0.8 x 0.8 m)
# or, for PickPlaceCan, above the floors of the two bins (robosuite's bin1_pos / bin2_pos, bin_size).
TABLE_WORKSPACE = ((-0.4, -0.4, 0.805), (0.4, 0.4, 1.3))
TASKS: dict[str, dict[str, Any]] = {
    "Lift": {"env": "Lift", "objects": ("cube_main",), "max_steps": 100, "workspace": TABLE_WORKSPACE},
    "Stack": {"env": "Stack", "objects": ("cubeA_main", "cubeB_main"), "max_steps": 150,
              "workspace": TABLE_WORKSPACE},
    "PickPlaceCan": {"env": "PickPlaceCan", "objects": ("Can_main",), "max_steps": 200,
                     "workspace": ((-0.1, -0.5, 0.82), (0.3, 0.53, 1.3))},
}
VARIANTS = {"ee_delta": ("", 7), "joint_pos": ("-joint", ARM_DOF + 1)}

# PickPlaceCan's goal region: the can's quarter of bin 2, x and y bounds and the bin's floor height
# (robosuite's bin2_pos (0.1, 0.28, 0.8), bin size 0.39 x 0.49; checked against the live env in
# tests/sim/test_robosuite.py). Success: the can's centre inside, below floor + 0.1, gripper away.
CAN_BIN = {"x": (0.1, 0.295), "y": (0.28, 0.525), "z": 0.8}

CAMERAS = ("agentview", "frontview", "birdview", "sideview", "robot0_eye_in_hand")
DEFAULT_CAMERA, DEFAULT_IMAGE_SIZE = "agentview", 84


def camera_defaults(task: str) -> dict[str, Any]:
    return {"camera": DEFAULT_CAMERA, "image_size": DEFAULT_IMAGE_SIZE, "workspace": TASKS[task]["workspace"]}


def state_dim(task: str) -> int:
    return PROPRIO_DIM + 7 * len(TASKS[task]["objects"])


def task_name(task: str, action_semantics: str) -> str:
    return f"{PREFIX}robosuite-{task}{VARIANTS[action_semantics][0]}-v0"


def parse_task(name: str) -> tuple[str, str]:
    """'robopolicy/robosuite-Lift-joint-v0' | 'robosuite-Lift-v0' | 'Lift' -> ('Lift', 'joint_pos')."""
    short = name.removeprefix(PREFIX).removeprefix("robosuite-").removesuffix("-v0")
    semantics = "ee_delta"
    if short.endswith("-joint"):
        short, semantics = short.removesuffix("-joint"), "joint_pos"
    if short not in TASKS:
        task_spec(name)  # raises UnknownTaskError with the list of known names
        raise ValueError(f"no robosuite task {short!r}; known: {sorted(TASKS)}")
    return short, semantics


@contextlib.contextmanager
def seeded_global_numpy(seed: int) -> Iterator[None]:
    """Seed numpy's global generator (which robosuite samples from) for a block, then restore it."""
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(saved)


def controller_config(action_semantics: str) -> dict[str, Any]:
    """robosuite composite controller config for the Panda: OSC_POSE (delta) or absolute JOINT_POSITION."""
    from robosuite.controllers import load_composite_controller_config

    cfg = load_composite_controller_config(controller="BASIC", robot=ROBOT)
    arm = copy.deepcopy(cfg["body_parts"]["right"])
    # BASIC also configures parts a Panda lacks (left arm, torso, head, base, legs); robosuite warns
    # about each of them on every build.
    cfg["body_parts"] = {"right": arm}
    if action_semantics == "joint_pos":
        arm.update(type="JOINT_POSITION", input_type="absolute", kp=JOINT_KP, damping_ratio=1,
                   impedance_mode="fixed", qpos_limits=None, interpolation=None)
        arm.pop("input_ref_frame", None)
        for key in ("output_max", "output_min", "position_limits", "orientation_limits", "uncouple_pos_ori"):
            arm.pop(key, None)
    elif action_semantics != "ee_delta":
        raise ValueError(f"action_semantics must be 'ee_delta' or 'joint_pos', got {action_semantics!r}")
    return cfg


def _quat_wxyz(mat: np.ndarray) -> np.ndarray:
    import mujoco

    q = np.zeros(4)
    mujoco.mju_mat2Quat(q, np.asarray(mat, dtype=np.float64).reshape(9))
    return q


class RobosuiteTask(gymnasium.Env):
    """One robosuite Panda task with a dict observation (see the module docstring for the layout).

    Args:
        task: ``Lift``, ``Stack``, ``PickPlaceCan`` or a registered name such as ``robosuite-Lift-joint-v0``.
        action_semantics: ``ee_delta`` or ``joint_pos``; taken from ``task`` when that is a full name.
        render: add ``image_<camera>`` (uint8, ``image_size`` x ``image_size`` x 3) to the observation.
        camera / cameras: camera name or names for the observations and for ``render()`` (the first):
            agentview, frontview, birdview, sideview (not in PickPlaceCan), robot0_eye_in_hand.
        depth, points, num_points, point_colour, workspace: depth maps and a world-frame point cloud
            (:mod:`sim.camera_obs`); the workspace defaults to the space above the task's table.
        image_size: side of the image and depth observations in pixels.
        render_size: side of the ``render()`` frame (videos).
        max_steps: step cap; defaults to the task's registered cap.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": CONTROL_RATE_HZ}

    def __init__(
        self,
        task: str,
        action_semantics: str | None = None,
        render: bool | None = None,
        camera: str | Sequence[str] | None = None,
        image_size: int | None = None,
        render_size: int = 128,
        max_steps: int | None = None,
        render_mode: str | None = "rgb_array",
        cameras: str | Sequence[str] | None = None,
        depth: bool = False,
        points: bool = False,
        num_points: int = DEFAULT_NUM_POINTS,
        point_colour: bool = False,
        workspace: Any = None,
    ):
        import robosuite

        if task in TASKS:
            self.task, semantics = task, action_semantics or "ee_delta"
        else:
            self.task, semantics = parse_task(task)
            if action_semantics not in (None, semantics):
                raise ValueError(f"{task!r} is a {semantics} task, not {action_semantics}")
        self.action_semantics = semantics
        self.spec_ = task_spec(task_name(self.task, semantics))
        self.max_steps = int(max_steps if max_steps is not None else self.spec_.max_steps)
        self.camera_config = camera_obs_config(render, camera, cameras, depth, points, image_size, num_points,
                                               point_colour, workspace, defaults=camera_defaults(self.task))
        self.cameras = list(self.camera_config.cameras)
        self.image_size = self.camera_config.image_size
        self.render_size = int(render_size)
        self.render_mode = render_mode

        with seeded_global_numpy(0):
            self._env = robosuite.make(
                TASKS[self.task]["env"],
                robots=ROBOT,
                controller_configs=controller_config(semantics),
                has_renderer=False,
                has_offscreen_renderer=False,  # we render with our own mujoco.Renderer (upright, no shadows)
                use_camera_obs=False,
                use_object_obs=True,
                control_freq=CONTROL_RATE_HZ,
                horizon=2**31,
                ignore_done=True,  # the cap is ours (truncated=True there)
                hard_reset=False,  # rebuilding the model on every reset costs ~2 s
                reward_shaping=False,
            )
        env = self._env
        if abs(env.control_freq - self.spec_.control_rate_hz) > 1e-9:
            raise RuntimeError(f"{self.task}: env runs at {env.control_freq} Hz, spec says {self.spec_.control_rate_hz}")
        self.control_rate_hz = float(env.control_freq)
        self.model, self.data = env.sim.model._model, env.sim.data._data

        robot = env.robots[0]
        self._robot = robot
        self._site = robot.eef_site_id["right"]
        self._arm_qpos = np.asarray(robot._ref_joint_pos_indexes)
        self._finger_qpos = np.asarray(robot._ref_gripper_joint_pos_indexes["right"])
        self._object_bodies = [self.model.body(name).id for name in TASKS[self.task]["objects"]]
        self._home_quat = _quat_wxyz(self.data.site_xmat[self._site])  # the hemisphere for eef quaternions
        self.joint_limits = np.array(self.model.jnt_range[robot._ref_joint_indexes], dtype=np.float64)

        self.spec_ = dataclasses.replace(
            self.spec_, obs_shapes={**self.spec_.obs_shapes, **self.camera_config.shapes()})
        self._camera_obs = CameraObserver(self.model, self.data, self.camera_config)
        self.observation_space = spaces.Dict({
            "state": spaces.Box(-np.inf, np.inf, shape=(state_dim(self.task),), dtype=np.float32),
            **self.camera_config.spaces(),
        })
        if semantics == "ee_delta":
            self.action_space = spaces.Box(-1.0, 1.0, shape=(7,), dtype=np.float32)
        else:
            low = np.append(self.joint_limits[:, 0], -1.0).astype(np.float32)
            high = np.append(self.joint_limits[:, 1], 1.0).astype(np.float32)
            self.action_space = spaces.Box(low, high, dtype=np.float32)
        if self.action_space.shape != (self.spec_.action_dim,) or env.action_dim != self.spec_.action_dim:
            raise RuntimeError(f"{self.spec_.name}: robosuite action dim {env.action_dim} != {self.spec_.action_dim}")

        self._video_renderer = None
        self._steps = 0
        self.last_seed: int | None = None

    # ---------------------------------------------------------------------------- gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        # seed=s places the objects for seed s; seed=None continues the stream of the last seeded reset.
        rs_seed = int(seed) if seed is not None else int(self.np_random.integers(0, 2**31 - 1))
        with seeded_global_numpy(rs_seed):
            self._env.reset()
        self.last_seed = rs_seed
        self._steps = 0
        return self._obs(), {"seed": rs_seed, "success": False}

    def step(self, action):
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != self.action_space.shape:
            raise ValueError(f"{self.spec_.name}: action must have shape {self.action_space.shape}, got {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"{self.spec_.name}: non-finite action {action}")
        action = np.clip(action, self.action_space.low, self.action_space.high)
        _, reward, _, info = self._env.step(action)
        self._steps += 1
        success = bool(self._env._check_success())
        info = {**info, "success": success, "steps": self._steps}
        truncated = (not success) and self._steps >= self.max_steps
        return self._obs(), float(reward), success, truncated, info

    def render(self) -> np.ndarray:
        """RGB frame (uint8, render_size x render_size x 3) from the first camera, upright."""
        if self._video_renderer is None:
            self._video_renderer = self._renderer(self.cameras[0], self.render_size)
        return self._video_renderer()

    def close(self) -> None:
        self._camera_obs.close()
        if self._video_renderer is not None:
            self._video_renderer.close()
            self._video_renderer = None
        self._env.close()

    # ---------------------------------------------------------------------------- helpers
    @property
    def task_spec(self) -> TaskSpec:
        return self.spec_

    @property
    def unwrapped_robosuite(self):
        return self._env

    def camera_attrs(self) -> dict[str, dict[str, Any]]:
        """Intrinsics and extrinsics of the observation cameras (the store's ``cameras`` attribute)."""
        return self._camera_obs.camera_attrs()

    def _renderer(self, camera: str, size: int):
        from sim.render import FrameRenderer

        return FrameRenderer(self.model, self.data, camera, size, size)

    def state(self) -> np.ndarray:
        d = self.data
        quat = _quat_wxyz(d.site_xmat[self._site])
        if quat @ self._home_quat < 0:  # q and -q are one rotation; keep the sign continuous near home
            quat = -quat
        parts = [d.site_xpos[self._site], quat, d.qpos[self._finger_qpos], d.qpos[self._arm_qpos]]
        for body in self._object_bodies:
            q = d.xquat[body]
            parts += [d.xpos[body], q if q[0] >= 0 else -q]
        return np.concatenate(parts).astype(np.float32)

    def _obs(self) -> dict[str, np.ndarray]:
        return {"state": self.state(), **self._camera_obs.observe()}


# ------------------------------------------------------------------------------------------ registry
def register_robosuite_tasks() -> None:
    """Register the six task names (three tasks x two action variants); robosuite is not imported."""
    for task, info in TASKS.items():
        for semantics, (suffix, dim) in VARIANTS.items():
            name = task_name(task, semantics)
            if name in _registered():
                continue
            control = "OSC end-effector delta" if semantics == "ee_delta" else "absolute joint positions"
            spec = TaskSpec(
                name=name,
                action_semantics=semantics,
                action_dim=dim,
                obs_shapes={"state": (state_dim(task),)},
                control_rate_hz=CONTROL_RATE_HZ,
                max_steps=info["max_steps"],
                description=f"robosuite {task} (Panda, {control}, random object placement per seed)",
            )
            register_task(
                spec,
                env_entry="sim.robosuite_tasks:RobosuiteTask",
                env_kwargs={"task": task, "action_semantics": semantics},
                expert_entry="sim.robosuite_experts:make_robosuite_expert",
                expert_kwargs={"task": task, "action_semantics": semantics},
                camera_defaults=camera_defaults(task),
            )


def _registered() -> set[str]:
    from sim.registry import list_tasks

    return set(list_tasks("robosuite"))
