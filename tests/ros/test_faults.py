"""Faults over DDS on loopback, every node a separate process (issue 4's acceptance):

- the policy node is SIGKILLed mid-episode: the simulated arm keeps its last joint targets, the
  simulated quadrotor falls back to hover after the bridge's command timeout;
- checkpoints made faulty on disk (a normaliser 1000x too wide, NaN weights): every published command
  is finite, inside the profile's limits and rate limits (arm: or nothing at all), or a hover;
- observations flooded at 10x the profile's rate: the node's memory stays flat and it keeps its rate.

The e-stop latch and the stale-input holds are in test_policy_node.py.
"""

import json
import signal
import time

import numpy as np
import pytest

pytest.importorskip("rclpy")
from geometry_msgs.msg import TwistStamped  # noqa: E402
from nav_msgs.msg import Odometry  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from hardware.profile import load_profile  # noqa: E402
from ros_nodes import convert  # noqa: E402
from ros_nodes.harness import wait_alive  # noqa: E402
from ros_nodes.qos import SENSOR_QOS, STATUS_QOS  # noqa: E402
from tests.ros.checkpoints import far_out_checkpoint, nan_checkpoint  # noqa: E402
from tests.ros.sensors import (Sensors, arm_sensors, first_state, last_json, quadrotor_sensors,  # noqa: E402
                               status_of)

PANDA, QUAD = load_profile("sim_panda"), load_profile("sim_quadrotor")


def policy_params(ckpt, profile: str) -> dict:
    return {"checkpoint": ckpt, "profile": profile, "torch_threads": 1}


def test_killed_policy_node_leaves_the_sim_robot_holding(launch_node, ros_node, tiny_checkpoints):
    """SIGKILL the policy mid-episode: the arm's joints stay put, the quadrotor hovers where it was."""
    arm_ckpt, _ = tiny_checkpoints["arm"]
    quad_ckpt, _ = tiny_checkpoints["quadrotor"]
    episodes = {ns: ros_node.collect(String, f"/{ns}/sim/episode", STATUS_QOS) for ns in ("arm", "quad")}
    joints = ros_node.collect(JointState, "/arm/joint_states", SENSOR_QOS)
    odom = ros_node.collect(Odometry, "/quad/odom", SENSOR_QOS)
    arm_cmds = ros_node.collect(JointTrajectory, "/arm/joint_trajectory", 10)
    quad_cmds = ros_node.collect(TwistStamped, "/quad/cmd_vel", 10)
    # A long step cap: the robot must be held by the bridge's controller, not frozen by an ended episode.
    bridges = [launch_node("robopolicy-sim-bridge", {"task": "robosuite-Lift-joint-v0", "max_steps": 5000},
                           namespace="/arm"),
               launch_node("robopolicy-sim-bridge", {"task": "quadrotor-hover-v0", "max_steps": 5000},
                           namespace="/quad")]
    arm = launch_node("robopolicy-policy-node", policy_params(arm_ckpt, "sim_panda"), namespace="/arm")
    quad = launch_node("robopolicy-policy-node", policy_params(quad_ckpt, "sim_quadrotor"), namespace="/quad")
    wait_alive(lambda: len(arm_cmds) > 10 and len(quad_cmds) > 25, 90, "both policies driving", arm, quad, *bridges)

    killed = {}
    for name, node in (("arm", arm), ("quad", quad)):
        node.process.send_signal(signal.SIGKILL)
        node.wait_exit(10)
        killed[name] = time.monotonic()
    quad_at_kill = convert.odometry_to_state(odom[-1][1])
    time.sleep(3.0)
    assert all(b.running() for b in bridges), [b.log() for b in bridges]
    for ns in ("arm", "quad"):  # still the same running episode: nothing crashed, nothing ended
        report = last_json(episodes[ns])
        assert report["state"] == "running" and report["episode"] == 0, report

    # Arm: the joint controller holds the last target. From 1.5 s after the kill the joints move by less than
    # 5 mrad: an arm let go moves by tenths of a radian, while the controller's slow tail on joint 4 measured
    # 0.1-2.5 mrad over that window here (0.3-4 mrad from 0.8 s, which was once too early for a 2 mrad bound).
    names = [f"panda_joint{i}" for i in range(1, 8)]
    after = np.array([convert.jointstate_positions(m, names) for t, m in joints if t > killed["arm"] + 1.5])
    assert len(after) > 15  # the bridge kept stepping and publishing at 20 Hz
    assert np.ptp(after, axis=0).max() < 5e-3, np.ptp(after, axis=0)
    # Quadrotor: the last set point runs for cmd_timeout_s (0.5 s), then hover; it stays near where it was.
    late = np.array([convert.odometry_to_state(m) for t, m in odom if t > killed["quad"] + 1.5])
    assert len(late) > 25
    assert np.linalg.norm(late[:, :3] - quad_at_kill[:3], axis=1).max() < 0.6  # <= 0.5 s at <= 1 m/s
    assert np.linalg.norm(late[:, 7:10], axis=1).max() < 0.15  # hovering: speed near zero
    assert np.ptp(late[:, :3], axis=0).max() < 0.1  # and station-keeping over the last second
    assert late[:, 2].min() > 0.1  # airborne


