"""Scripted waypoint experts for the robosuite tasks (sim/robosuite_tasks.py), from the state alone.

:class:`WaypointExpert` (``ee_delta``) is a state machine over object poses: approach above the
object with the gripper level and its yaw aligned to the object (cubes: modulo 90 degrees), descend,
close, lift, and for Stack / PickPlaceCan carry above the goal, lower, open and retreat. Each phase
servos the end effector toward its waypoint with a saturated proportional OSC delta; a phase ends
when the waypoint is reached (or after a fixed number of steps for the gripper). If the object
slips out while carried, the expert starts over from the approach.

:class:`JointWaypointExpert` (``joint_pos``) runs the same state machine and turns each end-effector
delta it would command into absolute joint targets with one damped-least-squares step on the Panda's
geometric Jacobian at the observed joint positions: ``q* = q + J^T (J J^T + lambda^2 I)^-1 [dp; dr]``,
with ``dp = 0.05 a[:3]`` and ``dr = 0.5 a[3:6]`` as the OSC would scale them. The Jacobian comes from
robosuite's own Panda model (arm and gripper, compiled once per expert); the base is not rotated in
any of the tasks, so its world-frame Jacobian is the env's. The joint controller uses the OSC's
stiffness, so the arm follows about the same path under either action variant.

Both are picklable (``functools.partial(make_expert, name)`` builds them in evaluation workers).
"""

from __future__ import annotations

import math

import numpy as np

from sim.robosuite_tasks import (
    ARM_DOF,
    OSC_POS_SCALE,
    OSC_ROT_SCALE,
    PROPRIO_DIM,
    CAN_BIN,
    TASKS,
    state_dim,
)

APPROACH, DESCEND, GRASP, LIFT, CARRY, LOWER, RELEASE, RETREAT = (
    "approach", "descend", "grasp", "lift", "carry", "lower", "release", "retreat"
)
OPEN, CLOSE = -1.0, 1.0


def _quat_to_mat(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def _rotvec(R: np.ndarray) -> np.ndarray:
    """Axis-angle vector of a rotation matrix (angle in [0, pi])."""
    cos = np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0)
    angle = math.acos(cos)
    if angle < 1e-8:
        return np.zeros(3)
    axis = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    if angle > math.pi - 1e-4:  # sin ~ 0: read the axis off the symmetric part
        axis = np.sqrt(np.clip((np.diag(R) + 1.0) / 2.0, 0.0, None))
        i = int(np.argmax(axis))
        axis = np.array([R[i, 0] + R[0, i], R[i, 1] + R[1, i], R[i, 2] + R[2, i]]) / (2 * axis[i])
        axis[i] = math.sqrt(max((R[i, i] + 1.0) / 2.0, 0.0))
    return axis / np.linalg.norm(axis) * angle


def _yaw(R: np.ndarray) -> float:
    return math.atan2(R[1, 0], R[0, 0])


def _wrap(a: float) -> float:
    return (a + math.pi) % (2 * math.pi) - math.pi


def _level_down(yaw: float) -> np.ndarray:
    """Gripper pointing straight down (z to -z world) with its x axis at ``yaw``."""
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, s, 0.0], [s, -c, 0.0], [0.0, 0.0, -1.0]])


