"""robopolicy-recorder as a separate process over DDS, recording from a live sim bridge into a real zarr
store: refusal while topics are missing, commit / discard, the store's contents and attributes, a SIGKILL
in the middle of an episode, and the whole teleop -> sim bridge -> recorder pipeline of record.launch.py."""

import json
import os
import pty
import signal
import subprocess
import threading
import time

import numpy as np
import pytest

pytest.importorskip("rclpy")
from geometry_msgs.msg import TwistStamped  # noqa: E402
from std_msgs.msg import Float32MultiArray, String  # noqa: E402

from robopolicy.store import DemoStore, EpisodeWriter  # noqa: E402
from ros_nodes import convert  # noqa: E402
from ros_nodes.qos import COMMAND_QOS, STATUS_QOS  # noqa: E402
from ros_nodes.harness import BIN, wait_alive  # noqa: E402

HOVER = "robopolicy/quadrotor-hover-v0"
LIFT = "robopolicy/robosuite-Lift-joint-v0"


class SetPoints:
    """Publishes ``value`` (vx, vy, vz, yaw rate) on cmd_vel at 50 Hz, as a pilot or policy node would."""

    def __init__(self, ros):
        self.ros, self.value = ros, np.zeros(4)
        self.pub = ros.node.create_publisher(TwistStamped, "cmd_vel", COMMAND_QOS)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        while not self.stopped.is_set():
            now = self.ros.node.get_clock().now().nanoseconds * 1e-9
            self.pub.publish(convert.twist_stamped(self.value, now))
            time.sleep(0.02)

    def stop(self):
        self.stopped.set()
        self.thread.join()


def test_records_motor_commands(launch_node, ros_node, tmp_path):
    """A motor-level vehicle (profile sim_quadrotor_motors): the action is the newest Float32MultiArray."""
    store = tmp_path / "motors.zarr"
    recorder = launch_node("robopolicy-recorder", {"store": str(store), "profile": "sim_quadrotor_motors",
                                                   "task": "robopolicy/quadrotor-hover-motors-v0"})
    launch_node("robopolicy-sim-bridge", {"task": "robopolicy/quadrotor-hover-motors-v0"})
    motors = ros_node.node.create_publisher(Float32MultiArray, "motor_commands", COMMAND_QOS)
    command = np.array([0.41, 0.39, 0.41, 0.39], np.float32)
    stop = threading.Event()

    def pilot():
        while not stop.is_set():
            motors.publish(convert.float32_array(command))
            time.sleep(0.01)

    thread = threading.Thread(target=pilot, daemon=True)
    thread.start()
    try:
        start_when_ready(ros_node, recorder, 60)
        time.sleep(0.5)
        ok, message = ros_node.trigger("recorder/stop")
        assert ok and message.startswith("committed episode 0"), message
    finally:
        stop.set()
        thread.join()
    with DemoStore.open(store) as s:
        assert s.action_semantics == "motor_commands" and s.control_rate_hz == 100.0
        episode = s.episode(0)
        assert len(episode["action"]) >= 20 and episode["state"].shape[1] == 13
        np.testing.assert_allclose(episode["action"], np.broadcast_to(command, episode["action"].shape))
        assert s.attrs["ros"]["command"]["msg_type"] == "std_msgs/msg/Float32MultiArray"


def start_when_ready(ros, node, timeout: float = 30.0) -> str:
    """Call recorder/start until it accepts (discovery of every topic takes a moment); its message."""
    replies = []

    def accepted():
        replies.append(ros.trigger("recorder/start"))
        return replies[-1][0] or time.sleep(0.2)

    wait_alive(accepted, timeout, "recorder/start to accept", node)
    return replies[-1][1]


