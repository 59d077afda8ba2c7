"""The sim room on real Meta-World / MuJoCo: registry, env contract, experts, evaluation, videos, collection."""

from __future__ import annotations

import functools
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import sim
from sim.registry import METAWORLD_V3_TASKS

PUSH = "robopolicy/metaworld-push-v3"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ------------------------------------------------------------------------------------------ helpers
class NoisyExpert:
    """The push expert plus noise from numpy's *global* generator: a stand-in for a stochastic policy.

    Its results depend on how the global RNG is seeded, so evaluation is only worker-count independent
    if every episode seeds it the same way, whichever process runs the episode.
    """

    action_semantics = "metaworld"
    action_dim = 4
    sampler = "noisy"
    nfe = 1

    def __init__(self, scale: float = 0.3):
        self.expert = sim.make_expert(PUSH)
        self.scale = scale

    def reset(self):
        self.expert.reset()

    def act(self, obs):
        a = self.expert(obs) + self.scale * np.random.standard_normal(4).astype(np.float32)
        return np.clip(a, -1, 1)


class DeclaredPolicy:
    """A policy that declares its actions and must never be rolled out."""

    def __init__(self, semantics, dim):
        self.action_semantics, self.action_dim = semantics, dim
        self.calls = 0

    def reset(self):
        self.calls += 1

    def act(self, obs):
        self.calls += 1
        raise AssertionError("rolled out although the declared actions do not fit the task")


class UnknownSemanticsExpert:
    action_semantics = "unknown"
    action_dim = 4

    def __init__(self):
        self.expert = sim.make_expert(PUSH)

    def reset(self):
        pass

    def act(self, obs):
        return self.expert(obs)


@pytest.fixture(scope="module")
def render_ok():
    """Rendering needs an offscreen GL (osmesa on CPU). Skip the render tests, with the reason, if absent."""
    env = sim.make(PUSH)
    try:
        env.reset(seed=0)
        env.render()
    except RuntimeError as e:
        pytest.skip(f"offscreen rendering unavailable (apt-get install -y libosmesa6?): {e}")
    finally:
        env.close()
    return True