class WaypointExpert:
    """Pick (and place) state machine emitting robosuite OSC_POSE deltas, ``(7,)`` float32 in [-1, 1].

    ``reset()`` before each episode; ``expert(obs)`` / ``expert.act(obs)`` with ``obs["state"]`` laid out as
    in :mod:`sim.robosuite_tasks`.
    """

    action_semantics = "ee_delta"
    action_dim = 7
    sampler = "scripted"
    nfe = 0

    # Tuned by hand on seeds 0..4; bench/experts_robosuite.py measures seeds 0..99.
    pos_gain = 1.0  # action = gain * error / 0.05 m (the OSC's scale), saturated at 1
    rot_gain = 1.0
    hover = 0.08  # approach height above the object's centre (m)
    grasp_steps = 10  # gripper closing / opening time (steps at 20 Hz)
    release_steps = 8
    carry_z = {"Lift": None, "Stack": 0.95, "PickPlaceCan": 0.98}  # absolute transit height (m)
    grasp_height = {"Lift": 0.0, "Stack": 0.0, "PickPlaceCan": 0.015}  # above the object's centre (m)
    lift_height = 0.12  # Lift: how far to raise the cube (success is at +0.04)

    def __init__(self, task: str = "Lift"):
        if task not in TASKS:
            raise ValueError(f"no robosuite task {task!r}; known: {sorted(TASKS)}")
        self.task = task
        self.name = f"WaypointExpert({task})"
        self.dim = state_dim(task)
        self.reset()

    def reset(self) -> None:
        self.phase = APPROACH
        self.count = 0
        self.grasp_offset = np.zeros(3)  # eef - object at the grasp, held while carrying
        self.goal_yaw: float | None = None
        self.lift_from = 0.0

    # ------------------------------------------------------------------------------ observation
    def _parse(self, state: np.ndarray):
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (self.dim,):
            raise ValueError(f"{self.name} expects a ({self.dim},) state, got {state.shape}")
        eef, R = state[0:3], _quat_to_mat(state[3:7])
        obj = state[PROPRIO_DIM:PROPRIO_DIM + 3]
        obj_R = _quat_to_mat(state[PROPRIO_DIM + 3:PROPRIO_DIM + 7])
        return eef, R, obj, obj_R, state

    def _grasp_yaw(self, R: np.ndarray, obj_R: np.ndarray) -> float:
        """Yaw for the gripper: a cube's faces (nearest of 4), or the current yaw for the round can."""
        if self.task == "PickPlaceCan":
            return _yaw(R)
        base, cur = _yaw(obj_R), _yaw(R)
        return min((base + k * math.pi / 2 for k in range(-4, 5)), key=lambda y: abs(_wrap(y - cur)))

    def _place_target(self, state: np.ndarray) -> np.ndarray:
        """Where the object's centre goes before release."""
        if self.task == "Stack":
            other = state[PROPRIO_DIM + 7:PROPRIO_DIM + 10]
            return other + np.array([0.0, 0.0, 0.025 + 0.02 + 0.012])  # cubeB half + cubeA half + clearance
        # The corner of the can's quarter nearest the robot: the quarter's centre is at the edge of the
        # Panda's reach with the gripper pointing down.
        return np.array([CAN_BIN["x"][0] + 0.045, CAN_BIN["y"][0] + 0.05, CAN_BIN["z"] + 0.12])

    # ------------------------------------------------------------------------------ control
    def _servo(self, eef, R, target, yaw, grip) -> np.ndarray:
        dpos = self.pos_gain * (target - eef) / OSC_POS_SCALE
        drot = self.rot_gain * _rotvec(_level_down(yaw) @ R.T) / OSC_ROT_SCALE
        a = np.concatenate([np.clip(dpos, -1, 1), np.clip(drot, -1, 1), [grip]])
        return a.astype(np.float32)

    def __call__(self, obs) -> np.ndarray:
        state = obs["state"] if isinstance(obs, dict) else obs
        eef, R, obj, obj_R, state = self._parse(state)
        yaw_err = lambda: abs(_wrap(_yaw(R) - self.goal_yaw))  # noqa: E731
        self.count += 1

        carried = self.phase in (LIFT, CARRY, LOWER)
        if carried and np.linalg.norm(eef - self.grasp_offset - obj) > 0.04:  # slipped out: start over
            self.phase, self.count = APPROACH, 0

        if self.phase == APPROACH:
            self.goal_yaw = self._grasp_yaw(R, obj_R)
            target = obj + np.array([0.0, 0.0, self.hover])
            err = target - eef
            if np.linalg.norm(err[:2]) < 0.01 and abs(err[2]) < 0.02 and yaw_err() < 0.08:
                self.phase, self.count = DESCEND, 0
            return self._servo(eef, R, target, self.goal_yaw, OPEN)

        if self.phase == DESCEND:
            self.goal_yaw = self._grasp_yaw(R, obj_R)
            target = obj + np.array([0.0, 0.0, self.grasp_height[self.task]])
            err = target - eef
            if np.linalg.norm(err[:2]) > 0.03:  # pushed the object: line up again
                self.phase, self.count = APPROACH, 0
            elif np.linalg.norm(err) < 0.008 or (abs(err[2]) < 0.012 and self.count > 40):
                self.phase, self.count = GRASP, 0
            return self._servo(eef, R, target, self.goal_yaw, OPEN)

        if self.phase == GRASP:
            if self.count >= self.grasp_steps:
                self.phase, self.count = LIFT, 0
                self.grasp_offset = eef - obj
                self.lift_from = eef[2]
            return self._servo(eef, R, obj, self.goal_yaw, CLOSE)

        if self.phase == LIFT:
            z = self.carry_z[self.task]
            z = self.lift_from + self.lift_height if z is None else z
            target = np.array([eef[0], eef[1], z])
            if abs(z - eef[2]) < 0.015 and self.task != "Lift":
                self.phase, self.count = CARRY, 0
            return self._servo(eef, R, target, self.goal_yaw, CLOSE)

        if self.phase == CARRY:
            place = self._place_target(state) + self.grasp_offset
            target = np.array([place[0], place[1], self.carry_z[self.task]])
            if np.linalg.norm(target[:2] - eef[:2]) < 0.01:
                self.phase, self.count = LOWER, 0
            return self._servo(eef, R, target, self.goal_yaw, CLOSE)

        if self.phase == LOWER:
            target = self._place_target(state) + self.grasp_offset
            err = target - eef
            if np.linalg.norm(err) < 0.008 or (abs(err[2]) < 0.015 and np.linalg.norm(err[:2]) < 0.015):
                self.phase, self.count = RELEASE, 0
            return self._servo(eef, R, target, self.goal_yaw, CLOSE)

        if self.phase == RELEASE:
            if self.count >= self.release_steps:
                self.phase, self.count = RETREAT, 0
                self.lift_from = eef[2]
            return self._servo(eef, R, eef, self.goal_yaw, OPEN)

        # RETREAT: back up above the release point and stay there.
        target = np.array([eef[0], eef[1], self.lift_from + 0.1])
        return self._servo(eef, R, target, self.goal_yaw, OPEN)

    act = __call__

    def __repr__(self) -> str:
        return self.name


