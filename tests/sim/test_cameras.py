"""Depth, camera parameters and point clouds (sim/cameras.py) on a real MuJoCo scene with known geometry."""

import json

import numpy as np
import pytest

import sim  # noqa: F401  (chooses the GL backend before mujoco is imported)

mujoco = pytest.importorskip("mujoco")

from sim.cameras import (  # noqa: E402
    CameraParams,
    PointCloudCamera,
    RGBDRenderer,
    backproject,
    crop,
    farthest_point_sample,
)

BOX_CENTRE = np.array([0.1, -0.05, 0.05])
BOX_HALF = np.array([0.05, 0.04, 0.05])  # resting on the floor (z = 0)
ABOVE_FLOOR = ([-0.5, -0.5, 0.003], [0.5, 0.5, 0.5])

# A red box on a grey floor; "front" looks from +x, "side" from +y, and "flipped" is "front" turned
# 180 degrees about its optical axis (an upside-down fixed camera, which FrameRenderer shows upright).
# The skybox must not show up in depth as a surface.
SCENE = """
<mujoco>
  <visual><map znear="0.01" zfar="50"/></visual>
  <asset><texture type="skybox" builtin="gradient" rgb1="0.3 0.5 0.7" rgb2="0 0 0" width="32" height="32"/></asset>
  <worldbody>
    <light pos="0 0 3"/>
    <geom name="floor" type="plane" size="2 2 0.1" rgba="0.5 0.5 0.5 1"/>
    <body name="box" pos="0.1 -0.05 0.05">
      <geom name="box" type="box" size="0.05 0.04 0.05" rgba="1 0 0 1"/>
    </body>
    <camera name="front" pos="0.8 0 0.5" xyaxes="0 1 0 -0.5 0 1"/>
    <camera name="flipped" pos="0.8 0 0.5" xyaxes="0 -1 0 0.5 0 -1"/>
    <camera name="side" pos="0 0.8 0.5" xyaxes="-1 0 0 0 -0.5 1"/>
  </worldbody>
</mujoco>
"""


@pytest.fixture(scope="module")
def scene():
    model = mujoco.MjModel.from_xml_string(SCENE)
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    try:
        RGBDRenderer(model, data, "front", 8, 8).close()
    except RuntimeError as e:
        pytest.skip(f"offscreen rendering unavailable (apt-get install -y libosmesa6?): {e}")
    return model, data


def box_sdf(xyz):
    """Signed distance (M,) from points (M, 3) to the box's surface."""
    q = np.abs(xyz - BOX_CENTRE) - BOX_HALF
    return np.linalg.norm(np.maximum(q, 0), axis=1) + np.minimum(q.max(axis=1), 0)


def nearest_distance(a, b, chunk=2048):
    """For each point of a (M, 3), the distance to its nearest neighbour in b (K, 3)."""
    out = [np.sqrt(((a[i:i + chunk, None] - b[None]) ** 2).sum(-1).min(1)) for i in range(0, len(a), chunk)]
    return np.concatenate(out)


# ------------------------------------------------------------------------------------------ depth, intrinsics
@pytest.mark.parametrize("camera, face_centre", [("front", [0.15, -0.05, 0.05]), ("side", [0.1, -0.01, 0.05])])
def test_projected_point_lands_on_the_object_at_its_camera_depth(scene, camera, face_centre):
    model, data = scene
    r = RGBDRenderer(model, data, camera, 96, 96)
    rgb, depth = r.rgbd()
    params = r.params()
    (u, v), z = (x[0] for x in params.project(np.array([face_centre])))
    col, row = int(round(u)), int(round(v))
    assert 10 < col < 86 and 10 < row < 86  # the face is in view, away from the border
    assert rgb[row, col, 0] > 100 and rgb[row, col, 1] < 60 and rgb[row, col, 2] < 60  # red: the box
    assert abs(depth[row, col] - z) < 0.01
    r.close()


