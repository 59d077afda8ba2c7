"""``robopolicy-teleop``: drive a robot from a keyboard or a gamepad over its profile's command topic.

The device (:mod:`hardware.teleop`) gives axes in ``[-1, 1]``; this node turns them into the robot's
commands at the control rate:

- quadrotor: a ``TwistStamped`` velocity set point every tick, axis ``i`` -> ``vx, vy, vz, yaw_rate``
  (world ENU), scaled by ``speed`` times the profile's limit on that side. No input is a zero set
  point (hover), published like any other: silence would trip a vehicle's failsafe (DESIGN §9);
- arm: joint jogging. The target starts at the measured joint positions (nothing is published before
  ``joint_states`` arrives: never a zero position command) and axis ``i`` moves joint ``i`` at
  ``speed * max_rate``, clamped to the joint limits. The gripper (the last joint) toggles between its
  limits. Each tick publishes a one-point ``JointTrajectory`` reached one period later (gripper last).
  Joint space rather than end-effector deltas: it needs no kinematics, works the same for every arm
  profile and cannot command an unreachable pose.

Events: ``record`` calls ``recorder/start`` or ``recorder/stop`` (following ``recorder/status``),
``discard`` calls ``recorder/discard``, ``quit`` ends the node. Keys are listed in :mod:`hardware.teleop`.

The keyboard is the node's stdin (a terminal is put in cbreak mode) or the terminal named by ``input``
(``/dev/pts/N``); under ``ros2 launch`` give the node a terminal, e.g. ``prefix='xterm -e'``.
Parameters (``--ros-args -p name:=value``): see :class:`TeleopConfig`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import numpy as np
import rclpy
from geometry_msgs.msg import TwistStamped
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from std_msgs.msg import String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from hardware import teleop
from hardware.profile import RobotProfile, load_profile
from ros_nodes import convert
from ros_nodes.observation import ObservationAssembler
from ros_nodes.params import declare_config
from ros_nodes.qos import COMMAND_QOS, STATUS_QOS, for_source

TWIST_STAMPED = "geometry_msgs/msg/TwistStamped"


@dataclass
class TeleopConfig:
    """The node's ROS parameters. Zero / empty means "the profile's value"."""

    profile: str = ""  # required: a robot profile name or a profile .yaml path
    device: str = "keyboard"  # keyboard | gamepad
    input: str = ""  # keyboard: a terminal path (default stdin); gamepad: /dev/input/jsN (default the first)
    speed: float = 0.5  # full deflection = this fraction of the velocity limit (quadrotor) or max_rate (arm)
    rate_hz: float = 0.0  # default: the profile's control rate
    hold_s: float = 0.6  # keyboard: how long one key press drives its axis
    command_topic: str = ""  # default: the profile's (cmd_vel for a quadrotor not commanded by TwistStamped)
    recorder: str = "recorder"  # namespace of the recorder's services; empty: record/discard keys do nothing


class QuadrotorMapping:
    """Axes -> ``(4,)`` velocity set point: ``speed`` x the limit on the side the axis points to."""

    def __init__(self, profile: RobotProfile, speed: float):
        self.lower, self.upper = profile.action_limits[:, 0], profile.action_limits[:, 1]
        self.speed = speed

    def __call__(self, axes: np.ndarray) -> np.ndarray:
        a = axes[: len(self.lower)]
        v = self.speed * np.where(a >= 0, a * self.upper, -a * self.lower)
        return np.clip(v, self.lower, self.upper)


class JointJog:
    """Axes -> joint targets ``(A,)``: joint ``i`` moves at ``axes[i] * speed * max_rate[i]``, clamped to its
    limits; the gripper (last) toggles between its limits. ``None`` until the measured state is known."""

    def __init__(self, profile: RobotProfile, speed: float):
        self.lower, self.upper = profile.action_limits[:, 0], profile.action_limits[:, 1]
        self.rate = speed * profile.max_rate
        self.n_jog = min(profile.action_dim - 1, teleop.N_AXES)  # the gripper is not jogged
        self.target: np.ndarray | None = None

    def start(self, measured: np.ndarray) -> bool:
        """Anchor at the measured joints (a gripper without feedback starts at its lower limit)."""
        if np.isnan(measured[:-1]).any():
            return False
        self.target = np.clip(np.where(np.isnan(measured), self.lower, measured), self.lower, self.upper)
        return True

    def toggle_gripper(self) -> None:
        if self.target is not None:
            middle = (self.lower[-1] + self.upper[-1]) / 2
            self.target[-1] = self.upper[-1] if self.target[-1] <= middle else self.lower[-1]

    def __call__(self, axes: np.ndarray, dt: float) -> np.ndarray:
        step = np.zeros_like(self.target)
        step[: self.n_jog] = axes[: self.n_jog] * self.rate[: self.n_jog] * dt
        self.target = np.clip(self.target + step, self.lower, self.upper)
        return self.target.copy()


