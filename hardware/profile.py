"""Robot profiles: what a robot accepts, what it reports, and how it must be held.

A profile is a YAML file (``hardware/profiles/<name>.yaml``) read into a frozen :class:`RobotProfile`:

- the command: topic, message type, action semantics (DESIGN §3) and, per action dimension, a name
  and limits. For an arm the dimensions are joints (gripper last) and the limits are joint positions
  (rad, or the gripper's own unit) with velocity and acceleration limits. For a quadrotor they are
  ``vx, vy, vz`` (world ENU, m/s) and ``yaw_rate`` (rad/s): the limits bound the set point, and
  ``max_rate`` bounds how fast the set point may change (m/s², rad/s²);
- the observation map: for every observation key, the topics and message fields it is built from,
  concatenated in order (``state``), or the one topic that supplies it (``image_<cam>``,
  ``depth_<cam>``, ``points``);
- ``feedback``: where the measured value of each action dimension comes from (joint positions,
  the vehicle's velocity), for the safety filter's rate limit and first-step guard;
- holding (``stop`` for a position-controlled arm, ``hover`` for a quadrotor; DESIGN §9), the
  stale-observation timeout, the optional heartbeat dead-man and the first-step guard.

:func:`check_checkpoint` refuses a checkpoint the robot cannot serve. Nothing here imports ROS: field
names are semantic (``pose.orientation`` is ``wxyz`` inside the stack whatever the message stores);
the ROS nodes do the conversion, guided by ``convention`` (``enu``/``ned``) and ``frame``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
KINDS = ("arm", "quadrotor")
ACTION_SEMANTICS = ("joint_pos", "ee_delta", "ee_pose", "metaworld", "velocity_setpoint", "motor_commands")
# DESIGN §9: silence makes a position-controlled arm hold; silence trips a quadrotor's failsafe, so a
# quadrotor flown by set points hovers (zero velocity). One flown by motor commands has no "hover" command to
# send (open-loop thrust is not a hold): it falls silent on purpose, and its flight controller's failsafe
# holds position (PX4's mc_raptor after 200 ms without set points; the sim bridge does the same).
HOLD_FOR_KIND = {"arm": ("stop",), "quadrotor": ("hover", "failsafe")}
FIRST_STEP_MODES = ("ramp", "refuse")
CONVENTIONS = ("enu", "ned")
FRAMES = ("world", "body")
QOS = ("sensor", "reliable", "px4")

# Fields each message type can supply, with the number of values per item. None: the size comes from
# the source itself (``joints`` for JointState; images and clouds are not flattened into ``state``).
_POSE = {"pose": 7, "pose.position": 3, "pose.orientation": 4}
_ODOM = {**_POSE, "twist.linear": 3, "twist.angular": 3, "twist.angular.z": 1}
MESSAGE_FIELDS: dict[str, dict[str, int | None]] = {
    "sensor_msgs/msg/JointState": {"position": None, "velocity": None, "effort": None},
    "sensor_msgs/msg/Image": {"image": None},
    "sensor_msgs/msg/CompressedImage": {"image": None},
    "sensor_msgs/msg/PointCloud2": {"points": None},
    "geometry_msgs/msg/PoseArray": {"poses": 7},
    "geometry_msgs/msg/PoseStamped": dict(_POSE),
    "nav_msgs/msg/Odometry": dict(_ODOM),
    "px4_msgs/msg/VehicleOdometry": dict(_ODOM),
}
UNMEASURED = "unmeasured"  # a feedback entry for a dimension the robot does not report (a virtual gripper)


class ProfileError(ValueError):
    """A profile file that is missing, malformed or inconsistent."""


class CheckpointMismatchError(ValueError):
    """A checkpoint this robot cannot run: observation keys, action semantics or dimensions differ."""


@dataclass(frozen=True)
class Source:
    """One topic field feeding an observation key (or the measured value of some action dimensions).

    ``size`` is the number of values it adds to a low-dim key per step (0 for images and clouds).
    """

    topic: str
    msg_type: str
    field: str
    size: int = 0
    joints: tuple[str, ...] = ()  # JointState: the joints to read, by name, in this order
    count: int = 1  # PoseArray: the number of poses (7 values each: position, quaternion wxyz)
    first: int = 0  # PoseArray: the index of the first of them
    frame: str | None = None  # twist: the frame the stack wants the value in (world | body)
    convention: str = "enu"  # the message's own axes: enu (ROS REP-103) or ned (PX4)
    derivative: bool = False  # the time derivative of the field, by finite differences over stamps
    optional: bool = False  # a trailing part of `state` that only some checkpoints use
    qos: str = "sensor"
    shape: tuple[int, ...] | None = None  # images: (H, W, C) as published, when fixed


@dataclass(frozen=True)
class CommandSpec:
    topic: str
    msg_type: str
    convention: str = "enu"
    # A stream the vehicle needs beside the command (PX4's OffboardControlMode "proof of life").
    keepalive: dict[str, Any] | None = None


@dataclass(frozen=True)
class FirstStepGuard:
    """The first command after start, reset or a hold must lie within ``threshold`` of the measured state
    (max over dimensions). Beyond it, ``ramp`` moves there at ``ramp_scale`` x the rate limit and
    ``refuse`` holds until the policy's command comes within the threshold."""

    threshold: float
    mode: str = "ramp"
    ramp_scale: float = 0.25