def test_depth_is_metric_along_the_optical_axis(scene):
    """Floor pixels lift onto the plane z = 0; the length of the ray would bend the floor by centimetres."""
    model, data = scene
    r = RGBDRenderer(model, data, "front", 96, 96)
    depth, params = r.depth(), r.params()
    assert depth.dtype == np.float32 and depth.shape == (96, 96)
    assert abs(depth.max() - params.zfar) < 1e-3 * params.zfar  # the skybox reads as background
    xyz = backproject(depth, params)
    assert 0.5 * depth.size < len(xyz) < depth.size  # background dropped, floor and box kept
    floor = xyz[np.any(np.abs(xyz - BOX_CENTRE) > BOX_HALF + 0.01, axis=1)]
    assert len(floor) > 0.5 * depth.size
    assert np.abs(floor[:, 2]).max() < 2e-3
    r.close()


def test_upside_down_camera_is_shown_upright_with_matching_parameters(scene):
    model, data = scene
    front, flipped = RGBDRenderer(model, data, "front", 64, 64), RGBDRenderer(model, data, "flipped", 64, 64)
    assert flipped.flip and not front.flip
    (rgb_a, depth_a), (rgb_b, depth_b) = front.rgbd(), flipped.rgbd()
    assert np.abs(rgb_a.astype(int) - rgb_b).max() <= 2
    np.testing.assert_allclose(depth_a, depth_b, atol=1e-4)
    pa, pb = front.params(), flipped.params()
    np.testing.assert_allclose(pa.rotation, pb.rotation, atol=1e-9)
    np.testing.assert_allclose(pa.intrinsic_matrix, pb.intrinsic_matrix)
    raw = data.cam_xmat[model.camera("flipped").id].reshape(3, 3)
    assert not np.allclose(raw, data.cam_xmat[model.camera("front").id].reshape(3, 3))  # the raw frames differ
    front.close(), flipped.close()


def test_intrinsics_follow_fovy_and_params_round_trip_through_json(scene):
    model, data = scene
    r = RGBDRenderer(model, data, "side", 48, 64)
    p = r.params()
    assert p.fx == p.fy == pytest.approx(24 / np.tan(np.deg2rad(45) / 2))  # MuJoCo's default fovy is 45
    assert (p.cx, p.cy) == (31.5, 23.5)
    np.testing.assert_allclose(p.rotation @ p.rotation.T, np.eye(3), atol=1e-9)
    np.testing.assert_allclose(p.rotation[:, 2], -data.cam_xmat[model.camera("side").id].reshape(3, 3)[:, 2])
    back = CameraParams.from_dict(json.loads(json.dumps(p.to_dict())))
    np.testing.assert_allclose(back.pose, p.pose)
    assert (back.name, back.height, back.width, back.fx, back.zfar) == ("side", 48, 64, p.fx, p.zfar)
    r.close()


# ------------------------------------------------------------------------------------------ point clouds
def test_two_camera_cloud_lies_on_the_box_and_spans_it(scene):
    model, data = scene
    cam = PointCloudCamera(model, data, ["front", "side"], 128, workspace=ABOVE_FLOOR, num_points=None)
    xyz = cam()
    assert xyz.dtype == np.float32 and xyz.shape[1] == 3 and len(xyz) > 500
    assert np.abs(box_sdf(xyz)).max() < 3e-3
    low, high = BOX_CENTRE - BOX_HALF, BOX_CENTRE + BOX_HALF
    np.testing.assert_allclose(xyz.min(0), low, atol=0.01)
    np.testing.assert_allclose(xyz.max(0), high, atol=0.01)
    cam.close()