class TeleopNode(Node):
    def __init__(self, device: teleop.TeleopDevice | None = None):
        super().__init__("teleop")
        self.cfg = cfg = declare_config(self, TeleopConfig)
        if not cfg.profile:
            raise ValueError("parameter 'profile' is required (a robot profile name or .yaml path)")
        if not 0 < cfg.speed <= 1:
            raise ValueError(f"parameter 'speed' must be in (0, 1], got {cfg.speed}")
        self.profile = profile = load_profile(cfg.profile)
        if profile.action_semantics not in ("joint_pos", "velocity_setpoint"):
            raise ValueError(f"teleop jogs joints or flies velocity set points; profile {profile.name!r} takes "
                             f"{profile.action_semantics!r} (record a motor-level vehicle's own controller "
                             "instead, e.g. the task's expert)")
        self.rate_hz = cfg.rate_hz if cfg.rate_hz > 0 else profile.control_rate_hz
        self.period = 1.0 / self.rate_hz
        self.is_arm = profile.kind == "arm"

        keymap = "joint" if self.is_arm else "flight"
        self.device = device or teleop.open_device(cfg.device, cfg.input, keymap=keymap, hold_s=cfg.hold_s)
        if self.is_arm:
            self.jog = JointJog(profile, cfg.speed)
            # measured joints from the profile's feedback (no observation keys needed)
            self.assembler = ObservationAssembler(profile, sources={})
            for topic, msg_class, qos_name in self.assembler.subscriptions:
                self.create_subscription(msg_class, topic,
                                         lambda m, t=topic: self.assembler.update(t, m, self._now()),
                                         for_source(qos_name))
            topic = cfg.command_topic or profile.command.topic
            self.publisher = self.create_publisher(JointTrajectory, topic, COMMAND_QOS)
        else:
            self.fly = QuadrotorMapping(profile, cfg.speed)
            default = profile.command.topic if profile.command.msg_type == TWIST_STAMPED else "cmd_vel"
            topic = cfg.command_topic or default
            self.publisher = self.create_publisher(TwistStamped, topic, COMMAND_QOS)

        self._recording = False
        self._recorder_clients = {}
        if cfg.recorder:
            for name in ("start", "stop", "discard"):
                self._recorder_clients[name] = self.create_client(Trigger, f"{cfg.recorder}/{name}")
            self.create_subscription(String, f"{cfg.recorder}/status", self._on_recorder_status, STATUS_QOS)
        self.create_timer(self.period, self._tick)
        self.get_logger().info(f"teleop {cfg.device} -> {self.resolve_topic_name(topic)} for profile "
                               f"{profile.name!r} at {self.rate_hz:g} Hz; {_help(self.is_arm)}")

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _tick(self) -> None:
        now = self._now()
        reading = self.device.poll(now)
        for event in reading.events:
            self._on_event(event)
        if self.is_arm:
            if self.jog.target is None and not self.jog.start(self.assembler.measured()):
                self.get_logger().info("waiting for joint_states before jogging", throttle_duration_sec=5.0)
                return
            positions = self.jog(reading.axes, self.period)
            self.publisher.publish(convert.joint_trajectory(self.profile.action_names, positions[None],
                                                            self.period, stamp=0.0))
        else:
            self.publisher.publish(convert.twist_stamped(self.fly(reading.axes), now))

    def _on_event(self, event: str) -> None:
        if event == teleop.GRIPPER and self.is_arm:
            self.jog.toggle_gripper()
        elif event == teleop.RECORD:
            self._call("stop" if self._recording else "start")
        elif event == teleop.DISCARD:
            self._call("discard")
        elif event == teleop.QUIT:
            self.get_logger().info("quit")
            raise SystemExit(0)

    def _call(self, name: str) -> None:
        client = self._recorder_clients.get(name)
        if client is None:
            return
        if not client.service_is_ready():
            self.get_logger().warning(f"no recorder answers {client.srv_name}")
            return
        future = client.call_async(Trigger.Request())
        future.add_done_callback(lambda f: self.get_logger().info(f"{client.srv_name}: {f.result().message}"))

    def _on_recorder_status(self, msg: String) -> None:
        self._recording = bool(json.loads(msg.data).get("recording"))

    def close(self) -> None:
        self.device.close()


def _help(is_arm: bool) -> str:
    moves = ("keys 1..7 move joints 1..7 up, q w e r t y u move them down" if is_arm
             else "w/s forward/back, a/d left/right, r/f up/down, q/e yaw")
    return f"{moves}; space gripper, x halt, Enter record start/stop, Backspace discard, Esc quit"


def main(args: list[str] | None = None) -> None:
    rclpy.init(args=args)
    node = None
    try:
        node = TeleopNode()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException, SystemExit):
        pass
    except (ValueError, OSError) as e:
        print(f"robopolicy-teleop: {e}", file=sys.stderr)
        sys.exit(2)
    finally:
        if node is not None:
            node.close()  # restores the terminal
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


if __name__ == "__main__":
    main()