@dataclass(frozen=True, eq=False)
class RobotProfile:
    name: str
    kind: str
    action_semantics: str
    action_names: tuple[str, ...]  # (A,): joint names, gripper last | vx, vy, vz, yaw_rate
    action_limits: np.ndarray  # (A, 2) lower, upper
    max_rate: np.ndarray  # (A,) joint velocity limit | set-point slew limit, per second
    max_accel: np.ndarray | None  # (A,) for trajectory timing; NaN where unknown, None if all are
    control_rate_hz: float
    command: CommandSpec
    observations: dict[str, tuple[Source, ...]]
    feedback: tuple[Source, ...]
    hold: str
    obs_timeout_s: float
    first_step: FirstStepGuard
    heartbeat_timeout_s: float | None = None
    heartbeat_topic: str | None = None
    description: str = ""
    path: Path | None = None

    @property
    def action_dim(self) -> int:
        return len(self.action_names)

    @property
    def joint_names(self) -> tuple[str, ...]:
        """An arm's joint names as published in ``JointTrajectory``; the gripper is the last one."""
        if self.kind != "arm":
            raise AttributeError(f"profile {self.name!r} is a {self.kind}; it has no joints")
        return self.action_names

    @property
    def obs_keys(self) -> list[str]:
        return sorted(self.observations)

    def low_dim_sizes(self, key: str) -> list[int]:
        """The sizes ``key`` can have: required sources plus each prefix of the optional ones."""
        sources = self.observations[key]
        size = sum(s.size for s in sources if not s.optional)
        sizes = [size]
        for s in sources:
            if s.optional:
                size += s.size
                sizes.append(size)
        return sizes

    def sources_for(self, key: str, size: int | None = None) -> tuple[Source, ...]:
        """The sources that build ``key`` at ``size`` values (optional ones included as far as needed)."""
        sources = self.observations[key]
        if size is None or not _is_low_dim(key):
            return sources
        chosen, total = [], 0
        for s in sources:
            if s.optional and total >= size:
                break
            chosen.append(s)
            total += s.size
        if total != size:
            raise CheckpointMismatchError(
                f"profile {self.name!r} builds {key!r} with {self.low_dim_sizes(key)} values, not {size}")
        return tuple(chosen)