def test_the_two_cameras_agree_where_both_see(scene):
    """Points lifted from one camera, projected into the other, land at the depth the other measured there."""
    model, data = scene
    front, side = RGBDRenderer(model, data, "front", 128, 128), RGBDRenderer(model, data, "side", 128, 128)
    depth_side, p_side = side.depth(), side.params()
    xyz = crop(backproject(front.depth(), front.params()), ([-0.3, -0.3, -0.01], [0.3, 0.3, 0.2]))
    uv, z = p_side.project(xyz)
    u, v = uv.T
    u0, v0 = np.floor(u).astype(int), np.floor(v).astype(int)
    inside = (u0 >= 0) & (v0 >= 0) & (u0 < 127) & (v0 < 127)
    u, v, z, u0, v0 = u[inside], v[inside], z[inside], u0[inside], v0[inside]
    corners = np.stack([depth_side[v0, u0], depth_side[v0, u0 + 1], depth_side[v0 + 1, u0], depth_side[v0 + 1, u0 + 1]])
    smooth = np.ptp(corners, axis=0) < 0.01  # not straddling an occluding edge
    fu, fv = u - u0, v - v0
    seen = (corners[0] * (1 - fu) * (1 - fv) + corners[1] * fu * (1 - fv)
            + corners[2] * (1 - fu) * fv + corners[3] * fu * fv)
    err = (seen - z)[smooth]
    visible = np.abs(err) < 0.01  # the rest is hidden from the side camera (behind the box)
    assert smooth.sum() > 2000 and visible.mean() > 0.8
    assert np.median(np.abs(err[visible])) < 1e-3
    # Points hidden from the side camera lie behind what it sees, never in front (it would see through them).
    assert err.max() < 0.01 and err.min() < -0.05
    front.close(), side.close()


def test_workspace_crop_removes_the_floor(scene):
    model, data = scene
    everything = PointCloudCamera(model, data, ["front", "side"], 84, num_points=None)()
    assert (np.abs(everything[:, 2]) < 2e-3).mean() > 0.5  # mostly floor
    assert np.abs(everything[:, :2]).max() > 0.5  # reaching beyond the workspace
    cropped = crop(everything, ABOVE_FLOOR)
    assert 100 < len(cropped) < 0.3 * len(everything)
    assert cropped[:, 2].min() >= 0.003 and np.abs(box_sdf(cropped)).max() < 3e-3
    with pytest.raises(ValueError, match="below high"):
        crop(everything, ([0, 0, 0], [1, -1, 1]))


def test_fixed_size_colour_cloud(scene):
    model, data = scene
    cam = PointCloudCamera(model, data, ["front", "side"], 84, workspace=ABOVE_FLOOR, num_points=256, colour=True)
    obs = cam.observe()
    pts = obs["points"]
    assert pts.shape == (256, 6) and pts.dtype == np.float32
    assert len(np.unique(pts, axis=0)) == 256
    assert 0 <= pts[:, 3:].min() and pts[:, 3:].max() <= 1
    top = pts[pts[:, 2] > BOX_CENTRE[2] + BOX_HALF[2] - 0.001]
    assert len(top) > 10 and np.all(top[:, 3] > 2 * top[:, 4])  # the red box
    assert obs["image_front"].shape == (84, 84, 3) and obs["image_front"].dtype == np.uint8
    assert obs["depth_side"].shape == (84, 84) and obs["depth_side"].dtype == np.float32
    attrs = cam.camera_attrs()
    assert set(attrs) == {"front", "side"} and attrs["front"]["height"] == 84
    np.testing.assert_array_equal(cam(), pts[:, :6])  # deterministic without a seed
    cam.close()


def test_farthest_point_sampling_covers_the_cloud_better_than_random(scene):
    model, data = scene
    cloud = PointCloudCamera(model, data, ["front", "side"], 64, num_points=None)()
    n = 256
    idx = farthest_point_sample(cloud, n)
    assert idx.shape == (n,) and len(np.unique(idx)) == n and idx[0] == 0
    rand = np.random.default_rng(0).choice(len(cloud), n, replace=False)
    fps_gap = nearest_distance(cloud, cloud[idx]).max()
    rand_gap = nearest_distance(cloud, cloud[rand]).max()
    assert fps_gap < 0.7 * rand_gap, (fps_gap, rand_gap)
    np.testing.assert_array_equal(farthest_point_sample(cloud, n), idx)  # deterministic
    a = farthest_point_sample(cloud, n, np.random.default_rng(1))
    np.testing.assert_array_equal(a, farthest_point_sample(cloud, n, np.random.default_rng(1)))
    assert a[0] != 0
    few = farthest_point_sample(cloud[:10], 25)  # fewer points than asked: all of them, repeated
    assert few.shape == (25,) and set(few.tolist()) == set(range(10))
    with pytest.raises(ValueError, match="empty"):
        farthest_point_sample(cloud[:0], 4)


