"""Robot profiles: the six packaged ones load and match the simulated robots; bad profiles and
mismatched checkpoints are refused with messages that name the problem."""

import copy
import importlib.util
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import yaml

from hardware import (CheckpointMismatchError, ProfileError, check_checkpoint, list_profiles, load_profile,
                      profile_from_dict)
from hardware.profile import PROFILE_DIR
from robopolicy.policies.base import PolicyConfig

NAMES = ["crazyflie", "lowcost_arm", "px4", "sim_panda", "sim_quadrotor", "ur5e"]  # DESIGN §11
PACKAGED = sorted([*NAMES, "sim_quadrotor_motors"])  # and the motor-level sim quadrotor


def raw(name: str) -> dict:
    return yaml.safe_load((PROFILE_DIR / f"{name}.yaml").read_text())


def ckpt(obs_shapes: dict, action_dim: int, semantics: str | None, rate: float | None = None) -> dict:
    """A checkpoint config.json as robopolicy.train writes it (policy_config from the real PolicyConfig)."""
    config = PolicyConfig(obs_shapes={k: list(v) for k, v in obs_shapes.items()}, action_dim=action_dim)
    return {"format": "robopolicy-checkpoint", "policy": "diffusion", "policy_config": config.to_dict(),
            "obs_keys": sorted(obs_shapes), "action_key": "action", "action_semantics": semantics,
            "control_rate_hz": rate}


def test_the_packaged_profiles_load():
    assert list_profiles() == PACKAGED
    for name in PACKAGED:
        p = load_profile(name)
        assert p.name == name and p.path == PROFILE_DIR / f"{name}.yaml"
        assert p.action_limits.shape == (p.action_dim, 2) and p.max_rate.shape == (p.action_dim,)
        assert np.all(p.action_limits[:, 0] < p.action_limits[:, 1]) and np.all(p.max_rate > 0)
        assert sum(s.size for s in p.feedback) == p.action_dim
        assert "state" in p.observations
        if p.kind == "arm":
            assert (p.hold, p.action_semantics, p.command.msg_type) == (
                "stop", "joint_pos", "trajectory_msgs/msg/JointTrajectory")
            assert "gripper" in p.joint_names[-1] or "knuckle" in p.joint_names[-1]  # gripper last
        elif p.action_semantics == "motor_commands":  # silent hold: the flight controller's failsafe holds
            assert (p.hold, p.action_dim, p.command.msg_type) == (
                "failsafe", 4, "std_msgs/msg/Float32MultiArray")
            assert p.low_dim_sizes("state") == [13, 16, 19]
        else:
            assert (p.hold, p.action_semantics, p.action_names) == (
                "hover", "velocity_setpoint", ("vx", "vy", "vz", "yaw_rate"))
            assert p.low_dim_sizes("state") == [13, 16, 19]
    # Real robots carry the dead-man; simulated ones run without it.
    with_dead_man = [n for n in PACKAGED if load_profile(n).heartbeat_timeout_s]
    assert with_dead_man == ["crazyflie", "lowcost_arm", "px4", "ur5e"]
    assert load_profile(PROFILE_DIR / "ur5e.yaml").action_dim == 7  # by path too


def test_real_robot_numbers():
    ur5e = load_profile("ur5e")
    assert ur5e.joint_names[:6] == ("shoulder_pan_joint", "shoulder_lift_joint", "elbow_joint",
                                    "wrist_1_joint", "wrist_2_joint", "wrist_3_joint")
    np.testing.assert_allclose(ur5e.max_rate[:6], np.pi, atol=1e-4)  # 180 deg/s
    np.testing.assert_allclose(ur5e.action_limits[2], [-np.pi, np.pi], atol=1e-4)  # elbow +-180 deg
    np.testing.assert_allclose(ur5e.action_limits[0], [-2 * np.pi, 2 * np.pi], atol=1e-4)
    panda = load_profile("sim_panda")
    np.testing.assert_allclose(panda.max_rate[:7], [2.175] * 4 + [2.61] * 3)
    px4 = load_profile("px4")
    assert px4.command.convention == "ned" and px4.command.keepalive["rate_hz"] > 2  # offboard proof of life
    assert all(s.qos == "px4" and s.convention == "ned" for s in px4.observations["state"][:4])


