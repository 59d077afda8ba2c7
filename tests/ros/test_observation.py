"""ObservationAssembler with the real sim_panda and sim_quadrotor profiles: layout, readiness, errors."""

import numpy as np
import pytest

pytest.importorskip("rclpy")
from geometry_msgs.msg import PoseArray  # noqa: E402

from hardware.profile import CheckpointMismatchError, load_profile  # noqa: E402
from ros_nodes import convert  # noqa: E402
from ros_nodes.observation import ObservationAssembler, ObservationNotReady  # noqa: E402

ARM = [f"panda_joint{i}" for i in range(1, 8)]
FINGERS = ["panda_finger_joint1", "panda_finger_joint2"]


def feed_panda(a, t, cube=(0.1, 0.2, 0.8, 1, 0, 0, 0), objects=True):
    joints = np.arange(7) * 0.1
    # Fingers first and names shuffled: the assembler reads by name, not by position.
    a.update("joint_states", convert.joint_state(FINGERS + ARM[::-1], [0.04, -0.04, *joints[::-1]], t), t)
    a.update("ee_pose", convert.pose_stamped([0.5, 0, 1.0, 0, 1, 0, 0], t - 0.01), t)
    if objects:
        a.update("object_poses", convert.array_to_posearray(cube, t), t)
    return joints


def test_panda_state_layout_matches_the_env():
    a = ObservationAssembler(load_profile("sim_panda"), {"state": (23,)})
    assert sorted(t for t, _, _ in a.subscriptions) == ["ee_pose", "joint_states", "object_poses"]
    assert not a.ready()
    with pytest.raises(ObservationNotReady, match="ee_pose"):
        a.assemble()
    joints = feed_panda(a, 100.0)
    obs, stamp = a.assemble()
    expected = np.concatenate([[0.5, 0, 1.0, 0, 1, 0, 0], [0.04, -0.04], joints, [0.1, 0.2, 0.8, 1, 0, 0, 0]])
    np.testing.assert_allclose(obs["state"], expected, rtol=1e-6)
    assert obs["state"].dtype == np.float32 and stamp == pytest.approx(99.99)
    measured = a.measured()  # the safety filter's reference: arm joints, the gripper unmeasured
    np.testing.assert_allclose(measured[:7], joints)
    assert np.isnan(measured[7])


def test_a_missing_pose_and_a_missing_key_are_named():
    a = ObservationAssembler(load_profile("sim_panda"), {"state": (30,)})  # Stack: two objects
    feed_panda(a, 1.0)
    with pytest.raises(ValueError, match="has 1 poses; the profile reads poses 1..1"):
        a.assemble()
    with pytest.raises(CheckpointMismatchError, match=r"\['image_wrist'\] are not supplied"):
        ObservationAssembler(load_profile("sim_panda"), {"state": (23,), "image_wrist": (84, 84, 3)})
    with pytest.raises(CheckpointMismatchError, match=r"'state' has 20 values.*\[16, 23, 30\]"):
        ObservationAssembler(load_profile("sim_panda"), {"state": (20,)})


def test_images_are_fitted_to_the_checkpoint_shape():
    a = ObservationAssembler(load_profile("sim_panda"), {"state": (16,), "image_agentview": (4, 4, 3)})
    feed_panda(a, 1.0, objects=False)
    with pytest.raises(KeyError, match="'object_poses' feeds no observation"):
        a.update("object_poses", PoseArray(), 1.0)  # a 16-d state reads no object poses
    image = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    a.update("camera/agentview/image_raw", convert.array_to_image(image, 1.0), 1.0)
    obs, _ = a.assemble()
    np.testing.assert_array_equal(obs["image_agentview"], image[::2, ::2])
    assert obs["state"].shape == (16,)


def test_quadrotor_state_world_velocity_and_reference_rate():
    a = ObservationAssembler(load_profile("sim_quadrotor"), {"state": (19,)})
    c = np.sqrt(0.5)
    state = np.array([0.1, 0.2, 1.0, c, 0, 0, c, 0.3, -0.1, 0.05, 0.01, 0.02, 0.5])
    a.update("odom", convert.state_to_odometry(state, 10.0), 10.0)
    a.update("setpoint", convert.pose_stamped([1, 2, 1, 1, 0, 0, 0], 10.0), 10.0)
    obs, _ = a.assemble()
    np.testing.assert_allclose(obs["state"][:13], state, atol=1e-6)
    np.testing.assert_allclose(obs["state"][13:], [1, 2, 1, 0, 0, 0])  # one set point: no rate yet
    a.update("setpoint", convert.pose_stamped([1.02, 2, 0.99, 1, 0, 0, 0], 10.02), 10.02)
    obs, _ = a.assemble()
    np.testing.assert_allclose(obs["state"][16:], [1.0, 0, -0.5], atol=1e-4)  # finite difference over stamps
    # Feedback for the safety filter: world velocity and yaw rate.
    np.testing.assert_allclose(a.measured(), [0.3, -0.1, 0.05, 0.5], atol=1e-9)
    hover = ObservationAssembler(load_profile("sim_quadrotor"), {"state": (13,)})
    assert [t for t, _, _ in hover.subscriptions] == ["odom"]
