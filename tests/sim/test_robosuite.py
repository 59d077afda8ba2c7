"""The robosuite tasks on real robosuite 1.5.1 / MuJoCo: names, env contract, state layout, experts, collection, cameras."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import sim

pytest.importorskip("robosuite")

from sim.robosuite_experts import JointWaypointExpert, WaypointExpert  # noqa: E402
from sim.robosuite_tasks import CAN_BIN, RobosuiteTask, register_robosuite_tasks  # noqa: E402

register_robosuite_tasks()  # until sim/registry.py does it

LIFT, LIFT_JOINT = "robopolicy/robosuite-Lift-v0", "robopolicy/robosuite-Lift-joint-v0"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NAMES = {
    LIFT: ("ee_delta", 7, 23), LIFT_JOINT: ("joint_pos", 8, 23),
    "robopolicy/robosuite-Stack-v0": ("ee_delta", 7, 30), "robopolicy/robosuite-Stack-joint-v0": ("joint_pos", 8, 30),
    "robopolicy/robosuite-PickPlaceCan-v0": ("ee_delta", 7, 23),
    "robopolicy/robosuite-PickPlaceCan-joint-v0": ("joint_pos", 8, 23),
}


@pytest.fixture(scope="module")
def lift():
    env = sim.make(LIFT)
    yield env
    env.close()


@pytest.fixture(scope="module")
def lift_joint():
    env = sim.make(LIFT_JOINT)
    yield env
    env.close()


def rollout(env, expert, seed):
    obs, _ = env.reset(seed=seed)
    expert.reset()
    while True:
        obs, _, term, trunc, info = env.step(expert(obs))
        if term or trunc:
            return term, info


# ------------------------------------------------------------------------------------------ registry
def test_names_specs_and_lazy_import():
    assert set(sim.list_tasks("robosuite")) == set(NAMES)
    for name, (semantics, dim, sdim) in NAMES.items():
        spec = sim.task_spec(name)
        assert (spec.action_semantics, spec.action_dim) == (semantics, dim)
        assert spec.obs_shapes == {"state": (sdim,)} and spec.control_rate_hz == 20.0
        assert 50 <= spec.max_steps <= 400
    assert sim.canonical_name("robosuite-Lift-joint-v0") == LIFT_JOINT
    register_robosuite_tasks()  # idempotent
    assert len(sim.list_tasks("robosuite")) == 6
    assert isinstance(sim.make_expert(LIFT), WaypointExpert)
    assert isinstance(sim.make_expert(LIFT_JOINT), JointWaypointExpert)
    code = ("import sys, sim; from sim.robosuite_tasks import register_robosuite_tasks; "
            "import sim.robosuite_experts; register_robosuite_tasks(); "
            "heavy = [m for m in ('robosuite', 'mujoco') if m in sys.modules]; assert not heavy, heavy; "
            "assert len(sim.list_tasks('robosuite')) == 6")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": ROOT})
    assert r.returncode == 0, r.stderr


# ------------------------------------------------------------------------------------------ env contract
def test_reset_is_deterministic_per_seed(lift, lift_joint):
    a, info = lift.reset(seed=7)
    assert info["seed"] == 7 and a["state"].dtype == np.float32 and a["state"].shape == (23,)
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    b, _ = lift.reset(seed=7)
    np.testing.assert_array_equal(a["state"], b["state"])
    np.testing.assert_array_equal(np.random.get_state()[1], before)  # the caller's global RNG is untouched
    c, _ = lift.reset(seed=8)
    assert np.linalg.norm(c["state"][16:19] - a["state"][16:19]) > 1e-3  # the cube moved
    # Another env (the joint variant: another model build, another controller) starts identically.
    d, _ = lift_joint.reset(seed=7)
    np.testing.assert_array_equal(a["state"], d["state"])
    # The same actions from the same seed give the same trajectory.
    traj = []
    for _ in range(2):
        lift.reset(seed=7)
        traj.append([lift.step(np.array([0.3, -0.2, 0.1, 0, 0, 0.2, -1]))[0]["state"] for _ in range(5)])
    np.testing.assert_array_equal(np.array(traj[0]), np.array(traj[1]))


def test_state_layout_matches_robosuite(lift):
    import mujoco

    obs, _ = lift.reset(seed=3)
    s = obs["state"].astype(np.float64)
    rs = lift.unwrapped_robosuite._get_observations(force_update=True)
    np.testing.assert_allclose(s[7:9], rs["robot0_gripper_qpos"], atol=1e-6)
    np.testing.assert_allclose(s[9:16], rs["robot0_joint_pos"], atol=1e-6)
    np.testing.assert_allclose(s[16:19], rs["cube_pos"], atol=1e-6)
    cube_wxyz = np.roll(rs["cube_quat"], 1)  # robosuite is xyzw
    assert min(np.abs(s[19:23] - cube_wxyz).max(), np.abs(s[19:23] + cube_wxyz).max()) < 1e-6
    site = lift.model.site("gripper0_right_grip_site").id
    np.testing.assert_allclose(s[0:3], lift.data.site_xpos[site], atol=1e-6)
    mat = np.zeros(9)
    mujoco.mju_quat2Mat(mat, s[3:7] / np.linalg.norm(s[3:7]))
    np.testing.assert_allclose(mat, lift.data.site_xmat[site], atol=1e-5)
    assert mat.reshape(3, 3)[2, 2] < -0.9  # the gripper points down at home
    assert 0.815 < s[18] < 0.84  # the cube (half-size 2 cm) is on the table (top at 0.8 m), not in the air


def test_stack_and_pickplacecan_layout_and_goal():
    for task, bodies in (("Stack", ("cubeA_main", "cubeB_main")), ("PickPlaceCan", ("Can_main",))):
        env = RobosuiteTask(task)
        s = env.reset(seed=0)[0]["state"]
        for i, body in enumerate(bodies):
            np.testing.assert_allclose(s[16 + 7 * i:19 + 7 * i], env.data.body(body).xpos, atol=1e-6)
        if task == "PickPlaceCan":
            rs = env.unwrapped_robosuite
            lo, size = rs.bin2_pos, rs.bin_size
            assert CAN_BIN["x"] == pytest.approx((lo[0], lo[0] + size[0] / 2))
            assert CAN_BIN["y"] == pytest.approx((lo[1], lo[1] + size[1] / 2))
            assert not rs.not_in_bin(np.array([np.mean(CAN_BIN["x"]), np.mean(CAN_BIN["y"]), 0.85]), 3)
        env.close()


def test_action_semantics(lift, lift_joint):
    assert lift.action_space.shape == (7,) and lift.task_spec.action_semantics == "ee_delta"
    low, high = lift_joint.action_space.low, lift_joint.action_space.high
    assert lift_joint.action_space.shape == (8,) and (low[-1], high[-1]) == (-1.0, 1.0)
    np.testing.assert_allclose(low[3], -3.0718, atol=1e-4)  # Panda joint 4's lower limit (rad)
    with pytest.raises(ValueError, match="shape"):
        lift.step(np.zeros(8))
    with pytest.raises(ValueError, match="non-finite"):
        lift_joint.step(np.full(8, np.nan))
    # ee_delta: +x moves the end effector along world +x, about 5 cm per unit per step at most.
    s0 = lift.reset(seed=0)[0]["state"]
    for _ in range(10):
        s1 = lift.step(np.array([0.5, 0, 0, 0, 0, 0, -1.0]))[0]["state"]
    dx, dy = s1[0] - s0[0], s1[1] - s0[1]
    assert 0.05 < dx < 0.25 and abs(dy) < 0.02
    # joint_pos: an absolute target is reached and held.
    q0 = lift_joint.reset(seed=0)[0]["state"][9:16].astype(np.float64)
    target = q0 + np.array([0.2, -0.1, 0, 0.15, 0, 0, -0.2])
    for _ in range(40):
        s = lift_joint.step(np.append(target, -1.0))[0]["state"]
    np.testing.assert_allclose(s[9:16], target, atol=0.01)


def test_cap_truncates(lift):
    cap, lift.max_steps = lift.max_steps, 4
    try:
        lift.reset(seed=0)
        for t in range(4):
            _, _, term, trunc, info = lift.step(np.zeros(7))
            assert trunc == (t == 3)
        assert (term, info["success"], info["steps"]) == (False, False, 4)
    finally:
        lift.max_steps = cap
    assert cap == sim.task_spec(LIFT).max_steps


# ------------------------------------------------------------------------------------------ experts
def test_lift_experts_succeed(lift, lift_joint):
    for env, expert in ((lift, WaypointExpert("Lift")), (lift_joint, JointWaypointExpert("Lift"))):
        for seed in (0, 1, 2):
            term, info = rollout(env, expert, seed)
            assert term and info["success"] and info["steps"] < 80, (expert, seed, info["steps"])
    a = JointWaypointExpert("Lift")(lift_joint.reset(seed=0)[0])
    assert a.shape == (8,) and a.dtype == np.float32 and a[-1] == -1.0  # opens first
    with pytest.raises(ValueError, match="state"):
        WaypointExpert("Stack")(np.zeros(23))


def test_collect_two_episodes_into_a_store(tmp_path):
    from robopolicy.store import DemoStore

    store = tmp_path / "lift.zarr"
    s = sim.collect("robosuite-Lift-joint-v0", 2, store, progress=False)
    assert (s["episodes_written"], s["expert_failures"], s["seeds"]) == (2, 0, [0, 1])
    ds = DemoStore.open(store)
    assert ds.n_episodes == 2 and set(ds.keys) >= {"state", "action", "timestamp"}
    assert ds.attrs["action_semantics"] == "joint_pos" and ds.attrs["control_rate_hz"] == pytest.approx(20.0)
    assert ds.attrs["task"] == LIFT_JOINT
    ep = ds.episode(1)
    L = len(ep["action"])
    assert ep["state"].shape == (L, 23) and ep["action"].shape == (L, 8) and 20 < L < 80
    np.testing.assert_allclose(ep["timestamp"], np.arange(L) / 20.0)


# ------------------------------------------------------------------------------------------ cameras
def _project(env, camera, point, size):
    """Pixel (row, col) of a world point in an upright ``size`` x ``size`` image of ``camera``."""
    m, d = env.model, env.data
    cid = m.camera(camera).id
    c = d.cam_xmat[cid].reshape(3, 3).T @ (point - d.cam_xpos[cid])
    f = (size / 2) / np.tan(np.deg2rad(m.cam_fovy[cid]) / 2)
    return size / 2 - f * c[1] / -c[2], size / 2 + f * c[0] / -c[2]


def test_camera_frames_are_upright_uint8_and_vary():
    env = sim.make(LIFT, render=True, camera=["agentview", "frontview"], image_size=64, render_size=96)
    try:
        obs, _ = env.reset(seed=0)
    except RuntimeError as e:
        pytest.skip(f"offscreen rendering unavailable (apt-get install -y libosmesa6?): {e}")
    img = obs["image_agentview"]
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8 and img.std() > 10
    assert obs["image_frontview"].shape == (64, 64, 3) and env.observation_space["image_agentview"].shape == (64, 64, 3)
    assert env.render().shape == (96, 96, 3)
    # Upright: the red cube shows where a pinhole projection of its centre puts it, not mirrored.
    rgb = img.astype(int)
    red = (rgb[..., 0] > 100) & (rgb[..., 0] > rgb[..., 1] + 50) & (rgb[..., 0] > rgb[..., 2] + 50)
    assert red.sum() >= 3
    rows, cols = np.nonzero(red)
    r, c = _project(env, "agentview", obs["state"][16:19].astype(np.float64), 64)
    assert abs(rows.mean() - r) < 4 and abs(cols.mean() - c) < 4, ((rows.mean(), cols.mean()), (r, c))
    # The arm moves: the frames change.
    expert = WaypointExpert("Lift")
    for _ in range(8):
        obs, *_ = env.step(expert(obs))
    assert np.abs(obs["image_agentview"].astype(int) - img.astype(int)).mean() > 0.5
    env.close()
