"""``robopolicy-recorder``: record demonstrations from live ROS 2 topics into a zarr store (DESIGN §4, §9).

It subscribes to the robot profile's observation topics and to its command topic, and while an episode
is open it samples them at ``rate_hz`` into one row per tick:

- the observation keys (``state``, ``image_<cam>`` ...) are assembled from the newest message of each
  topic exactly as the policy node assembles them (:class:`ros_nodes.observation.ObservationAssembler`),
  so a policy trained on the store reads the same vector on the robot;
- ``action`` is what the robot was commanded at that instant: for an arm, the target of the newest
  ``JointTrajectory`` interpolated at the sampling time (the point a joint trajectory controller is
  heading for, gripper last); for a quadrotor, the newest ``TwistStamped`` set point (vx, vy, vz, yaw rate);
- ``timestamp``: the node's clock (s; sim time under ``use_sim_time``).

Episodes go through :class:`robopolicy.store.EpisodeWriter`: ``recorder/stop`` commits one atomically,
``recorder/discard`` drops it; a crash or SIGKILL loses at most the open one. ``recorder/start`` refuses
while a topic it needs is missing or stale, naming them. A tick where a topic has gone stale is skipped
(and counted), so the store never holds an observation older than the profile allows.

Parameters (``--ros-args -p name:=value``): see :class:`RecorderConfig`.
The state size is fixed by the first episode: the profile's required sources plus those optional ones
(object poses, a tracking set point) whose topics are live at the first start, or, for an existing store,
whatever its ``state`` width needs. Root attributes record the profile, the action semantics and names,
the sampling rate, every topic read (resolved name, type, field) and the rates the topics actually
delivered during the last episode (``ros.measured_rates_hz``). Status (JSON ``std_msgs/String``,
transient-local): ``recorder/status``.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import rclpy
import rclpy.executors
from rclpy.node import Node
from std_msgs.msg import String
from std_srvs.srv import Trigger

from hardware.profile import CheckpointMismatchError, RobotProfile, Source, load_profile
from robopolicy.store import EpisodeWriter, StoreError
from ros_nodes import convert, qos
from ros_nodes.observation import ObservationAssembler, is_low_dim
from ros_nodes.params import declare_config

JOINT_TRAJECTORY = "trajectory_msgs/msg/JointTrajectory"
TWIST_STAMPED = "geometry_msgs/msg/TwistStamped"
FLOAT32_ARRAY = "std_msgs/msg/Float32MultiArray"  # motor commands

@dataclass
class RecorderConfig:
    """The node's ROS parameters (DESIGN §11: ``store``, ``profile``, ``rate_hz``). Zero / empty means
    "the profile's value"."""

    store: str = ""  # required: the zarr store to append episodes to (created if absent)
    profile: str = ""  # required: a robot profile name (hardware/profiles) or a profile .yaml path
    rate_hz: float = 0.0  # sampling rate; default: the profile's control rate
    obs_keys: str = ""  # comma-separated observation keys to record; default: every key of the profile
    stale_s: float = 0.0  # a topic older than this is stale; default: the profile's obs_timeout_s
    command_topic: str = ""  # default: the profile's (cmd_vel for a quadrotor not commanded by TwistStamped)
    task: str = ""  # stored in the attributes (metadata)
    teleop: str = ""  # the teleop device, stored in the provenance (metadata)
    zarr_format: int = 3  # of a new store (2 or 3)


def trajectory_target(times: np.ndarray, positions: np.ndarray, elapsed: float) -> np.ndarray:
    """The position a trajectory ``(H,)`` times / ``(H, n)`` positions commands ``elapsed`` s after its
    start: linear between points (as a joint trajectory controller given positions only), its first
    point before it, its last point after it."""
    return np.array([np.interp(elapsed, times, positions[:, j]) for j in range(positions.shape[1])])


class Recorder(Node):
    def __init__(self):
        super().__init__("recorder")
        self.cfg = cfg = declare_config(self, RecorderConfig)
        if not cfg.store:
            raise ValueError("robopolicy-recorder: parameter 'store' is required (the zarr store to write)")
        if not cfg.profile:
            raise ValueError("robopolicy-recorder: parameter 'profile' is required (e.g. sim_panda, ur5e)")
        self.profile: RobotProfile = load_profile(cfg.profile)
        profile = self.profile
        self.rate_hz = cfg.rate_hz or profile.control_rate_hz
        self.stale_s = cfg.stale_s or profile.obs_timeout_s
        if not self.rate_hz > 0 or not self.stale_s > 0:
            raise ValueError(f"rate_hz and stale_s must be positive, got {self.rate_hz} and {self.stale_s}")
        self.obs_keys = [k.strip() for k in cfg.obs_keys.split(",") if k.strip()] or profile.obs_keys
        unknown = [k for k in self.obs_keys if k not in profile.observations]
        if unknown:
            raise ValueError(f"obs_keys {unknown} are not in profile {profile.name!r}; "
                             f"it supplies {profile.obs_keys}")

        # What was commanded: the profile's command if we can read it; a set-point quadrotor's TwistStamped
        # otherwise (e.g. a PX4 vehicle flown from a TwistStamped teleop).
        command_type = profile.command.msg_type
        if command_type not in (JOINT_TRAJECTORY, TWIST_STAMPED, FLOAT32_ARRAY):
            if profile.action_semantics != "velocity_setpoint":
                raise ValueError(f"profile {profile.name!r} commands {command_type}; the recorder reads "
                                 f"{JOINT_TRAJECTORY}, {TWIST_STAMPED} and {FLOAT32_ARRAY}")
            command_type = TWIST_STAMPED
        self.command_type = command_type
        self.command_topic = cfg.command_topic or (
            profile.command.topic if command_type == profile.command.msg_type else "cmd_vel")
        self._target: Any = None  # arm: (start s, times (H,), positions (H, A)); quadrotor: (4,) set point
        self._command_received: float | None = None

        # Every topic any chosen key might read; which optional ones are used is settled at the first start.
        self._sources = {k: profile.observations[k] for k in self.obs_keys}
        self._topics = {s.topic: s for srcs in self._sources.values() for s in srcs}
        self._received: dict[str, float] = {}  # topic -> receive time of its newest message
        self._newest: dict[str, Any] = {}  # topic -> that message
        self._counts: dict[str, int] = {}  # messages per topic since the episode started
        self._assembler: ObservationAssembler | None = None
        ObservationAssembler(profile, sources=self._sources)  # refuses unreadable sources now
        for topic, source in sorted(self._topics.items()):
            self.create_subscription(convert.message_class(source.msg_type), topic,
                                     lambda msg, t=topic: self._on_observation(t, msg),
                                     qos.for_source(source.qos))
        self.create_subscription(convert.message_class(command_type), self.command_topic, self._on_command,
                                 qos.COMMAND_QOS)

        self.writer = EpisodeWriter(cfg.store, zarr_format=cfg.zarr_format, attrs=self._schema())
        self.store_path = str(self.writer.path)
        self._recording = False
        self._episode_start: float | None = None
        self._dropped = 0
        self._drop_reasons: set[str] = set()

        self.create_service(Trigger, "recorder/start", self._start)
        self.create_service(Trigger, "recorder/stop", self._stop)
        self.create_service(Trigger, "recorder/discard", self._discard)
        self._status = self.create_publisher(String, "recorder/status", qos.STATUS_QOS)
        self.create_timer(1.0 / self.rate_hz, self._tick)
        self._publish_status()
        self.get_logger().info(
            f"recording profile {profile.name!r} keys {self.obs_keys} + action from {self.command_topic!r} "
            f"({command_type}) at {self.rate_hz:g} Hz into {self.store_path} "
            f"({self.writer.n_episodes} episodes there); call recorder/start")

    # ---- store attributes ----------------------------------------------------------------------------

    def _schema(self) -> dict[str, Any]:
        """Root attributes: schema, topics and rates, profile, action semantics, provenance (DESIGN §4)."""
        profile = self.profile
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        attrs = {
            "action_key": "action",
            "obs_keys": sorted(self.obs_keys),
            "action_semantics": profile.action_semantics,
            "control_rate_hz": float(self.rate_hz),
            "robot_profile": profile.name,
            "action_names": list(profile.action_names),
            "ros": {
                "node": self.get_fully_qualified_name(),
                "distro": os.environ.get("ROS_DISTRO", "unknown"),
                "use_sim_time": bool(self.get_parameter("use_sim_time").value),
                "sample_rate_hz": float(self.rate_hz),
                "stale_s": float(self.stale_s),
                "command": {"topic": self.resolve_topic_name(self.command_topic),
                            "msg_type": self.command_type},
                "observations": self._describe(self._sources),  # narrowed to those used at the first start
            },
            "key_info": {
                **{k: {"role": "observation"} for k in self.obs_keys},
                "action": {"role": "action", "semantics": profile.action_semantics,
                           "names": list(profile.action_names),
                           "limits": profile.action_limits.tolist(),
                           "source": {JOINT_TRAJECTORY: "JointTrajectory target at the sampling instant",
                                      TWIST_STAMPED: "newest TwistStamped set point",
                                      FLOAT32_ARRAY: "newest motor command"}[self.command_type]},
                "timestamp": {"role": "time", "units": "s", "clock": "ROS node clock at sampling"},
            },
            "provenance": {"source": "teleop" if self.cfg.teleop else "ros2",
                           "generator": "robopolicy-recorder", "teleop_device": self.cfg.teleop or None,
                           "updated": now, "host": platform.node()},
        }
        if self.cfg.task:
            attrs["task"] = self.cfg.task
        return attrs

    def _describe(self, sources: dict[str, tuple[Source, ...]]) -> dict[str, list[dict[str, Any]]]:
        """Each key's sources as JSON, in concatenation order, topics resolved to their full names."""
        return {k: [{"topic": self.resolve_topic_name(s.topic), "msg_type": s.msg_type, "field": s.field,
                     **({"joints": list(s.joints)} if s.joints else {}),
                     **({"first": s.first} if s.msg_type.endswith("PoseArray") else {}),
                     **({"frame": s.frame} if s.frame else {}),
                     "derivative": s.derivative, "size": s.size} for s in srcs]
                for k, srcs in sources.items()}

    # ---- input ---------------------------------------------------------------------------------------

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_observation(self, topic: str, msg: Any) -> None:
        now = self._now()
        self._received[topic], self._newest[topic] = now, msg
        self._counts[topic] = self._counts.get(topic, 0) + 1
        if self._assembler is not None and topic in self._assembler.required_topics:
            self._assembler.update(topic, msg, now)

    def _on_command(self, msg: Any) -> None:
        now = self._now()
        if self.command_type == TWIST_STAMPED:
            self._target = convert.twist_to_setpoint(msg)
            self._counts[self.command_topic] = self._counts.get(self.command_topic, 0) + 1
        elif self.command_type == FLOAT32_ARRAY:
            try:
                self._target = convert.float32_array_values(msg, self.profile.action_dim)
            except ValueError as e:
                self.get_logger().error(f"ignoring a command on {self.command_topic!r}: {e}",
                                        throttle_duration_sec=5.0)
                return
            self._counts[self.command_topic] = self._counts.get(self.command_topic, 0) + 1
        else:
            try:
                times, positions = convert.trajectory_to_arrays(msg, self.profile.action_names)
            except (KeyError, ValueError) as e:  # a controller rejects it too; so do we
                self.get_logger().error(f"ignoring a trajectory on {self.command_topic!r}: {e}",
                                        throttle_duration_sec=5.0)
                return
            if len(times) == 0:
                return
            stamp = convert.stamp_to_seconds(msg.header.stamp)
            self._target = (stamp if stamp > 0 else now, times, positions)  # stamp 0: "start now"
            self._counts[self.command_topic] = self._counts.get(self.command_topic, 0) + 1
        self._command_received = now

    def _action(self, now: float) -> np.ndarray:
        if self.command_type in (TWIST_STAMPED, FLOAT32_ARRAY):
            return np.asarray(self._target, dtype=np.float32)
        start, times, positions = self._target
        return trajectory_target(times, positions, now - start).astype(np.float32)

    # ---- readiness -----------------------------------------------------------------------------------

    def _problems(self, topics: list[str], now: float) -> list[str]:
        """What keeps ``topics`` (and the command) from being recorded now; empty if nothing."""
        missing = [t for t in topics if t not in self._received]
        stale = [t for t in topics if t in self._received and now - self._received[t] > self.stale_s]
        problems = []
        if missing:
            problems.append(f"no message yet on {missing}")
        if stale:
            ages = ", ".join(f"{t} {now - self._received[t]:.2f} s" for t in stale)
            problems.append(f"stale (older than {self.stale_s:g} s): {ages}")
        if self._command_received is None:
            problems.append(f"no command yet on {self.command_topic!r} ({self.command_type})")
        elif self.profile.kind == "quadrotor" and now - self._command_received > self.stale_s:
            # a set-point stream that stops means the vehicle is not being flown by it any more
            age = now - self._command_received
            problems.append(f"command {self.command_topic!r} stale ({age:.2f} s old)")
        return problems

    def _choose_sources(self, now: float) -> dict[str, tuple[Source, ...]]:
        """Sources per key: an existing store's widths decide; else the longest run of optional sources
        that the newest messages can fill (a live ``object_poses`` with one pose fills one source, not
        two)."""
        chosen = {}
        for key, sources in self._sources.items():
            if not is_low_dim(key):
                chosen[key] = sources
                continue
            if key in self.writer.store.keys:
                size = int(np.prod(self.writer.store.array(key).shape[1:]))
                chosen[key] = self.profile.sources_for(key, size)
                continue
            required = [s for s in sources if not s.optional]
            optional = [s for s in sources if s.optional]
            chosen[key] = tuple(required)
            for n in range(len(optional), 0, -1):
                if self._readable({key: (*required, *optional[:n])}, now):
                    chosen[key] = (*required, *optional[:n])
                    break
        return chosen

    def _readable(self, sources: dict[str, tuple[Source, ...]], now: float) -> bool:
        """Whether the newest messages are fresh and hold every field ``sources`` read."""
        topics = {s.topic for srcs in sources.values() for s in srcs}
        if any(t not in self._received or now - self._received[t] > self.stale_s for t in topics):
            return False
        try:
            self._assembler_for(sources).assemble()
        except (KeyError, ValueError):
            return False
        return True

    def _assembler_for(self, sources: dict[str, tuple[Source, ...]]) -> ObservationAssembler:
        """An assembler for ``sources``, primed with the newest messages so it is ready at once."""
        assembler = ObservationAssembler(self.profile, sources=sources)
        for topic in assembler.required_topics:
            if topic in self._newest:
                assembler.update(topic, self._newest[topic], self._received[topic])
        return assembler

    # ---- services ------------------------------------------------------------------------------------

    def _start(self, request, response):
        now = self._now()
        if self._recording:
            return self._reply(response, False, f"already recording ({self.writer.n_buffered} steps); "
                                                "stop or discard first")
        try:
            sources = self._assembler.sources if self._assembler is not None else self._choose_sources(now)
        except CheckpointMismatchError as e:
            return self._reply(response, False, f"cannot start recording: the store's layout does not match "
                                                f"the profile: {e}")
        topics = sorted({s.topic for srcs in sources.values() for s in srcs})
        problems = self._problems(topics, now)
        if problems:
            return self._reply(response, False, "cannot start recording: " + "; ".join(problems))
        if self._assembler is None:
            self._assembler = self._assembler_for(sources)
            ros = {**self.writer.store.attrs.get("ros", {}), "observations": self._describe(sources)}
            self.writer.set_attrs(ros=ros)
        self._recording, self._episode_start = True, now
        self._dropped, self._drop_reasons, self._counts = 0, set(), {}
        self._publish_status()
        return self._reply(response, True,
                           f"recording episode {self.writer.n_episodes} at {self.rate_hz:g} Hz")

    def _stop(self, request, response):
        if not self._recording:
            return self._reply(response, False, "not recording; call recorder/start first")
        steps = self.writer.n_buffered
        if steps == 0:
            return self._reply(response, False, "no step recorded yet (topics stale?); discard or wait")
        self._recording = False
        try:
            index = self.writer.commit()
        except StoreError as e:
            self.writer.discard()
            return self._reply(response, False, f"episode not committed: {e}")
        # What the topics actually delivered during the episode: a camera at half its rate shows here.
        seconds = max(self._now() - self._episode_start, 1e-9)
        rates = {self.resolve_topic_name(t): round(n / seconds, 2) for t, n in sorted(self._counts.items())}
        self.writer.set_attrs(ros={**self.writer.store.attrs.get("ros", {}), "measured_rates_hz": rates})
        dropped = ""
        if self._dropped:
            dropped = f", {self._dropped} ticks skipped ({'; '.join(sorted(self._drop_reasons))})"
        return self._reply(response, True, f"committed episode {index}: {steps} steps{dropped}")

    def _discard(self, request, response):
        if not self._recording:
            return self._reply(response, False, "not recording; nothing to discard")
        steps = self.writer.n_buffered
        self.writer.discard()
        self._recording = False
        return self._reply(response, True, f"discarded {steps} steps")

    def _reply(self, response, success: bool, message: str):
        response.success, response.message = success, message
        if success:  # rclpy's logger refuses two severities from one line of code
            self.get_logger().info(message)
        else:
            self.get_logger().warning(message)
        self._publish_status()
        return response

    def _publish_status(self) -> None:
        status = {"recording": self._recording, "steps": self.writer.n_buffered,
                  "episodes": self.writer.n_episodes, "dropped": self._dropped, "store": self.store_path}
        self._status.publish(String(data=json.dumps(status)))

    # ---- sampling ------------------------------------------------------------------------------------

    def _tick(self) -> None:
        if not self._recording:
            return
        now = self._now()
        problems = self._problems(self._assembler.required_topics, now)
        if not problems:
            try:
                obs, _ = self._assembler.assemble()
            except (KeyError, ValueError) as e:  # e.g. a PoseArray that lost a pose the store's layout needs
                problems = [str(e)]
        if problems:
            self._dropped += 1
            self._drop_reasons.update(problems)
            self.get_logger().warning(f"skipping a tick: {'; '.join(problems)}", throttle_duration_sec=2.0)
            return
        self.writer.add_step({**obs, "action": self._action(now), "timestamp": np.float64(now)})
        if self.writer.n_buffered % max(1, int(self.rate_hz)) == 0:
            self._publish_status()

    def close(self) -> None:
        if self.writer.n_buffered:
            self.get_logger().warning(f"shutting down with {self.writer.n_buffered} uncommitted steps: "
                                      "dropped")
            self.writer.discard()
        self.writer.close()


def main(args: list[str] | None = None) -> None:
    rclpy.init(args=args)
    node = None
    try:
        node = Recorder()
        rclpy.spin(node)
    except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        pass
    except (ValueError, StoreError, OSError, NotImplementedError) as e:
        print(f"robopolicy-recorder: {e}", file=sys.stderr)
        sys.exit(2)
    finally:
        if node is not None:
            node.close()
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


if __name__ == "__main__":
    main()