def test_records_commits_discards_and_survives_sigkill(launch_node, ros_node, tmp_path):
    store = tmp_path / "flights.zarr"
    recorder = launch_node("robopolicy-recorder", {"store": str(store), "profile": "sim_quadrotor",
                                                   "task": HOVER, "teleop": "scripted"})
    wait_alive(lambda: ros_node.node.count_subscribers("odom") > 0, 30, "the recorder to subscribe", recorder)
    ok, message = ros_node.trigger("recorder/start")  # nothing is publishing yet
    assert not ok
    assert "no message yet on ['odom']" in message and "no command yet on 'cmd_vel'" in message

    episodes = ros_node.collect(String, "sim/episode", STATUS_QOS)
    bridge = launch_node("robopolicy-sim-bridge", {"task": HOVER, "profile": "sim_quadrotor", "seed": 1000})
    pilot = SetPoints(ros_node)
    try:
        pilot.value = np.array([0.3, 0.0, 0.4, 0.0])
        # the bridge's episode starts at the first set point it hears
        wait_alive(lambda: episodes and json.loads(episodes[-1][1].data)["state"] == "running", 30,
                   "the simulated flight to start", bridge)
        start_when_ready(ros_node, recorder)
        time.sleep(1.0)
        ok, message = ros_node.trigger("recorder/stop")
        assert ok and message.startswith("committed episode 0"), message

        assert ros_node.trigger("recorder/start")[0]
        time.sleep(0.3)
        ok, message = ros_node.trigger("recorder/discard")
        assert ok and message.startswith("discarded"), message

        pilot.value = np.array([-0.2, 0.1, 0.0, 0.5])
        time.sleep(0.2)  # the new set point reaches the recorder before the episode starts
        assert ros_node.trigger("recorder/start")[0]
        time.sleep(0.8)
        ok, message = ros_node.trigger("recorder/stop")
        assert ok and message.startswith("committed episode 1"), message

        assert ros_node.trigger("recorder/start")[0]  # an episode that will never be committed
        time.sleep(0.5)
        recorder.process.send_signal(signal.SIGKILL)
        recorder.wait_exit(10)
    finally:
        pilot.stop()

    with DemoStore.open(store) as s:
        assert s.n_episodes == 2
        assert s.keys == ["action", "state", "timestamp"]
        lengths = s.episode_lengths
        # 50 Hz for ~1.0 s and ~0.8 s (the machine is shared: allow for late ticks, but not for double ones)
        assert 20 <= lengths[0] <= 56 and 15 <= lengths[1] <= 46, lengths
        first, second = s.episode(0), s.episode(1)
        np.testing.assert_array_equal(first["action"],
                                      np.tile(np.float32([0.3, 0.0, 0.4, 0.0]), (lengths[0], 1)))
        np.testing.assert_array_equal(second["action"],
                                      np.tile(np.float32([-0.2, 0.1, 0.0, 0.5]), (lengths[1], 1)))
        assert first["action"].dtype == np.float32
        # state: hover has no set point, so the optional ones are left out (13 = pos, wxyz, vel, ang vel)
        assert first["state"].shape == (lengths[0], 13)
        z, vz = first["state"][:, 2], first["state"][:, 9]
        assert z[-1] > z[0] and vz[-1] > 0.1  # the simulated vehicle climbed on the commanded 0.4 m/s
        np.testing.assert_allclose(np.linalg.norm(first["state"][:, 3:7], axis=1), 1.0, atol=1e-5)
        for episode in (first, second):
            dt = np.diff(episode["timestamp"])
            assert np.all(dt > 0) and 0.015 < np.median(dt) < 0.03  # one row per 20 ms tick
        assert second["timestamp"][0] > first["timestamp"][-1]

        attrs = s.attrs
        assert attrs["action_semantics"] == "velocity_setpoint" and s.control_rate_hz == 50.0
        assert attrs["robot_profile"] == "sim_quadrotor" and attrs["task"] == HOVER
        assert attrs["action_names"] == ["vx", "vy", "vz", "yaw_rate"] and s.obs_keys == ["state"]
        assert attrs["ros"]["command"] == {"topic": "/cmd_vel", "msg_type": "geometry_msgs/msg/TwistStamped"}
        sources = attrs["ros"]["observations"]["state"]
        assert {x["topic"] for x in sources} == {"/odom"} and sum(x["size"] for x in sources) == 13
        rates = attrs["ros"]["measured_rates_hz"]  # over the last committed episode; both stream at 50 Hz
        assert set(rates) == {"/odom", "/cmd_vel"} and all(15 < r < 75 for r in rates.values()), rates
        assert attrs["provenance"]["generator"] == "robopolicy-recorder"
        assert attrs["provenance"]["teleop_device"] == "scripted"
        assert s.array("state").shape[0] == s.n_steps  # the killed episode left nothing behind

    # A new recorder appends to the store the killed one left.
    recorder = launch_node("robopolicy-recorder", {"store": str(store), "profile": "sim_quadrotor"})
    pilot = SetPoints(ros_node)
    try:
        start_when_ready(ros_node, recorder)
        time.sleep(0.3)
        assert ros_node.trigger("recorder/stop")[0]
    finally:
        pilot.stop()
        recorder.stop()
        bridge.stop()
    with DemoStore.open(store) as s:
        assert s.n_episodes == 3 and s.episode(2)["state"].shape[1] == 13


def test_refuses_a_store_of_other_action_semantics(launch_node, tmp_path):
    store = tmp_path / "arm.zarr"
    with EpisodeWriter(store, attrs={"action_semantics": "joint_pos"}) as w:
        w.add_episode({"state": np.zeros((3, 2), np.float32), "action": np.zeros((3, 8), np.float32)})
    recorder = launch_node("robopolicy-recorder", {"store": str(store), "profile": "sim_quadrotor"})
    assert recorder.wait_exit(30) == 2
    assert "action_semantics='joint_pos'" in recorder.log() and "'velocity_setpoint'" in recorder.log()