# ------------------------------------------------------------------------------------------ registry
def test_import_sim_is_cheap():
    code = (
        "import sys, sim; heavy = [m for m in ('mujoco', 'metaworld', 'torch', 'zarr') if m in sys.modules];"
        "assert not heavy, heavy; assert len(sim.list_tasks()) >= 50"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": ROOT})
    assert r.returncode == 0, r.stderr


def test_registry_has_all_50_metaworld_tasks():
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE

    shipped = {k.removesuffix("-goal-observable") for k in ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE}
    assert len(shipped) == 50
    assert set(METAWORLD_V3_TASKS) == shipped
    names = sim.list_tasks("metaworld")
    assert len(names) == 50
    assert set(names) == {f"robopolicy/metaworld-{t}" for t in shipped}
    for name in names:
        spec = sim.task_spec(name)
        assert isinstance(spec, sim.TaskSpec) and spec.name == name
        assert (spec.action_semantics, spec.action_dim) == ("metaworld", 4)
        assert spec.obs_shapes == {"state": (39,)}
        assert spec.control_rate_hz == pytest.approx(80.0)
        assert 150 <= spec.max_steps <= 500
    assert sim.task_spec(PUSH).max_steps == 150


def test_every_task_has_its_shipped_expert():
    from metaworld.policies import ENV_POLICY_MAP

    from sim.metaworld_tasks import expert_class, expert_class_name

    assert expert_class_name("push-v3") == "SawyerPushV3Policy"
    assert expert_class_name("button-press-topdown-v3") == "SawyerButtonPressTopdownV3Policy"
    for task in METAWORLD_V3_TASKS:
        assert expert_class(task) is ENV_POLICY_MAP[task], task
    # The one name that does not follow the pattern.
    assert expert_class("peg-insert-side-v3").__name__ == "SawyerPegInsertionSideV3Policy"
    expert = sim.make_expert("metaworld-peg-insert-side-v3")
    assert expert.name == "SawyerPegInsertionSideV3Policy"


def test_unknown_task_lists_known_names_and_suggests():
    with pytest.raises(sim.UnknownTaskError) as e:
        sim.make("metaworld-pushh-v3")
    assert isinstance(e.value, ValueError)
    msg = str(e.value)
    assert "Did you mean 'robopolicy/metaworld-push-v3'" in msg
    assert "robopolicy/metaworld-drawer-close-v3" in msg and "robopolicy/metaworld-window-open-v3" in msg
    # The family-less Meta-World name gets a suggestion too; nonsense gets none but still the list.
    with pytest.raises(sim.UnknownTaskError, match=r"Did you mean 'robopolicy/metaworld-drawer-close-v3'"):
        sim.task_spec("drawer-close-v3")
    with pytest.raises(sim.UnknownTaskError) as e:
        sim.make_expert("zzzzzz")
    assert "Did you mean" not in str(e.value) and "robopolicy/metaworld-push-v3" in str(e.value)


def test_prefix_is_optional_and_gymnasium_make_works():
    import gymnasium

    assert sim.task_spec("metaworld-push-v3") == sim.task_spec(PUSH)
    assert sim.canonical_name("metaworld-push-v3") == PUSH
    env = gymnasium.make(PUSH)
    try:
        obs, info = env.reset(seed=0)
        assert set(obs) == {"state"} and obs["state"].shape == (39,) and obs["state"].dtype == np.float32
        obs2, _ = sim.make("metaworld-push-v3").reset(seed=0)
        np.testing.assert_array_equal(obs["state"], obs2["state"])
    finally:
        env.close()


# ------------------------------------------------------------------------------------------ env
def test_reset_is_deterministic_per_seed_and_varies_across_seeds():
    env, other = sim.make(PUSH), sim.make(PUSH)
    a = env.reset(seed=7)[0]["state"]
    env.reset(seed=8)
    b = env.reset(seed=7)[0]["state"]
    c = other.reset(seed=7)[0]["state"]  # another instance (another worker) gives the same start
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    starts = np.stack([env.reset(seed=s)[0]["state"] for s in range(6)])
    puck, goal = starts[:, 4:7], starts[:, 36:39]
    assert len({tuple(np.round(p, 6)) for p in puck}) == 6
    assert len({tuple(np.round(g, 6)) for g in goal}) == 6
    # Meta-World's global-RNG path is not used: numpy's global seed does not change the start.
    np.random.seed(123)
    d = env.reset(seed=7)[0]["state"]
    np.testing.assert_array_equal(a, d)
    # seed=None continues the stream of the last seeded reset, reproducibly.
    env.reset(seed=3)
    s1 = [env.reset()[0]["state"] for _ in range(2)]
    env.reset(seed=3)
    s2 = [env.reset()[0]["state"] for _ in range(2)]
    np.testing.assert_array_equal(np.stack(s1), np.stack(s2))
    assert not np.array_equal(s1[0], s1[1])


def test_step_contract_success_terminates_and_cap_truncates():
    env = sim.make(PUSH)
    assert env.control_rate_hz == pytest.approx(1.0 / (env.unwrapped_metaworld.frame_skip
                                                        * env.unwrapped_metaworld.model.opt.timestep))
    expert = sim.make_expert(PUSH)
    obs, _ = env.reset(seed=0)
    for t in range(1, 151):
        obs, reward, terminated, truncated, info = env.step(expert(obs))
        assert isinstance(info["success"], bool) and isinstance(reward, float)
        assert terminated == info["success"]
        if terminated or truncated:
            break
    assert terminated and not truncated and t < 150

    short = sim.make(PUSH, max_steps=5)
    short.reset(seed=0)
    flags = [short.step(np.zeros(4, np.float32))[2:4] for _ in range(5)]
    assert flags == [(False, False)] * 4 + [(False, True)]
    with pytest.raises(ValueError, match="shape"):
        short.step(np.zeros(7))


def test_expert_output_and_push_success_via_evaluate():
    expert = sim.make_expert(PUSH)
    obs, _ = sim.make(PUSH).reset(seed=0)
    a = expert(obs)
    assert a.shape == (4,) and a.dtype == np.float32 and np.all(np.abs(a) <= 1)
    res = sim.evaluate(functools.partial(sim.make_expert, PUSH), "metaworld-push-v3", 5, progress=False)
    assert [r.seed for r in res.per_episode] == [1000, 1001, 1002, 1003, 1004]
    assert res.success_rate == 1.0 and all(r.success for r in res.per_episode)
    assert all(20 < r.steps < 150 for r in res.per_episode)
    assert (res.sampler, res.nfe) == ("scripted", 0)


def test_evaluate_same_results_with_one_and_two_workers():
    one = sim.evaluate(NoisyExpert, PUSH, 4, workers=1, progress=False)
    two = sim.evaluate(NoisyExpert, PUSH, 4, workers=2, progress=False)
    key = [(r.episode, r.seed, r.success, r.steps, round(r.reward, 6)) for r in one.per_episode]
    assert key == [(r.episode, r.seed, r.success, r.steps, round(r.reward, 6)) for r in two.per_episode]
    assert two.workers == 2 and (two.sampler, two.nfe) == ("noisy", 1)
    # The noise matters (otherwise this test could not tell anything): it changes episode lengths.
    clean = sim.evaluate(functools.partial(sim.make_expert, PUSH), PUSH, 4, progress=False)
    assert [r.steps for r in clean.per_episode] != [r.steps for r in one.per_episode]


# ------------------------------------------------------------------------------------------ statistics
def _wilson(k, n, z=1.96):
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def test_wilson_ci():
    lo, hi = sim.wilson_ci(0, 20)
    assert lo == pytest.approx(0.0, abs=1e-12) and hi == pytest.approx(0.1611, abs=5e-4)
    lo, hi = sim.wilson_ci(20, 20)
    assert lo == pytest.approx(0.8389, abs=5e-4) and hi == pytest.approx(1.0, abs=1e-12)
    for k, n in [(46, 50), (1, 3), (7, 10), (500, 1000)]:
        assert sim.wilson_ci(k, n) == pytest.approx(_wilson(k, n), abs=1e-12)
    # DESIGN §11's example line shows [0.808,0.968] for 0.920 of 50; Wilson's interval is [0.812,0.968].
    assert sim.wilson_ci(46, 50) == pytest.approx((0.8116, 0.9685), abs=5e-4)
    assert sim.wilson_ci(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        sim.wilson_ci(3, 2)


def test_summary_line_and_json():
    r = sim.EvalResult(task=PUSH, per_episode=[], success_rate=46 / 50, ci95=(0.8081, 0.96849),
                       episodes=50, sampler="ddim-10", nfe=10)
    assert r.summary_line() == "success_rate=0.920 ci95=[0.808,0.968] episodes=50 sampler=ddim-10 nfe=10"
    r = sim.EvalResult(task=PUSH, per_episode=[], success_rate=46 / 50, ci95=sim.wilson_ci(46, 50),
                       episodes=50, sampler=None, nfe=None)
    assert r.summary_line() == "success_rate=0.920 ci95=[0.812,0.968] episodes=50 sampler=none nfe=none"
    res = sim.evaluate(functools.partial(sim.make_expert, PUSH), PUSH, 2, progress=False)
    line = res.summary_line()
    assert re.fullmatch(r"success_rate=1\.000 ci95=\[0\.342,1\.000\] episodes=2 sampler=scripted nfe=0", line), line
    d = json.loads(res.to_json())
    assert d["summary"] == line and len(d["per_episode"]) == 2 and d["per_episode"][1]["seed"] == 1001


# ------------------------------------------------------------------------------------------ bad input
def test_action_mismatch_raises_before_any_rollout():
    policy = DeclaredPolicy("ee_delta", 7)
    with pytest.raises(ValueError, match=re.escape(
            "actions are ee_delta (7-d) but task robopolicy/metaworld-push-v3 expects metaworld (4-d)")):
        sim.evaluate(lambda: policy, PUSH, 3, progress=False)
    assert policy.calls == 0

    def never():
        raise AssertionError("the factory must not run when the checkpoint's declaration already mismatches")

    with pytest.raises(ValueError, match=re.escape("checkpoint actions are ee_delta (7-d)")):
        sim.evaluate(never, PUSH, 3, workers=2, expect=("ee_delta", 7), progress=False)
    with pytest.raises(ValueError, match=re.escape("joint_pos (4-d)")):  # right size, wrong meaning
        sim.evaluate(never, PUSH, 3, expect=("joint_pos", 4), progress=False)
    with pytest.raises(ValueError, match=re.escape("unknown (7-d)")):  # unknown semantics: dimension only
        sim.evaluate(never, PUSH, 3, expect=("unknown", 7), progress=False)


def test_unknown_semantics_checks_dimension_and_warns():
    with pytest.warns(UserWarning, match="unknown"):
        res = sim.evaluate(UnknownSemanticsExpert, PUSH, 1, progress=False)
    assert res.success_rate == 1.0


# ------------------------------------------------------------------------------------------ rendering
def _projected_up(env, camera):
    """Image-up coordinate of two world points 0.5 m apart vertically, as the *raw* camera sees them."""
    import mujoco

    m, d = env.unwrapped_metaworld.model, env.unwrapped_metaworld.data
    mujoco.mj_forward(m, d)
    cid = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_CAMERA, camera)
    pos, rot = d.cam_xpos[cid], d.cam_xmat[cid].reshape(3, 3)
    ys = []
    for p in (np.array([0.0, 0.7, 0.0]), np.array([0.0, 0.7, 0.5])):
        c = rot.T @ (p - pos)
        ys.append(c[1] / -c[2])
    return ys


def test_render_frames_are_upright_uint8_and_vary(render_ok):
    from sim.render import FrameRenderer

    env = sim.make(PUSH, render=True, camera="corner", image_size=96, render_size=128)
    obs, _ = env.reset(seed=0)
    img = obs["image_corner"]
    assert img.shape == (96, 96, 3) and img.dtype == np.uint8 and img.std() > 10
    frame = env.render()
    assert frame.shape == (128, 128, 3) and frame.dtype == np.uint8 and frame.std() > 10
    expert = sim.make_expert(PUSH)
    for _ in range(20):
        obs, *_ = env.step(expert(obs))
    assert np.abs(env.render().astype(int) - frame.astype(int)).mean() > 0.5  # the arm moved
    for cam in ("corner", "corner2", "topview"):
        low, high = _projected_up(env, cam)
        raw_upside_down = high < low
        r = FrameRenderer(env.unwrapped_metaworld.model, env.unwrapped_metaworld.data, cam, 64, 64)
        assert r.flip == raw_upside_down, cam
        r.close()
    assert env.observation_space["image_corner"].shape == (96, 96, 3)
    env.close()


def test_evaluate_writes_videos_and_json(render_ok, tmp_path):
    import imageio.v2 as imageio

    vdir, jpath = tmp_path / "videos", tmp_path / "eval.json"
    res = sim.evaluate(functools.partial(sim.make_expert, PUSH), PUSH, 3, video_dir=vdir, video_episodes=2,
                       json_path=jpath, progress=False)
    assert sorted(os.listdir(vdir)) == ["episode_000.mp4", "episode_001.mp4", "grid.mp4"]
    with imageio.get_reader(vdir / "grid.mp4") as reader:
        frames = [f for f in reader]
    longest = max(r.steps for r in res.per_episode[:2])
    assert len(frames) == longest + 1
    assert frames[0].shape == (128, 256, 3) and frames[0].std() > 10
    with imageio.get_reader(vdir / "episode_001.mp4") as reader:
        assert sum(1 for _ in reader) == res.per_episode[1].steps + 1
    d = json.loads(jpath.read_text())
    assert [e["seed"] for e in d["per_episode"]] == [1000, 1001, 1002]
    assert d["per_episode"][0]["video"].endswith("episode_000.mp4") and d["per_episode"][2]["video"] is None


# ------------------------------------------------------------------------------------------ collection
def test_collect_writes_episodes_that_reopen(tmp_path):
    from robopolicy.store import DemoStore

    store = tmp_path / "demos.zarr"
    s = sim.collect("metaworld-push-v3", 3, store, progress=False)
    assert (s["episodes_written"], s["expert_failures"], s["seeds"]) == (3, 0, [0, 1, 2])
    s2 = sim.collect(PUSH, 2, store, seed=3, progress=False)
    assert s2["store_episodes"] == 5
    ds = DemoStore.open(store)
    assert ds.n_episodes == 5 and set(ds.keys) >= {"state", "action", "timestamp"}
    attrs = ds.attrs
    assert attrs["action_semantics"] == "metaworld" and attrs["control_rate_hz"] == pytest.approx(80.0)
    assert attrs["task"] == PUSH and attrs["expert"] == "SawyerPushV3Policy"
    assert attrs["collection_seeds"] == [0, 1, 2, 3, 4]
    assert attrs["provenance"]["source"] == "scripted_expert"
    # Episode 3 is seed 3: it starts where the env starts for that seed, and ends at the expert's success.
    ep = ds.episode(3)
    start, _ = sim.make(PUSH).reset(seed=3)
    np.testing.assert_array_equal(ep["state"][0], start["state"])
    L = len(ep["action"])
    np.testing.assert_allclose(ep["timestamp"], np.arange(L) / 80.0)
    assert ep["state"].dtype == np.float32 and ep["action"].shape == (L, 4)
    env, expert = sim.make(PUSH), sim.make_expert(PUSH)
    obs, _ = env.reset(seed=3)
    for t in range(L):
        np.testing.assert_allclose(ep["action"][t], expert(obs))
        obs, _, term, _, _ = env.step(ep["action"][t])
    assert term  # the stored actions replay to success in exactly L steps
    with pytest.raises(ValueError, match="refusing to append"):
        sim.collect("metaworld-reach-v3", 1, store, progress=False)


def test_collect_discards_failures_unless_asked(tmp_path):
    from robopolicy.store import DemoStore

    s = sim.collect(PUSH, 2, tmp_path / "a.zarr", max_steps=10, progress=False)
    assert (s["episodes_written"], s["expert_failures"], s["failed_seeds"]) == (0, 2, [0, 1])
    assert s["expert_success_rate"] == 0.0
    s = sim.collect(PUSH, 2, tmp_path / "b.zarr", max_steps=10, keep_failures=True, progress=False)
    assert s["episodes_written"] == 2 and s["expert_failures"] == 2
    assert list(DemoStore.open(tmp_path / "b.zarr").episode_lengths) == [10, 10]


def test_collect_with_images(render_ok, tmp_path):
    from robopolicy.store import DemoStore, StoreError

    sim.collect(PUSH, 1, tmp_path / "img.zarr", render=True, image_size=64, progress=False)
    ds = DemoStore.open(tmp_path / "img.zarr")
    ep = ds.episode(0)
    assert ep["image_corner"].dtype == np.uint8 and ep["image_corner"].shape[1:] == (64, 64, 3)
    assert ds.attrs["obs_keys"] == ["image_corner", "state"]
    with pytest.raises(StoreError, match="obs_keys"):  # a store with images cannot take state-only episodes
        sim.collect(PUSH, 1, tmp_path / "img.zarr", progress=False)