class PandaKinematics:
    """Geometric Jacobian of the Panda's grip site, from robosuite's own arm + gripper model."""

    def __init__(self):
        import mujoco
        from robosuite.models.grippers import gripper_factory
        from robosuite.models.robots import Panda

        robot = Panda(idn=0)
        robot.add_gripper(gripper_factory("PandaGripper", idn="0_right"))
        self.model = mujoco.MjModel.from_xml_string(robot.get_xml())
        self.data = mujoco.MjData(self.model)
        self.site = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_SITE, "gripper0_right_grip_site")
        self.qpos = np.array([self.model.jnt_qposadr[mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_JOINT,
                                                                        f"robot0_joint{i + 1}")]
                              for i in range(ARM_DOF)])
        self.dofs = np.array([self.model.jnt_dofadr[mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_JOINT,
                                                                       f"robot0_joint{i + 1}")]
                              for i in range(ARM_DOF)])

    def jacobian(self, q: np.ndarray) -> np.ndarray:
        """``(6, 7)``: rows linear (world) then angular (world) velocity of the grip site per joint."""
        import mujoco

        self.data.qpos[self.qpos] = q
        mujoco.mj_kinematics(self.model, self.data)
        mujoco.mj_comPos(self.model, self.data)
        jp, jr = np.zeros((3, self.model.nv)), np.zeros((3, self.model.nv))
        mujoco.mj_jacSite(self.model, self.data, jp, jr, self.site)
        return np.concatenate([jp[:, self.dofs], jr[:, self.dofs]])


class JointWaypointExpert:
    """The waypoint expert in absolute joint positions, ``(8,)``: 7 joint targets (rad) and the gripper.

    Each OSC delta of :class:`WaypointExpert` becomes ``q + dq`` with ``dq`` one damped-least-squares
    step toward the displaced end-effector pose (see the module docstring).
    """

    action_semantics = "joint_pos"
    action_dim = ARM_DOF + 1
    sampler = "scripted"
    nfe = 0
    damping = 0.05  # lambda: keeps dq bounded near singularities (in m / rad)

    def __init__(self, task: str = "Lift"):
        self.ee = WaypointExpert(task)
        self.task = task
        self.name = f"JointWaypointExpert({task})"
        self._kin: PandaKinematics | None = None  # built on first use (robosuite import, ~1 s)

    def reset(self) -> None:
        self.ee.reset()

    def __call__(self, obs) -> np.ndarray:
        state = np.asarray(obs["state"] if isinstance(obs, dict) else obs, dtype=np.float64)
        a = self.ee(state)
        if self._kin is None:
            self._kin = PandaKinematics()
        q = state[9:9 + ARM_DOF]
        J = self._kin.jacobian(q)
        e = np.concatenate([a[:3] * OSC_POS_SCALE, a[3:6] * OSC_ROT_SCALE])
        dq = J.T @ np.linalg.solve(J @ J.T + self.damping**2 * np.eye(6), e)
        return np.append(q + dq, a[6]).astype(np.float32)

    act = __call__

    def __getstate__(self):  # the MuJoCo model is rebuilt in the receiving process
        return {**self.__dict__, "_kin": None}

    def __repr__(self) -> str:
        return self.name


def make_robosuite_expert(task: str = "Lift", action_semantics: str = "ee_delta"):
    """The registry's expert entry: the waypoint expert for the task's action variant."""
    if action_semantics == "ee_delta":
        return WaypointExpert(task)
    if action_semantics == "joint_pos":
        return JointWaypointExpert(task)
    raise ValueError(f"action_semantics must be 'ee_delta' or 'joint_pos', got {action_semantics!r}")
