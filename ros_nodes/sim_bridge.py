"""``robopolicy-sim-bridge``: a simulated robot that speaks the robot's ROS 2 topics (DESIGN §9, §11).

It wraps a registered task and serves the topics of a robot profile, so the whole deployment path
(policy node, safety filter, QoS, timing) runs without hardware:

| task                                     | profile         | publishes                                        | accepts                     |
|------------------------------------------|-----------------|--------------------------------------------------|-----------------------------|
| ``robopolicy/robosuite-<Task>-joint-v0`` | ``sim_panda``     | ``joint_states``, ``ee_pose``, ``object_poses``, ``camera/<cam>/image_raw``, ``camera/<cam>/depth``, ``points`` | ``joint_trajectory`` |
| ``robopolicy/quadrotor-{hover,track}-v0``| ``sim_quadrotor`` | ``odom``, ``setpoint`` (tracking)                  | ``cmd_vel`` (TwistStamped)    |
| ``robopolicy/quadrotor-{hover,track}-motors-v0`` | ``sim_quadrotor_motors`` | ``odom``, ``setpoint`` (tracking) | ``motor_commands`` (Float32MultiArray, FR BR BL FL in [-1, 1]) |

Timing: real time. The sim steps at the task's control rate (times ``rate_scale``) on the wall clock;
a step that is late by more than one period re-anchors the schedule (counted as an overrun) rather
than stepping in a burst. Each step publishes the sensors, stamped with the step's scheduled time.
Between episodes the sensors keep being published (stamped now) from the frozen state, so a policy
node's watchdog stays quiet.

Commands are tracked like the robot's own controllers would:

- ``JointTrajectory`` as a joint trajectory controller does: the trajectory starts at ``header.stamp``
  (0: on receipt) from the position last commanded, is interpolated linearly between points at
  ``time_from_start``, and its last point is held. A step applies the position the trajectory asks for
  at the *end* of that step (absolute joint position control, gripper last);
- ``TwistStamped`` as a flight controller does: the latest set point, and zero velocity (hover) once it
  is older than ``cmd_timeout_s``;
- motor commands (``Float32MultiArray``) as a flight controller with an onboard learned policy does
  (PX4's mc_raptor): the latest command, and once it is older than ``motor_timeout_s`` the failsafe, the
  task's cascaded controller holding the position where the commands stopped (``failsafe_steps`` in
  ``sim/episode``).

Episodes: episode ``i`` is seeded ``seed + i`` (1000 + i by default, like ``sim.evaluate``). An episode's
clock starts at its first command (the state before it is ``armed``); it ends at success, a crash or
the step cap (``done``). ``sim/reset`` (Trigger) starts the next episode; with ``auto_start:=false`` it
waits in ``ready`` (commands ignored) until ``sim/start``. ``sim/episode`` (String JSON, transient-local)
reports the state, seed, steps, success and the task's metrics. ``publish_clock:=true`` publishes the
sim time on ``/clock``.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np
from geometry_msgs.msg import PoseArray, PoseStamped, TwistStamped
from nav_msgs.msg import Odometry
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState, PointCloud2
from std_msgs.msg import Float32MultiArray, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from hardware.profile import load_profile
from ros_nodes import convert
from ros_nodes.params import declare_config
from ros_nodes.qos import COMMAND_QOS, SENSOR_QOS, STATUS_QOS
from ros_nodes.spin import spin_node

# The robosuite Panda's state layout (sim/robosuite_tasks.py) and the joint names of profile sim_panda.
PANDA_FINGERS = ("panda_finger_joint1", "panda_finger_joint2")
EE, FINGERS, ARM, OBJECTS = slice(0, 7), slice(7, 9), slice(9, 16), slice(16, None)
DEFAULT_PROFILE = {"joint_pos": "sim_panda", "velocity_setpoint": "sim_quadrotor",
                   "motor_commands": "sim_quadrotor_motors"}
STATES = ("ready", "armed", "running", "done")


@dataclass
class SimBridgeConfig:
    task: str = "robopolicy/quadrotor-hover-v0"
    profile: str = ""  # default: sim_panda for joint_pos tasks, sim_quadrotor for velocity set points
    seed: int = 1000  # episode i runs seed + i
    rate_scale: float = 1.0  # < 1 runs slower than real time (then finite differences scale too)
    publish_clock: bool = False
    auto_start: bool = True  # False: after sim/reset wait for sim/start
    cameras: str = ""  # comma-separated camera names to render and publish (arm tasks)
    image_size: int = 84
    depth: bool = False  # also camera/<cam>/depth: 32FC1 in metres, for each of `cameras`
    points: bool = False  # `points`: PointCloud2 in the world frame, fused from the task's (or `cameras`') depth
    num_points: int = 512  # farthest-point downsampled, inside the task's workspace
    cmd_timeout_s: float = 0.5  # quadrotor: older set points mean hover
    motor_timeout_s: float = 0.2  # motor-level quadrotor: older commands hand over to the failsafe (mc_raptor's)
    max_steps: int = 0  # 0: the task's step cap
    frame_id: str = "world"


class SimBridge(Node):
    def __init__(self, **overrides):
        super().__init__("sim_bridge")
        self.cfg = cfg = declare_config(self, SimBridgeConfig, overrides)
        import sim

        self.spec = sim.task_spec(cfg.task)
        profile = load_profile(cfg.profile or DEFAULT_PROFILE.get(self.spec.action_semantics, ""))
        if (profile.action_semantics, profile.action_dim) != (self.spec.action_semantics, self.spec.action_dim):
            raise ValueError(f"task {self.spec.name} takes {self.spec.action_dim}-d {self.spec.action_semantics} "
                             f"actions; profile {profile.name!r} sends {profile.action_dim}-d "
                             f"{profile.action_semantics}: use a -joint robosuite task with sim_panda or a "
                             "velocity quadrotor task with sim_quadrotor")
        self.profile, self.is_arm = profile, profile.kind == "arm"
        cameras = [c.strip() for c in cfg.cameras.split(",") if c.strip()]
        kwargs = {"max_steps": cfg.max_steps} if cfg.max_steps > 0 else {}
        if cfg.depth and not cameras:
            raise ValueError("depth:=true publishes each camera's depth image: name them in 'cameras'")
        if cameras:
            kwargs.update(render=True, camera=cameras, image_size=cfg.image_size, depth=cfg.depth)
        if cfg.points:
            kwargs.update(points=True, num_points=cfg.num_points, image_size=cfg.image_size)
        self.env = sim.make(self.spec.name, **kwargs)
        self.dt_sim = 1.0 / self.spec.control_rate_hz
        self.dt = self.dt_sim / cfg.rate_scale  # wall seconds per step

        pub = self.create_publisher
        if self.is_arm:
            self.joint_pub = pub(JointState, "joint_states", SENSOR_QOS)
            self.ee_pub = pub(PoseStamped, "ee_pose", SENSOR_QOS)
            self.objects_pub = pub(PoseArray, "object_poses", SENSOR_QOS)
            self.create_subscription(JointTrajectory, profile.command.topic, self._on_trajectory, COMMAND_QOS)
        else:
            self.odom_pub = pub(Odometry, "odom", SENSOR_QOS)
            self.setpoint_pub = pub(PoseStamped, "setpoint", SENSOR_QOS)
            if profile.action_semantics == "motor_commands":
                self.create_subscription(Float32MultiArray, profile.command.topic, self._on_motors, COMMAND_QOS)
                # Motor commands that stop (a silent hold, a dead node) hand the vehicle to its own
                # controller: the task's cascade holds the position where they stopped (see failsafe_steps).
                from sim.quadrotor.expert import QuadrotorExpert

                self.failsafe = QuadrotorExpert("track" if "track" in self.spec.name else "hover",
                                                "motor_commands")
            else:
                self.create_subscription(TwistStamped, profile.command.topic, self._on_twist, COMMAND_QOS)
        self.image_pubs = {c: pub(Image, f"camera/{c}/image_raw", SENSOR_QOS) for c in cameras}
        self.depth_pubs = {c: pub(Image, f"camera/{c}/depth", SENSOR_QOS) for c in cameras if cfg.depth}
        self.points_pub = pub(PointCloud2, "points", SENSOR_QOS) if cfg.points else None
        self.episode_pub = pub(String, "sim/episode", STATUS_QOS)
        if cfg.publish_clock:
            from rosgraph_msgs.msg import Clock

            self.clock_pub, self.clock_class = pub(Clock, "/clock", 10), Clock
        self.create_service(Trigger, "sim/reset", self._on_reset)
        self.create_service(Trigger, "sim/start", self._on_start)

        self.lock = threading.Lock()
        self.requests: list[tuple[str, threading.Event, dict]] = []  # served by the sim thread
        self.stop_event = threading.Event()
        self.episode = -1
        self.sim_time = 0.0
        self._reset_episode()
        self.thread = threading.Thread(target=self._loop, name="sim", daemon=True)
        self.thread.start()
        self.get_logger().info(f"{self.spec.name} as profile {profile.name!r} at {1 / self.dt:g} Hz "
                               f"(x{cfg.rate_scale:g} real time), episode seeds {cfg.seed}+i")

    def now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    # ---- episodes (sim thread only: MuJoCo is not thread-safe) --------------------------------------------

    def _reset_episode(self) -> None:
        self.episode += 1
        self.seed = self.cfg.seed + self.episode
        obs, info = self.env.reset(seed=self.seed)
        self.obs, self.info = obs, {k: v for k, v in info.items() if _jsonable(v)}
        self.steps, self.total_reward, self.success = 0, 0.0, False
        self.overruns, self.commands, self.started_wall = 0, 0, None
        self.failsafe_steps = 0
        self.reset_time = self.now()
        state = obs["state"]
        with self.lock:
            if self.is_arm:
                # Hold where the arm is, gripper open, until the first trajectory.
                self.held = np.append(state[ARM], -1.0).astype(np.float64)
                self.trajectory = None
            else:
                self.twist, self.twist_received = np.zeros(4), -np.inf
                self.failsafe_engaged = False
            self.state = "armed" if self.cfg.auto_start else "ready"
        self._publish_sensors(self.now())
        self._publish_episode()

    def _loop(self) -> None:
        try:
            self._run()
        except Exception:
            if self.context.ok() and not self.stop_event.is_set():
                raise  # a real error; otherwise Ctrl-C shut the context down under a publish

    def _run(self) -> None:
        next_publish = time.monotonic()
        while not self.stop_event.is_set():
            self._serve_requests()
            with self.lock:
                state = self.state
            if state == "armed" and self.commands > 0:
                with self.lock:
                    self.state = state = "running"
                self.anchor_wall, self.anchor_stamp, self.started_wall = time.monotonic(), self.now(), time.time()
                self._publish_episode()
            if state != "running":
                now = time.monotonic()
                if now >= next_publish:
                    self._publish_sensors(self.now())
                    next_publish = now + self.dt
                self.stop_event.wait(min(self.dt, 0.01))
                continue
            self._step_on_schedule()

    def _step_on_schedule(self) -> None:
        k = self.steps + 1
        due = self.anchor_wall + k * self.dt
        delay = due - time.monotonic()
        if delay > 0:
            self.stop_event.wait(delay)
        elif -delay > self.dt:  # late by more than a period: re-anchor instead of a burst of steps
            self.overruns += 1
            self.anchor_wall -= delay
            self.anchor_stamp -= delay
        action = self._command_at(self.anchor_stamp + k * self.dt)
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.obs, self.steps = obs, k
        self.total_reward += float(reward)
        self.success |= bool(info.get("success", False))
        self.info = {key: v for key, v in info.items() if _jsonable(v)}
        self.sim_time += self.dt_sim
        self._publish_sensors(self.anchor_stamp + k * self.dt)
        if self.success or terminated or truncated:
            with self.lock:
                self.state = "done"
            self._publish_episode()
        elif k % max(int(round(1.0 / self.dt)), 1) == 0:
            self._publish_episode()  # a heartbeat of the running episode, once a second

    def _serve_requests(self) -> None:
        with self.lock:
            requests, self.requests = self.requests, []
        for kind, done, reply in requests:
            if kind == "reset":
                self._reset_episode()
                reply.update(success=True, message=json.dumps({"episode": self.episode, "seed": self.seed,
                                                                 "state": self.state}))
            elif kind == "start":
                with self.lock:
                    ok = self.state == "ready"
                    if ok:
                        self.state = "armed"
                reply.update(success=ok, message="armed: the episode starts at the first command" if ok
                             else f"cannot start: the episode is {self.state}")
                self._publish_episode()
            done.set()

    # ---- commands (executor threads) ---------------------------------------------------------------------

    def _accepting(self, stamp: float) -> bool:
        """Commands count in armed/running episodes, and not when stamped before this episode's reset."""
        return self.state in ("armed", "running") and (stamp == 0.0 or stamp >= self.reset_time)

    def _on_trajectory(self, msg: JointTrajectory) -> None:
        received = self.now()
        stamp = convert.stamp_to_seconds(msg.header.stamp)
        try:
            times, positions = convert.trajectory_to_arrays(msg, self.profile.joint_names)
        except (KeyError, ValueError) as e:
            self.get_logger().error(f"joint_trajectory ignored: {e}", throttle_duration_sec=2.0)
            return
        if len(times) == 0:
            return
        with self.lock:
            if not self._accepting(stamp):
                return
            start = stamp if stamp > 0 else received
            origin = self._trajectory_position(start)
            # JTC: the trajectory starts from where the last command left the joints.
            self.trajectory = (np.concatenate([[start], start + times]), np.vstack([origin, positions]))
            self.commands += 1

    def _on_twist(self, msg: TwistStamped) -> None:
        self._set_command(convert.twist_to_setpoint(msg), convert.stamp_to_seconds(msg.header.stamp))

    def _on_motors(self, msg: Float32MultiArray) -> None:
        try:
            command = convert.float32_array_values(msg, 4)
        except ValueError as e:
            self.get_logger().error(f"motor commands ignored: {e}", throttle_duration_sec=2.0)
            return
        self._set_command(command, 0.0)  # Float32MultiArray has no stamp

    def _set_command(self, command: np.ndarray, stamp: float) -> None:
        """A quadrotor's newest set point or motor command (4,), if this episode takes commands."""
        with self.lock:
            if not self._accepting(stamp):
                return
            self.twist, self.twist_received = command, time.monotonic()
            self.commands += 1

    def _trajectory_position(self, t: float) -> np.ndarray:
        """(lock held) The arm's commanded positions (A,) at time ``t``: interpolated, last point held."""
        if self.trajectory is None:
            return self.held.copy()
        times, points = self.trajectory
        return np.array([np.interp(t, times, points[:, j]) for j in range(points.shape[1])])

    def _command_at(self, t: float) -> np.ndarray:
        with self.lock:
            if self.is_arm:
                return self._trajectory_position(t + self.dt)  # where the joints should be at the step's end
            motors = self.profile.action_semantics == "motor_commands"
            timeout = self.cfg.motor_timeout_s if motors else self.cfg.cmd_timeout_s
            timed_out = time.monotonic() - self.twist_received > timeout
            if not motors:
                return np.zeros(4) if timed_out else self.twist.copy()  # hover when set points stop
            if not timed_out:
                self.failsafe_engaged = False
                return self.twist.copy()
            if not self.failsafe_engaged:  # hold where the commands stopped
                self.failsafe.reset()
                self.failsafe.hold(self.obs["state"][:3])
                self.failsafe_engaged = True
            self.failsafe_steps += 1
            return self.failsafe(self.obs)

    # ---- publishing ---------------------------------------------------------------------------------------

    def _publish_sensors(self, stamp: float) -> None:
        state = np.asarray(self.obs["state"], dtype=np.float64)
        fid = self.cfg.frame_id
        if self.is_arm:
            names = [*self.profile.joint_names[:-1], *PANDA_FINGERS]
            self.joint_pub.publish(convert.joint_state(names, np.concatenate([state[ARM], state[FINGERS]]), stamp))
            self.ee_pub.publish(convert.pose_stamped(state[EE], stamp, fid))
            self.objects_pub.publish(convert.array_to_posearray(state[OBJECTS], stamp, fid))
        else:
            self.odom_pub.publish(convert.state_to_odometry(state, stamp, fid, "base_link"))
            if state.size >= 19:
                self.setpoint_pub.publish(convert.pose_stamped(np.r_[state[13:16], 1, 0, 0, 0], stamp, fid))
        for cam, publisher in self.image_pubs.items():
            publisher.publish(convert.array_to_image(self.obs[f"image_{cam}"], stamp, cam))
        for cam, publisher in self.depth_pubs.items():
            publisher.publish(convert.depth_to_image(self.obs[f"depth_{cam}"], stamp, cam))
        if self.points_pub is not None:
            self.points_pub.publish(convert.array_to_pointcloud2(self.obs["points"], stamp, fid))
        if self.cfg.publish_clock:
            msg = self.clock_class()
            msg.clock = convert.seconds_to_stamp(self.sim_time)
            self.clock_pub.publish(msg)

    def episode_report(self) -> dict:
        return {"episode": self.episode, "seed": self.seed, "task": self.spec.name, "state": self.state,
                "steps": self.steps, "success": self.success, "return": self.total_reward,
                "commands": self.commands, "overruns": self.overruns, "max_steps": self.env.max_steps,
                "failsafe_steps": self.failsafe_steps,
                "wall_s": None if self.started_wall is None else time.time() - self.started_wall,
                "info": self.info}

    def _publish_episode(self) -> None:
        self.episode_pub.publish(String(data=json.dumps(self.episode_report())))

    # ---- services -----------------------------------------------------------------------------------------

    def _request(self, kind: str, response):
        done, reply = threading.Event(), {}
        with self.lock:
            self.requests.append((kind, done, reply))
        if not done.wait(timeout=30.0):
            response.success, response.message = False, f"the sim thread did not serve {kind} within 30 s"
        else:
            response.success, response.message = reply["success"], reply["message"]
        return response

    def _on_reset(self, request, response):
        return self._request("reset", response)

    def _on_start(self, request, response):
        return self._request("start", response)

    def shutdown(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=5.0)
        self.env.close()


def _jsonable(value) -> bool:
    return isinstance(value, (bool, int, float, str)) or value is None


def main() -> int:
    # Callbacks store commands; the services wait on the sim thread, which never waits on them: one thread.
    return spin_node(SimBridge, "robopolicy-sim-bridge", refusals=(ValueError, KeyError), threads=1)


if __name__ == "__main__":
    sys.exit(main())