def test_faulty_checkpoints_never_publish_an_unsafe_command(launch_node, ros_node, tiny_checkpoints, tmp_path):
    """A normaliser 1000x too wide (actions far outside every limit) and NaN weights, arm and quadrotor."""
    arm_ckpt, arm_store = tiny_checkpoints["arm"]
    quad_ckpt, quad_store = tiny_checkpoints["quadrotor"]
    ckpts = {"arm_far": far_out_checkpoint(arm_ckpt, tmp_path / "arm-far"),
             "arm_nan": nan_checkpoint(arm_ckpt, tmp_path / "arm-nan"),
             "quad_far": far_out_checkpoint(quad_ckpt, tmp_path / "quad-far"),
             "quad_nan": nan_checkpoint(quad_ckpt, tmp_path / "quad-nan")}
    # The fault is real: the wide normaliser maps the policy's [-1, 1] far outside the limits.
    for name, profile in (("arm_far", PANDA), ("quad_far", QUAD)):
        n = json.loads((ckpts[name] / "config.json").read_text())["normalizer"]["keys"]["action"]
        reach = np.abs((np.array([-1.0, 1.0])[:, None] - np.array(n["offset"])) / np.array(n["scale"])).max(0)
        assert np.all(reach[:-1] > 3 * np.abs(profile.action_limits[:-1]).max(1)), reach

    arm_state, quad_state = first_state(arm_store), first_state(quad_store)
    sensors = [Sensors(ros_node, arm_sensors(ros_node, arm_state, "/arm_far"), 20.0),
               Sensors(ros_node, arm_sensors(ros_node, arm_state, "/arm_nan"), 20.0),
               Sensors(ros_node, quadrotor_sensors(ros_node, quad_state, "/quad_far"), 50.0),
               Sensors(ros_node, quadrotor_sensors(ros_node, quad_state, "/quad_nan"), 50.0)]
    commands, statuses, metrics, nodes = {}, {}, {}, {}
    for ns, ckpt in ckpts.items():
        arm = ns.startswith("arm")
        commands[ns] = ros_node.collect(JointTrajectory if arm else TwistStamped,
                                        f"/{ns}/{'joint_trajectory' if arm else 'cmd_vel'}", 10)
        statuses[ns] = ros_node.collect(String, f"/{ns}/policy/status", STATUS_QOS)
        metrics[ns] = ros_node.collect(String, f"/{ns}/policy/metrics", 10)
        nodes[ns] = launch_node("robopolicy-policy-node", policy_params(ckpt, "sim_panda" if arm else "sim_quadrotor"),
                                namespace=f"/{ns}")
    try:
        def counters(ns):
            return last_json(metrics[ns]).get("counters", {})

        def ran_a_while():  # >= 40 ticks of each faulty checkpoint: commands, or NaN holds
            return (all(len(commands[ns]) >= 40 for ns in ("arm_far", "quad_far"))
                    and all(counters(ns).get("held_nan_rejected", 0) >= 40 for ns in ("arm_nan", "quad_nan")))

        wait_alive(ran_a_while, 90, "every node to run its faulty checkpoint", *nodes.values())
    finally:
        for s in sensors:
            s.stop()

    # Arm, actions 1000x too far: every command inside the joint limits, no joint faster than its max rate
    # (from the previous command, or from the measured joints for a first one), and the clamp was hit.
    arm = np.array([m.points[0].positions for _, m in commands["arm_far"]])
    lower, upper = PANDA.action_limits[:, 0], PANDA.action_limits[:, 1]
    assert np.all(np.isfinite(arm)) and np.all(arm >= lower - 1e-9) and np.all(arm <= upper + 1e-9)
    step = PANDA.max_rate / PANDA.control_rate_hz + 1e-9
    measured = np.append(arm_state[9:16], np.nan)
    for prev, cmd in zip(arm[:-1], arm[1:]):
        from_prev = np.all(np.abs(cmd - prev) <= step)
        first_again = np.all(np.abs(cmd - measured)[:7] <= step[:7])
        assert from_prev or first_again, (prev, cmd)
    assert np.all(np.abs(arm[0, :7] - measured[:7]) <= step[:7])
    assert np.any(np.isclose(arm, lower) | np.isclose(arm, upper))  # clamped (the gripper at the latest)
    # Arm, NaN weights: not one command; the node says why.
    assert commands["arm_nan"] == []
    assert counters("arm_nan")["held_nan_rejected"] >= 40 and status_of(statuses["arm_nan"]) == "held"

    # Quadrotor, 1000x: set points within +-1 and slewing at most max_rate / rate per tick; clamped at the bounds.
    quad = np.array([convert.twist_to_setpoint(m) for _, m in commands["quad_far"]])
    assert np.all(np.isfinite(quad)) and np.all(np.abs(quad) <= 1.0 + 1e-9)
    slew = QUAD.max_rate / QUAD.control_rate_hz + 1e-9
    assert np.all(np.abs(np.diff(quad, axis=0)) <= slew)
    assert np.abs(quad).max() == pytest.approx(1.0)
    # Quadrotor, NaN weights: hover (zero velocity) every tick, never silence.
    hover = np.array([convert.twist_to_setpoint(m) for _, m in commands["quad_nan"]])
    assert len(hover) >= 40 and np.all(hover == 0.0)
    assert counters("quad_nan")["held_nan_rejected"] >= 40
    for node in nodes.values():
        assert node.running(), node.log()