def list_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def load_profile(name_or_path: str | os.PathLike) -> RobotProfile:
    """A packaged profile by name (``ur5e``) or any profile YAML by path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = PROFILE_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ProfileError(f"unknown robot profile {str(name_or_path)!r}; known: {list_profiles()} "
                               "(or pass the path of a profile .yaml)")
    if not path.is_file():
        raise ProfileError(f"no profile file at {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ProfileError(f"{path} is not valid YAML: {e}") from e
    return profile_from_dict(raw, path=path)


def profile_from_dict(raw: Any, path: Path | None = None) -> RobotProfile:
    """Build and validate a profile from its YAML mapping. Errors name the profile and the bad entry."""
    where = str(path) if path is not None else "profile"
    if not isinstance(raw, dict):
        raise ProfileError(f"{where}: expected a mapping at the top level, got {type(raw).__name__}")
    where = f"profile {raw.get('name', where)!r}"
    known = {"name", "kind", "description", "action_semantics", "control_rate_hz", "hold", "obs_timeout_s",
             "heartbeat", "first_step", "command", "actions", "feedback", "observations"}
    _no_unknown(raw, known, where)
    for key in ("name", "kind", "action_semantics", "control_rate_hz", "hold", "obs_timeout_s", "first_step",
                "command", "actions", "feedback", "observations"):
        if key not in raw:
            raise ProfileError(f"{where}: missing {key!r}")

    kind, semantics, hold = raw["kind"], raw["action_semantics"], raw["hold"]
    if kind not in KINDS:
        raise ProfileError(f"{where}: kind must be one of {list(KINDS)}, got {kind!r}")
    if semantics not in ACTION_SEMANTICS:
        raise ProfileError(f"{where}: unknown action_semantics {semantics!r}; "
                           f"known: {list(ACTION_SEMANTICS)}")
    if hold not in HOLD_FOR_KIND[kind]:
        raise ProfileError(f"{where}: an {kind} holds by {' or '.join(HOLD_FOR_KIND[kind])}, not {hold!r} "
                           "(DESIGN §9: never send zeros to a position-controlled arm; a quadrotor hovers)")
    if hold == "hover" and semantics != "velocity_setpoint":
        raise ProfileError(f"{where}: hover is a zero velocity set point, so it needs action_semantics "
                           f"'velocity_setpoint', not {semantics!r}")
    if hold == "failsafe" and semantics != "motor_commands":
        raise ProfileError(f"{where}: 'failsafe' (fall silent, the flight controller holds) is for motor "
                           f"commands; a {semantics!r} quadrotor holds by 'hover'")

    actions = raw["actions"]
    if not isinstance(actions, list) or not actions:
        raise ProfileError(f"{where}: 'actions' must be a non-empty list of {{name, lower, upper, max_rate}}")
    names, limits, rates, accels = [], [], [], []
    for i, a in enumerate(actions):
        at = f"{where}: actions[{i}]"
        _no_unknown(a, {"name", "lower", "upper", "max_rate", "max_accel"}, at)
        for key in ("name", "lower", "upper", "max_rate"):
            if key not in a:
                raise ProfileError(f"{at}: missing {key!r}")
        lo, hi, rate = float(a["lower"]), float(a["upper"]), float(a["max_rate"])
        if not lo < hi:
            raise ProfileError(f"{at} ({a['name']}): lower {lo} must be below upper {hi}")
        if not rate > 0:
            raise ProfileError(f"{at} ({a['name']}): max_rate must be positive, got {rate}")
        if "max_accel" in a and not float(a["max_accel"]) > 0:
            raise ProfileError(f"{at} ({a['name']}): max_accel must be positive, got {a['max_accel']}")
        names.append(str(a["name"]))
        limits.append((lo, hi))
        rates.append(rate)
        accels.append(float(a["max_accel"]) if "max_accel" in a else None)
    if len(set(names)) != len(names):
        raise ProfileError(f"{where}: action names repeat: {names}")
    action_limits = np.array(limits, dtype=np.float64)
    if hold == "hover" and not np.all((action_limits[:, 0] <= 0) & (action_limits[:, 1] >= 0)):
        raise ProfileError(f"{where}: the hover set point (zeros) must lie inside every action's limits")

    command = raw["command"]
    _no_unknown(command, {"topic", "msg_type", "convention", "keepalive"}, f"{where}: command")
    if not command.get("topic") or not command.get("msg_type"):
        raise ProfileError(f"{where}: command needs a topic and a msg_type")
    if command.get("convention", "enu") not in CONVENTIONS:
        raise ProfileError(f"{where}: command convention must be one of {list(CONVENTIONS)}")

    rate_hz, timeout = float(raw["control_rate_hz"]), float(raw["obs_timeout_s"])
    if not rate_hz > 0:
        raise ProfileError(f"{where}: control_rate_hz must be positive, got {rate_hz}")
    if not timeout > 0:
        raise ProfileError(f"{where}: obs_timeout_s must be positive, got {timeout}")
    heartbeat = raw.get("heartbeat")
    hb_timeout = hb_topic = None
    if heartbeat is not None:
        _no_unknown(heartbeat, {"topic", "timeout_s"}, f"{where}: heartbeat")
        hb_timeout, hb_topic = float(heartbeat.get("timeout_s", 0)), heartbeat.get("topic")
        if not hb_timeout > 0 or not hb_topic:
            raise ProfileError(f"{where}: heartbeat needs a topic and a positive timeout_s")

    guard = raw["first_step"]
    _no_unknown(guard, {"threshold", "mode", "ramp_scale"}, f"{where}: first_step")
    first_step = FirstStepGuard(float(guard.get("threshold", 0)), guard.get("mode", "ramp"),
                                float(guard.get("ramp_scale", 0.25)))
    if not first_step.threshold > 0:
        raise ProfileError(f"{where}: first_step.threshold must be positive")
    if first_step.mode not in FIRST_STEP_MODES:
        raise ProfileError(f"{where}: first_step.mode must be one of {list(FIRST_STEP_MODES)}, "
                           f"got {first_step.mode!r}")
    if not 0 < first_step.ramp_scale <= 1:
        raise ProfileError(f"{where}: first_step.ramp_scale must be in (0, 1]")

    observations = raw["observations"]
    if not isinstance(observations, dict) or not observations:
        raise ProfileError(f"{where}: 'observations' must map observation keys to lists of sources")
    obs = {str(k): _sources(v, f"{where}: observations.{k}", key=str(k)) for k, v in observations.items()}
    feedback = _sources(raw["feedback"], f"{where}: feedback", key=None)
    measured = sum(s.size for s in feedback)
    if measured != len(names):
        raise ProfileError(f"{where}: feedback supplies {measured} values but there are {len(names)} actions "
                           f"{names}; mark a dimension the robot does not report as "
                           f"{{field: {UNMEASURED}, size: 1}}")

    return RobotProfile(
        name=str(raw["name"]), kind=kind, action_semantics=semantics, action_names=tuple(names),
        action_limits=action_limits, max_rate=np.array(rates, dtype=np.float64),
        max_accel=None if all(x is None for x in accels)
        else np.array([np.nan if x is None else x for x in accels], dtype=np.float64),
        control_rate_hz=rate_hz,
        command=CommandSpec(command["topic"], command["msg_type"], command.get("convention", "enu"),
                            command.get("keepalive")),
        observations=obs, feedback=feedback, hold=hold, obs_timeout_s=timeout, first_step=first_step,
        heartbeat_timeout_s=hb_timeout, heartbeat_topic=hb_topic, description=str(raw.get("description", "")),
        path=path,
    )


def _is_low_dim(key: str) -> bool:
    return not (key.startswith(("image_", "depth_")) or key == "points")


def _sources(raw: Any, where: str, key: str | None) -> tuple[Source, ...]:
    """Parse a list of sources; ``key`` None means the feedback list (low-dim, may hold unmeasured ones)."""
    if key is not None and not (key == "state" or key == "points" or key.startswith(("image_", "depth_"))):
        raise ProfileError(f"{where}: observation keys are 'state', 'image_<cam>', 'depth_<cam>' or 'points' "
                           f"(DESIGN §3), not {key!r}")
    if not isinstance(raw, list) or not raw:
        raise ProfileError(f"{where}: expected a non-empty list of sources")
    low_dim = key is None or _is_low_dim(key)
    if not low_dim and len(raw) != 1:
        raise ProfileError(f"{where}: an image, depth or point-cloud key comes from exactly one topic")
    out, seen_optional = [], False
    for i, s in enumerate(raw):
        at = f"{where}[{i}]"
        _no_unknown(s, {f.name for f in dataclasses.fields(Source)}, at)
        if key is None and s.get("field") == UNMEASURED:
            out.append(Source(topic="", msg_type="", field=UNMEASURED, size=int(s.get("size", 1))))
            continue
        for k in ("topic", "msg_type", "field"):
            if not s.get(k):
                raise ProfileError(f"{at}: missing {k!r}")
        msg_type, field = s["msg_type"], s["field"]
        if msg_type not in MESSAGE_FIELDS:
            raise ProfileError(f"{at}: unknown msg_type {msg_type!r}; known: {sorted(MESSAGE_FIELDS)}")
        if field not in MESSAGE_FIELDS[msg_type]:
            raise ProfileError(f"{at}: {msg_type} has no field {field!r}; "
                               f"it has {sorted(MESSAGE_FIELDS[msg_type])}")
        per_item = MESSAGE_FIELDS[msg_type][field]
        joints = tuple(s.get("joints", ()))
        count, first = int(s.get("count", 1)), int(s.get("first", 0))
        if count < 1 or first < 0:
            raise ProfileError(f"{at}: count must be >= 1 and first >= 0")
        if msg_type == "sensor_msgs/msg/JointState" and not joints:
            raise ProfileError(f"{at}: a JointState source lists the joints it reads ('joints')")
        if low_dim and per_item is None and not joints:
            raise ProfileError(f"{at}: field {field!r} is not a low-dim value")
        if not low_dim and per_item is not None:
            raise ProfileError(f"{at}: {key!r} needs an image or point-cloud field, not {field!r}")
        size = len(joints) if joints else (per_item * count if low_dim else 0)
        if s.get("convention", "enu") not in CONVENTIONS:
            raise ProfileError(f"{at}: convention must be one of {list(CONVENTIONS)}")
        if s.get("frame") is not None and s["frame"] not in FRAMES:
            raise ProfileError(f"{at}: frame must be one of {list(FRAMES)}")
        if s.get("qos", "sensor") not in QOS:
            raise ProfileError(f"{at}: qos must be one of {list(QOS)}")
        optional = bool(s.get("optional", False))
        if seen_optional and not optional:
            raise ProfileError(f"{at}: optional sources must come last (a checkpoint uses a prefix of them)")
        seen_optional |= optional
        shape = s.get("shape")
        out.append(Source(topic=s["topic"], msg_type=msg_type, field=field, size=size, joints=joints,
                          count=count, first=first,
                          frame=s.get("frame"), convention=s.get("convention", "enu"),
                          derivative=bool(s.get("derivative", False)), optional=optional,
                          qos=s.get("qos", "sensor"), shape=tuple(shape) if shape else None))
    return tuple(out)


def _no_unknown(mapping: Any, known: set[str], where: str) -> None:
    if not isinstance(mapping, dict):
        raise ProfileError(f"{where}: expected a mapping, got {type(mapping).__name__}")
    unknown = set(mapping) - known
    if unknown:
        raise ProfileError(f"{where}: unknown entries {sorted(unknown)}; known: {sorted(known)}")


@dataclass(frozen=True)
class CheckpointMatch:
    """What the ROS node needs once a checkpoint is accepted: the sources for each key it reads."""

    observations: dict[str, tuple[Source, ...]]
    warnings: tuple[str, ...] = ()


def check_checkpoint(profile: RobotProfile, ckpt_config: dict[str, Any]) -> CheckpointMatch:
    """Refuse a checkpoint this robot cannot run; otherwise say which sources feed each of its keys.

    ``ckpt_config`` is the checkpoint's ``config.json`` as a dict
    (``robopolicy.train.checkpoint.read_config``).
    Raises :class:`CheckpointMismatchError` naming every problem: observation keys the profile cannot
    supply, a low-dim size it cannot build, other action semantics or another action dimension.
    A checkpoint of ``unknown`` semantics is checked on the action dimension only, with a warning
    (DESIGN §3).
    """
    policy_config = ckpt_config.get("policy_config", {})
    shapes = {k: tuple(v) for k, v in policy_config.get("obs_shapes", {}).items()}
    keys = list(ckpt_config.get("obs_keys") or sorted(shapes))
    action_dim = policy_config.get("action_dim")
    semantics = ckpt_config.get("action_semantics") or "unknown"
    problems, warnings, chosen = [], [], {}

    missing = [k for k in keys if k not in profile.observations]
    if missing:
        problems.append(f"observation keys {missing} are not supplied by this robot "
                        f"(it supplies {profile.obs_keys})")
    for key in keys:
        if key in missing:
            continue
        shape = shapes.get(key)
        if _is_low_dim(key) and shape is not None:
            size = int(np.prod(shape))
            if size not in profile.low_dim_sizes(key):
                topics = [s.topic for s in profile.observations[key]]
                problems.append(f"{key!r} has {size} values in the checkpoint, but this robot builds "
                                f"{profile.low_dim_sizes(key)} from {topics}")
                continue
            chosen[key] = profile.sources_for(key, size)
            continue
        chosen[key] = profile.sources_for(key)
        declared = chosen[key][0].shape
        if declared is not None and shape is not None and tuple(declared) != tuple(shape):
            if key.startswith("image_") and declared[-1:] != shape[-1:]:
                problems.append(f"{key!r} has {shape[-1]} channels in the checkpoint, "
                                f"the camera gives {declared[-1]}")
            else:
                warnings.append(f"{key!r}: the camera publishes {declared}, the policy expects {shape}; "
                                "resized")

    if semantics == "unknown":
        warnings.append("the checkpoint's action semantics are unknown; "
                        "only the action dimension was checked")
    elif semantics != profile.action_semantics:
        problems.append(f"the checkpoint's actions are {semantics!r}, "
                        f"this robot takes {profile.action_semantics!r}")
    if action_dim != profile.action_dim:
        problems.append(f"the checkpoint predicts {action_dim}-d actions, "
                        f"this robot takes {profile.action_dim} {list(profile.action_names)}")
    rate = ckpt_config.get("control_rate_hz")
    if rate and abs(float(rate) - profile.control_rate_hz) > 1e-6:
        warnings.append(f"the checkpoint was trained at {rate} Hz, "
                        f"the profile runs at {profile.control_rate_hz} Hz")
    if problems:
        raise CheckpointMismatchError(f"checkpoint refused for robot profile {profile.name!r}:\n  - "
                                      + "\n  - ".join(problems))
    return CheckpointMatch(observations=chosen, warnings=tuple(warnings))