def test_bad_input_is_rejected_clearly(scene):
    model, data = scene
    with pytest.raises(ValueError, match="unknown camera 'nope'"):
        RGBDRenderer(model, data, "nope", 32, 32)
    r = RGBDRenderer(model, data, "front", 32, 32)
    with pytest.raises(ValueError, match="depth of shape"):
        backproject(np.ones((16, 16), np.float32), r.params())
    r.close()
    with pytest.raises(ValueError, match="workspace"):
        PointCloudCamera(model, data, ["front"], 32, workspace=[0, 0, 0])


# ------------------------------------------------------------------------------------------ a real task
def test_metaworld_push_cloud_sees_the_puck():
    env = sim.make("metaworld-push-v3")
    try:
        obs, _ = env.reset(seed=0)
        mw = env.unwrapped_metaworld
        model, data = mw.model, mw.data
        puck = model.body("obj").id
        half_height = model.geom_size[model.body_geomadr[puck]][1]
        table = ([-0.6, 0.3, 0.005], [0.6, 1.0, 0.4])  # above the table top (z = 0)
        cam = PointCloudCamera(model, data, ["corner", "corner3"], 128, workspace=table, num_points=None)
        assert cam.renderers[0].flip  # Meta-World's corner camera is upside down
        for target in (None, np.array([-0.1, 0.75, data.xpos[puck][2]])):
            if target is not None:
                mw._set_obj_xyz(target)  # moves the puck and runs mj_forward
            centre = data.xpos[puck].copy()
            if target is None:
                np.testing.assert_allclose(centre, obs["state"][4:7], atol=1e-6)
            top = centre + [0.0, 0.0, half_height]  # the puck's visible top face
            cloud = cam()
            assert nearest_distance(top[None], cloud)[0] < 0.01
        fixed = PointCloudCamera(model, data, ["corner", "corner3"], 84, workspace=table, num_points=512)()
        assert fixed.shape == (512, 3) and np.all((fixed >= table[0]) & (fixed <= table[1]))
        cam.close()
    finally:
        env.close()