def test_sim_panda_matches_the_robosuite_joint_task():
    from sim import robosuite_tasks as rt

    p = load_profile("sim_panda")
    assert p.action_dim == rt.VARIANTS["joint_pos"][1] == 8
    assert p.control_rate_hz == rt.CONTROL_RATE_HZ
    assert {rt.state_dim("Lift"), rt.state_dim("Stack")} <= set(p.low_dim_sizes("state"))
    assert p.low_dim_sizes("state")[0] == rt.PROPRIO_DIM
    np.testing.assert_array_equal(p.action_limits[-1], [-1.0, 1.0])  # gripper: -1 open, +1 close
    spec = importlib.util.find_spec("robosuite")
    if spec is None:
        pytest.skip("robosuite not installed")
    xml = Path(spec.origin).parent / "models/assets/robots/panda/robot.xml"
    ranges = [[float(x) for x in j.get("range").split()] for j in ET.parse(xml).iter("joint")]
    np.testing.assert_allclose(p.action_limits[:7], ranges[:7], atol=0.003)  # robosuite rounds joint1 to 2.9


def test_sim_quadrotor_matches_the_quadrotor_tasks():
    from sim.quadrotor import tasks

    p = load_profile("sim_quadrotor")
    assert p.control_rate_hz == tasks.CONTROL_RATE_HZ["velocity_setpoint"]
    np.testing.assert_array_equal(p.action_limits[:3], [[-tasks.MAX_SPEED, tasks.MAX_SPEED]] * 3)
    np.testing.assert_array_equal(p.action_limits[3], [-tasks.MAX_YAW_RATE, tasks.MAX_YAW_RATE])
    assert set(tasks.STATE_DIM.values()) <= set(p.low_dim_sizes("state"))
    assert p.command.topic == "cmd_vel"  # DESIGN §11


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(ProfileError, match="unknown robot profile 'kuka'") as e:
        load_profile("kuka")
    for name in NAMES:
        assert name in str(e.value)


@pytest.mark.parametrize("edit, message", [
    (lambda r: r["actions"][0].update(lower=1.0, upper=-1.0), "lower 1.0 must be below upper -1.0"),
    (lambda r: r["actions"][1].update(max_rate=0), "max_rate must be positive"),
    (lambda r: r.update(action_semantics="joint_velocity"), "unknown action_semantics 'joint_velocity'"),
    (lambda r: r.update(kind="boat"), "kind must be one of"),
    (lambda r: r.update(hold="hover"), "an arm holds by stop, not 'hover'"),
    (lambda r: r["actions"].pop(), "feedback supplies 7 values but there are 6 actions"),
    (lambda r: r["actions"].append(dict(r["actions"][0])), "action names repeat"),
    (lambda r: r["observations"]["state"][0].pop("joints"), "lists the joints it reads"),
    (lambda r: r["observations"]["state"][0].update(field="pose"), "has no field 'pose'"),
    (lambda r: r["observations"]["state"].reverse(), "optional sources must come last"),
    (lambda r: r["observations"].update(rgb=r["observations"]["image_front"]), "not 'rgb'"),
    (lambda r: r["observations"]["image_front"][0].update(msg_type="sensor_msgs/Image"), "unknown msg_type"),
    (lambda r: r.update(control_rate_hz=0), "control_rate_hz must be positive"),
    (lambda r: r["first_step"].update(mode="jump"), "first_step.mode must be one of"),
    (lambda r: r.update(heartbeat={"topic": "hb", "timeout_s": -1}), "positive timeout_s"),
    (lambda r: r.update(contol_rate_hz=10), r"unknown entries \['contol_rate_hz'\]"),
    (lambda r: r.pop("command"), "missing 'command'"),
])
def test_validation_errors_are_clear(edit, message):
    bad = copy.deepcopy(raw("ur5e"))
    edit(bad)
    with pytest.raises(ProfileError, match=message) as e:
        profile_from_dict(bad)
    assert "'ur5e'" in str(e.value)


