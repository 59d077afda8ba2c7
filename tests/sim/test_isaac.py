"""The Isaac Lab adapter (sim/isaac.py) on our own batched torch env (sim/pointmass_vec.py), both APIs:
per-env resets exactly when each env is done, recurrent state cleared for those rows only, the history
after a reset is the new episode's, episode statistics equal the env's own log, and one row of the
batched runner acts exactly like PolicyRunner."""

import numpy as np
import pytest
import torch

from robopolicy.policies import build_config, get_policy_class
from robopolicy.runtime import PolicyRunner
from robopolicy.store import Normalizer
from sim.isaac import (
    ActionMap,
    BatchedPolicyRunner,
    IsaacLabEnv,
    IsaacRollout,
    ObservationMap,
    VecTask,
    VecTaskAdapter,
)
from sim.pointmass_vec import ACTION_DIM, OBS_DIM, PointMassEnv, PointMassVecTask

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]
TINY = {"down_dims": [16, 32], "step_embed_dim": 16, "num_inference_steps": 2}


def normalizer() -> Normalizer:
    stats = lambda lo, hi, d: {"min": [lo] * d, "max": [hi] * d, "mean": [0.0] * d, "std": [1.0] * d}  # noqa: E731
    return Normalizer.from_store_stats({"state": stats(-1.0, 1.0, OBS_DIM), "action": stats(-1.0, 1.0, ACTION_DIM)})


def tiny_policy(name: str, seed: int = 0, **overrides):
    """A real policy of the registry with small random weights (nothing is trained)."""
    torch.manual_seed(seed)
    config = build_config(name, "cpu", {"state": [OBS_DIM]}, ACTION_DIM, **{**TINY, **overrides})
    return get_policy_class(name)(config)


def runner(name: str, num_envs: int, device: str = "cpu", **kw) -> BatchedPolicyRunner:
    meta = {"action_key": "action", "action_semantics": "unknown"}
    return BatchedPolicyRunner(tiny_policy(name), normalizer(), meta, num_envs, device, seed=0, **kw)


def test_both_envs_satisfy_the_protocols():
    assert isinstance(PointMassEnv(2), IsaacLabEnv)
    assert isinstance(PointMassVecTask(2), VecTask)
    assert isinstance(VecTaskAdapter(PointMassVecTask(2)), IsaacLabEnv)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("api", ["isaaclab", "vectask"])
def test_resets_happen_exactly_when_each_env_is_done(api, device):
    n = 6
    env_class = PointMassEnv if api == "isaaclab" else PointMassVecTask
    raw = env_class(n, device, max_episode_length=12, goal_radius=0.25, seed=1)
    env = raw if api == "isaaclab" else VecTaskAdapter(raw)
    r = runner("diffusion", n, device)
    roll = IsaacRollout(env, r, ObservationMap.state_only(OBS_DIM))
    roll.reset()
    records, prev_obs, just_reset, mixed = [], None, torch.ones(n, dtype=torch.bool, device=device), 0
    starts = {i: [] for i in range(n)}  # the first observation the runner saw of each episode, per env
    for t in range(60):
        pending = roll.pending.clone()
        obs_in = roll.obs["policy"].clone()
        done, recs = roll.step()
        h = r.history["state"]  # (N, To, 6) after act() saw obs_in
        for i in range(n):
            if pending[i]:  # VecTask: this step reset env i; its (terminal) observation was not recorded
                assert torch.equal(h[i, -1], prev_obs[i])
            elif just_reset[i]:  # the first observation of a new episode fills the whole history
                assert torch.equal(h[i], obs_in[i].expand_as(h[i]))
                starts[i].append(obs_in[i])
            else:  # mid-episode: a rolling window of consecutive observations
                assert torch.equal(h[i, -2], prev_obs[i]) and torch.equal(h[i, -1], obs_in[i])
        # A row starts over exactly when its env reported done (VecTask: it waits out the env's reset step).
        assert torch.equal(r.fresh, done | pending)
        just_reset = pending if api == "vectask" else done
        prev_obs = torch.where(pending[:, None], prev_obs, obs_in) if prev_obs is not None else obs_in
        records += recs
        mixed += bool(done.any() and not done.all())
    # Each episode's history began with the observation the env drew at that episode's reset (its own log).
    for i in range(n):
        drawn = [e["initial_obs"] for e in raw.episode_log if e["env"] == i] + [raw.initial_obs[i]]
        assert len(starts[i]) >= 2 and all(torch.equal(a, b) for a, b in zip(starts[i], drawn))
    # Episode statistics: the adapter's equal the env's ground truth, episode for episode.
    truth = [(e["env"], e["success"], round(e["return"], 6), e["length"]) for e in raw.episode_log]
    mine = [(rec.env, rec.success, round(rec.ret, 6), rec.length) for rec in records]
    assert sorted(mine) == sorted(truth) and len(mine) >= 10
    assert {m[1] for m in mine} == {True, False}  # both endings occurred
    assert mixed >= 3  # envs went out of step: some done while others ran on