def test_teleop_drives_the_sim_arm_and_the_recorder(launch_node, ros_node, tmp_path):
    """record.launch.py's pipeline: keys -> teleop -> JointTrajectory -> sim bridge -> joint_states
    -> recorder."""
    store = tmp_path / "lift.zarr"
    master, slave = pty.openpty()
    statuses = ros_node.collect(String, "recorder/status", STATUS_QOS)
    bridge = launch_node("robopolicy-sim-bridge", {"task": LIFT, "profile": "sim_panda"})
    recorder = launch_node("robopolicy-recorder", {"store": str(store), "profile": "sim_panda",
                                                   "obs_keys": "state", "task": LIFT, "teleop": "keyboard"})
    teleop = launch_node("robopolicy-teleop",
                         {"profile": "sim_panda", "input": os.ttyname(slave), "speed": 0.5})
    try:
        def status():
            return json.loads(statuses[-1][1].data) if statuses else {}

        wait_alive(lambda: ros_node.node.count_publishers("joint_states") > 0, 60, "the sim bridge", bridge,
                   recorder, teleop)

        def press_enter_until_recording():
            # Enter: teleop calls recorder/start, refused until every topic is live. On a loaded machine the
            # status saying so can lag a press, and a second press would then stop a started episode and
            # start another: wait long enough, and take the last episode below rather than the first.
            os.write(master, b"\n")
            time.sleep(1.5)
            return status().get("recording")

        wait_alive(press_enter_until_recording, 60, "recording to start", bridge, recorder, teleop)
        committed = status()["episodes"]
        for _ in range(12):  # hold '1' (joint 1 up) for 1.2 s, as a terminal's key repeat does
            os.write(master, b"1")
            time.sleep(0.1)
        os.write(master, b"\n")  # Enter again: stop and commit
        wait_alive(lambda: status().get("episodes") == committed + 1 and not status().get("recording"), 30,
                   "the episode to be committed", recorder)
    finally:
        os.close(master)
        os.close(slave)

    with DemoStore.open(store) as s:
        assert s.n_episodes == committed + 1 and s.action_semantics == "joint_pos" and s.control_rate_hz == 20.0
        episode = s.episode(committed)
        n = len(episode["action"])
        assert n >= 20
        action, state = episode["action"], episode["state"]
        assert action.shape == (n, 8) and state.shape == (n, 23)  # Lift: ee 7 | fingers 2 | arm 7 | cube 7
        # joint 1's commanded target rose at 0.5 x 2.175 rad/s; the others held their start; gripper open
        rise = action[-1, 0] - action[0, 0]
        assert 0.5 < rise < 0.5 * 2.175 * 1.5, rise
        np.testing.assert_allclose(action[:, 1:7], np.broadcast_to(action[0, 1:7], (n, 6)), atol=1e-6)
        np.testing.assert_array_equal(action[:, 7], -1.0)
        # the simulated arm followed: its measured joint 1 (state[9]) moved with the target
        assert state[-1, 9] - state[0, 9] > 0.5 * rise
        # the held joints stayed put, up to what joint 1's swing couples into them through the arm's
        # dynamics (a position controller's lag: 0.05 rad seen on a loaded machine) against its > 0.5 rad move
        assert np.all(np.abs(state[:, 10:16] - action[0, 1:7]) < 0.15)
        sources = s.attrs["ros"]["observations"]["state"]
        topics = [x["topic"] for x in sources]
        assert topics == ["/ee_pose", "/joint_states", "/joint_states", "/object_poses"]  # one cube pose
        assert s.attrs["ros"]["command"]["topic"] == "/joint_trajectory"
        assert s.attrs["provenance"]["source"] == "teleop"

    # The recorded store is training data as it stands: `robopolicy train` takes it, and the checkpoint it
    # writes loads, predicts a chunk from the recorded observations, and is accepted by the same robot.
    run = tmp_path / "run"
    train = subprocess.run([str(BIN / "robopolicy"), "train", "--store", str(store), "--policy", "diffusion",
                            "--config", "cpu", "--steps", "3", "--batch-size", "4", "--val-episodes", "0",
                            "--out", str(run)], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert train.returncode == 0, train.stdout + train.stderr
    from hardware.profile import check_checkpoint, load_profile
    from robopolicy.runtime.runner import PolicyRunner
    from robopolicy.train.checkpoint_config import read_config

    config = read_config(run)
    assert config["step"] == 3 and config["action_semantics"] == "joint_pos" and config["obs_keys"] == ["state"]
    check_checkpoint(load_profile("sim_panda"), config)  # raises if the robot could not run it
    runner = PolicyRunner.from_checkpoint(run / "latest", "cpu")
    action = runner.act({"state": state[0]})
    assert action.shape == (8,) and np.all(np.isfinite(action))