def test_a_quadrotor_must_hover_inside_its_limits():
    bad = copy.deepcopy(raw("px4"))
    bad["actions"][2].update(lower=0.2)
    with pytest.raises(ProfileError, match="hover set point"):
        profile_from_dict(bad)
    bad = copy.deepcopy(raw("px4"))
    bad["hold"] = "stop"
    with pytest.raises(ProfileError, match="quadrotor holds by hover or failsafe"):
        profile_from_dict(bad)
    bad["hold"] = "failsafe"  # falling silent is for motor commands; set points hover
    with pytest.raises(ProfileError, match="'failsafe' .* is for motor commands"):
        profile_from_dict(bad)
    bad = copy.deepcopy(raw("sim_quadrotor_motors"))
    bad["hold"] = "hover"  # there is no zero-velocity set point among motor commands
    with pytest.raises(ProfileError, match="hover is a zero velocity set point"):
        profile_from_dict(bad)


def test_check_checkpoint_names_missing_keys():
    panda = load_profile("sim_panda")
    config = ckpt({"state": (23,), "image_agentview": (84, 84, 3), "image_front": (84, 84, 3),
                   "depth_front": (84, 84)}, 8, "joint_pos")
    with pytest.raises(CheckpointMismatchError) as e:
        check_checkpoint(panda, config)
    msg = str(e.value)
    assert "['depth_front', 'image_front']" in msg and "sim_panda" in msg
    assert "image_robot0_eye_in_hand" in msg  # says what it could supply instead


def test_check_checkpoint_refuses_other_actions_and_sizes():
    panda = load_profile("sim_panda")
    with pytest.raises(CheckpointMismatchError, match="actions are 'ee_delta', this robot takes 'joint_pos'"):
        check_checkpoint(panda, ckpt({"state": (23,)}, 8, "ee_delta"))
    with pytest.raises(CheckpointMismatchError, match="predicts 7-d actions, this robot takes 8"):
        check_checkpoint(panda, ckpt({"state": (23,)}, 7, "joint_pos"))
    with pytest.raises(CheckpointMismatchError, match=r"'state' has 25 values .* builds \[16, 23, 30\]"):
        check_checkpoint(panda, ckpt({"state": (25,)}, 8, "joint_pos"))
    # Every problem is reported at once.
    with pytest.raises(CheckpointMismatchError) as e:
        metaworld = ckpt({"state": (39,), "image_top": (96, 96, 3)}, 4, "metaworld")
        check_checkpoint(load_profile("ur5e"), metaworld)
    assert str(e.value).count("\n  - ") == 4


def test_check_checkpoint_picks_the_sources():
    panda = load_profile("sim_panda")
    lift = ckpt({"state": (23,), "image_agentview": (84, 84, 3)}, 8, "joint_pos", 20.0)
    match = check_checkpoint(panda, lift)
    assert [s.topic for s in match.observations["state"]] == ["ee_pose", "joint_states", "joint_states",
                                                              "object_poses"]
    assert match.observations["image_agentview"][0].topic == "camera/agentview/image_raw"
    assert match.warnings == ()
    stack = check_checkpoint(panda, ckpt({"state": (30,)}, 8, "joint_pos"))
    assert [s.first for s in stack.observations["state"][3:]] == [0, 1]

    quad = load_profile("sim_quadrotor")
    hover = check_checkpoint(quad, ckpt({"state": (13,)}, 4, "velocity_setpoint"))
    track = check_checkpoint(quad, ckpt({"state": (19,)}, 4, "velocity_setpoint"))
    assert sum(s.size for s in hover.observations["state"]) == 13 and len(hover.observations["state"]) == 4
    assert [s.derivative for s in track.observations["state"][4:]] == [False, True]

    unknown = check_checkpoint(quad, ckpt({"state": (13,)}, 4, None, rate=100.0))
    assert any("unknown" in w for w in unknown.warnings) and any("100.0 Hz" in w for w in unknown.warnings)
    with pytest.raises(CheckpointMismatchError, match="predicts 8-d"):
        check_checkpoint(quad, ckpt({"state": (13,)}, 8, None))  # unknown semantics: the dimension counts