def test_history_after_reset_is_the_new_episodes_first_observation():
    env = PointMassEnv(4, max_episode_length=5, seed=3)
    r = runner("diffusion", 4)
    roll = IsaacRollout(env, r)
    roll.reset()
    for _ in range(7):
        done, _ = roll.step()
        if done.any():
            break
    assert done.all()  # all truncate together at step 5
    new_first = env.initial_obs.clone()
    roll.step()
    assert torch.equal(r.history["state"], new_first[:, None].expand(4, 2, OBS_DIM))
    assert not torch.equal(new_first, env.episode_log[0]["initial_obs"].expand(4, -1))  # a new draw


def test_recurrent_state_is_reset_only_for_the_done_rows():
    n = 5
    env = PointMassEnv(n, max_episode_length=40, goal_radius=0.3, seed=0)
    r = runner("seed", n)
    assert r.recurrent and r.replan == "lockstep"
    with pytest.raises(ValueError, match="lockstep"):
        runner("seed", n, replan="per_row")
    roll = IsaacRollout(env, r)
    roll.reset()
    checked = 0
    for _ in range(80):
        done, _ = roll.step()
        if done.any() and not done.all():
            state_before = r.policy.state.clone()
            roll.step()  # every row re-plans (lockstep): the done rows from the initial state, the others carry on
            reference = tiny_policy("seed").eval()  # the same weights, every row from the initial state
            reference.load_state_dict(r.policy.state_dict())
            window = {k: r.normalizer.normalize(k, h) for k, h in r.history.items()}
            with torch.no_grad():
                reference.encode_obs(window)
            torch.testing.assert_close(r.policy.state[done], reference.state[done])
            assert (r.policy.state[~done] - reference.state[~done]).abs().amax() > 1e-4
            assert not torch.equal(r.policy.state, state_before)
            checked += 1
            if checked == 2:
                break
    assert checked == 2


def test_one_row_acts_exactly_like_policy_runner():
    single = PolicyRunner(tiny_policy("diffusion"), normalizer(), {"action_key": "action"}, seed=7)
    batched = BatchedPolicyRunner(tiny_policy("diffusion"), normalizer(), {"action_key": "action"}, 1, seed=7)
    single.reset(seed=7)
    batched.reset(seed=7)
    env = PointMassEnv(1, max_episode_length=100, seed=5)
    obs, _ = env.reset()
    for t in range(20):  # 2.5 chunks of Ta = 8
        a_single = single.act({"state": obs["policy"][0].numpy()})
        a_batched = batched.act({"state": obs["policy"]})
        np.testing.assert_allclose(a_batched[0].numpy(), a_single, atol=1e-6)
        obs, *_ = env.step(a_batched)
    assert batched.plans == 3


def test_run_counts_each_envs_share_of_episodes_and_reports_success():
    env = PointMassEnv(4, max_episode_length=30, goal_radius=0.1, seed=0)
    r = runner("diffusion", 4)
    # The PD expert drives the envs in place of the untrained policy's output (through the action map), so
    # every episode succeeds and the per-env quotas, success flags and interval can be checked exactly.
    expert_roll = IsaacRollout(env, r, action_map=lambda a: env.expert(env._obs()))
    result = expert_roll.run(episodes=10)
    assert len(result.episodes) == 10
    assert sorted(np.bincount([e.env for e in result.episodes]).tolist()) == [2, 2, 3, 3]
    assert result.success_rate == 1.0 and result.ci95[0] > 0.65 and result.mean_length < 30
    assert "success_rate=1.000" in result.summary_line()
    m = ActionMap.joint_position(0.5, [0.1, -0.2], gripper_dims=1)
    out = m(torch.tensor([[0.6, 0.3, 1.0]]))
    torch.testing.assert_close(out, torch.tensor([[1.0, 1.0, -1.0]]))  # (q - default) / scale; gripper flipped
    with pytest.raises(KeyError, match="no 'is_success'"):
        IsaacRollout(env, r, success="is_success").step()


def test_bad_observations_are_rejected_clearly():
    from robopolicy.runtime import ObservationError

    r = runner("diffusion", 3)
    with pytest.raises(ObservationError, match="missing 'state'"):
        r.act({"qpos": torch.zeros(3, OBS_DIM)})
    with pytest.raises(ObservationError, match=r"\(3, 6\)"):
        r.act({"state": torch.zeros(2, OBS_DIM)})
    with pytest.raises(ObservationError, match="group 'camera'"):
        ObservationMap(groups={"image_front": "camera"})({"policy": torch.zeros(3, OBS_DIM)})
    with pytest.raises(ValueError, match="built for 3 envs"):
        IsaacRollout(PointMassEnv(4), r)