def test_observation_flood_keeps_memory_flat_and_the_rate(launch_node, ros_node, tiny_checkpoints):
    """Odometry at 10x the profile's 50 Hz for 10 s: RSS stays flat, commands keep the control rate,
    the sampler still takes one frame a tick, and latency stays what it was."""
    ckpt, store = tiny_checkpoints["quadrotor"]
    make = quadrotor_sensors(ros_node, first_state(store), "/flood")
    sensors = Sensors(ros_node, make, QUAD.control_rate_hz)
    commands = ros_node.collect(TwistStamped, "/flood/cmd_vel", 10)
    metrics = ros_node.collect(String, "/flood/policy/metrics", 10)
    node = launch_node("robopolicy-policy-node", policy_params(ckpt, "sim_quadrotor"), namespace="/flood")
    flood = None
    try:
        wait_alive(lambda: last_json(metrics).get("counters", {}).get("chunks", 0) >= 5, 90, "live commands", node)
        sensors.stop()
        before, rss_start = last_json(metrics), node.rss_mb()
        flood = Sensors(ros_node, make, QUAD.control_rate_hz, burst=10)  # 500 odometry messages a second
        t0, sent0, n0 = time.monotonic(), flood.sent, len(commands)
        time.sleep(10.0)
        seconds, sent, n_commands = time.monotonic() - t0, flood.sent - sent0, len(commands) - n0
        rss_end = node.rss_mb()
        wait_alive(lambda: len(metrics) and json.loads(metrics[-1][1].data)["tick"] > before["tick"] + 400, 5,
                   "metrics after the flood", node)
        after = last_json(metrics)
    finally:
        if flood is not None:
            flood.stop()
    assert sent / seconds > 8 * QUAD.control_rate_hz, sent / seconds  # it was a flood
    assert rss_end - rss_start < 10.0, (rss_start, rss_end)  # MiB: no queue grows with the messages
    # The flood does not starve the publisher. Not a rate check (bench/ros_latency.py measures the rate): on a
    # busy 2-core machine the node has published at 25-50 Hz against its 50 Hz, flood or not.
    assert n_commands / seconds > 0.3 * QUAD.control_rate_hz, n_commands / seconds
    frames = after["counters"]["frames"] - before["counters"]["frames"]
    ticks = after["tick"] - before["tick"]
    assert frames <= ticks + 2  # the sampler takes one frame a tick, however fast the topic is
    stale = after["counters"].get("frames_stale", 0) - before["counters"].get("frames_stale", 0)
    assert stale < 0.05 * ticks  # messages are not queued up behind the flood (they would age)
    assert after["e2e_latency_ms"]["p50"] < 250.0, after["e2e_latency_ms"]
    assert node.running(), node.log()