def test_collect_records_images_depth_and_a_cloud_that_finds_the_lift_cube(tmp_path):
    """`robopolicy collect --cameras --depth --points` on robosuite Lift: keys, shapes, camera attributes, and
    the two cameras' fused cloud puts the cube where the simulator has it."""
    pytest.importorskip("robosuite")
    from robopolicy.cli import main
    from robopolicy.store import DemoStore
    from sim.robosuite_tasks import TASKS

    store = tmp_path / "lift.zarr"
    argv = ["--quiet", "collect", "--task", "robosuite-Lift-v0", "--episodes", "1", "--out", str(store),
            "--cameras", "agentview,sideview", "--image-size", "64", "--depth", "--points", "--num-points", "384"]
    assert main(argv) == 0
    ds = DemoStore.open(store)
    spec = sim.task_spec("robosuite-Lift-v0", cameras=["agentview", "sideview"], image_size=64, depth=True,
                         points=True, num_points=384)
    assert set(ds.obs_keys) == set(spec.obs_shapes) == {"state", "image_agentview", "image_sideview",
                                                        "depth_agentview", "depth_sideview", "points"}
    ep = ds.episode(0)
    L = len(ep["action"])
    for key, shape in spec.obs_shapes.items():
        assert ep[key].shape == (L, *shape), key
    assert ep["image_sideview"].dtype == np.uint8 and ep["depth_agentview"].dtype == np.float32
    assert ep["points"].dtype == np.float32 and spec.obs_shapes["points"] == (384, 3)
    assert 0.3 < np.median(ep["depth_agentview"]) < 2.0  # metres: the camera looks at the table from ~0.8 m

    low, high = TASKS["Lift"]["workspace"]
    assert np.all((ep["points"] >= low) & (ep["points"] <= high))
    cams = {name: CameraParams.from_dict(d) for name, d in ds.attrs["cameras"].items()}
    assert set(cams) == {"agentview", "sideview"} and not ds.attrs["cameras"]["agentview"]["moving"]
    assert cams["agentview"].height == 64 and cams["agentview"].fx == pytest.approx(32 / np.tan(np.deg2rad(45) / 2))
    # The recorded intrinsics/extrinsics lift a recorded depth map onto the cube where the state puts it.
    cube = ep["state"][0, 16:19].astype(np.float64)
    half = 0.021  # Lift's cube (seed-0 model build): 0.0211 x 0.0214 x 0.0212 m half-sizes
    lifted = crop(backproject(ep["depth_agentview"][0], cams["agentview"]), (cube - half - 0.005, cube + half + 0.005))
    assert len(lifted) > 10
    # The cube's points in the fused cloud: their centre (the middle of their extent, which two cameras
    # that see opposite faces bound on every side) lies within 1 cm of the cube's true centroid.
    pts = ep["points"][0]
    on_cube = pts[np.all(np.abs(pts - cube) < half + 0.01, axis=1)]
    assert len(on_cube) > 20
    centre = (on_cube.min(0) + on_cube.max(0)) / 2
    assert np.linalg.norm(centre - cube) < 0.01, (centre, cube)
    assert np.linalg.norm(on_cube.mean(0) - cube) < 0.02  # the surface points' own mean leans to the cameras

    # Appending through other cameras is refused (the stored intrinsics/extrinsics would lie).
    assert main(["--quiet", "collect", "--task", "robosuite-Lift-v0", "--episodes", "1", "--out", str(store),
                 "--cameras", "frontview", "--image-size", "64"]) == 2
    assert DemoStore.open(store).n_episodes == 1


def test_camera_options_give_spec_shapes_and_are_checked():
    from sim.camera_obs import camera_options_for

    spec = sim.task_spec("metaworld-push-v3", cameras="corner", depth=True, points=True, point_colour=True)
    assert spec.obs_shapes == {"state": (39,), "image_corner": (96, 96, 3), "depth_corner": (96, 96),
                               "points": (512, 6)}
    assert sim.task_spec("metaworld-push-v3", points=True).obs_shapes == {"state": (39,), "points": (512, 3)}
    assert sim.task_spec("metaworld-push-v3").obs_shapes == {"state": (39,)}
    opts = camera_options_for(spec.obs_shapes)
    assert sim.task_spec("metaworld-push-v3", **opts).obs_shapes == spec.obs_shapes
    with pytest.raises(ValueError, match="takes no camera options"):
        sim.task_spec("quadrotor-hover-v0", depth=True)
    with pytest.raises(ValueError, match="disagree"):
        sim.task_spec("robosuite-Lift-v0", camera="agentview", cameras="frontview")
    with pytest.raises(ValueError, match="workspace"):
        sim.task_spec("robosuite-Lift-v0", points=True, workspace=([0, 0, 1], [1, 1, 0]))


def test_metaworld_env_returns_depth_and_points_in_its_workspace():
    env = sim.make("metaworld-push-v3", cameras=["corner", "corner3"], depth=True, points=True, num_points=256,
                   image_size=64)
    try:
        obs, _ = env.reset(seed=0)
        assert set(obs) == set(env.task_spec.obs_shapes) == set(env.observation_space.spaces)
        assert obs["depth_corner3"].shape == (64, 64) and obs["points"].shape == (256, 3)
        low, high = env.camera_config.workspace
        assert np.all((obs["points"] >= low) & (obs["points"] <= high))
        puck = obs["state"][4:7]  # the puck's top face is in the cloud
        assert nearest_distance((puck + [0, 0, 0.02])[None], obs["points"])[0] < 0.015
        obs2, *_ = env.step(np.array([0, 0, 1.0, 0]))  # the arm moves up: the cloud follows
        assert np.abs(obs2["points"] - obs["points"]).max() > 0.005
    finally:
        env.close()
