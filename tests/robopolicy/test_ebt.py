"""EBT-Policy and energy descent (methods.md §2 Tests): the descent step on a known energy, the second-order
training path, a policy trained on a real zarr store, determinism, dynamic compute, best-of-G, checkpoints."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from robopolicy.generative.energy import ReplayBuffer, descend, select_lowest_energy
from robopolicy.policies import build_config, get_policy_class
from robopolicy.policies.ebt import EBTConfig, EBTPolicy
from robopolicy.runtime import PolicyRunner
from robopolicy.store import DemoStore, WindowSampler
from robopolicy.train.checkpoint import load_policy
from robopolicy.train.trainer import train
from tests.robopolicy.toy_store import reach_with, write_reach_store

TINY = {"n_emb": 32, "n_layer": 2, "n_head": 2, "horizon": 8, "n_action_steps": 4}


def make_policy(obs_dim=6, action_dim=3, **overrides) -> EBTPolicy:
    config = build_config("ebt", "cpu", {"state": [obs_dim]}, action_dim, **{**TINY, **overrides})
    return get_policy_class("ebt")(config)


def quadratic(target):
    """E(y) = ½‖y − y*‖² per sample, in place of the network."""
    return lambda y, k: 0.5 * (y - target).flatten(1).pow(2).sum(1)


# --- the descent step on a known energy ----------------------------------------------------------------------


def test_one_step_at_unit_step_size_lands_on_the_quadratic_minimum():
    target, y0 = torch.randn(4, 8, 3), torch.randn(4, 8, 3)
    descent = descend(quadratic(target), y0, steps=1, step_size=1.0)
    assert torch.allclose(descent.iterates[1], target, atol=1e-6)
    assert len(descent.iterates) == 2 and torch.equal(descent.steps, torch.ones(4, dtype=torch.long))
    # The scored final energy is the converged one: zero at the minimum, ½‖y0 − y*‖² at the start.
    assert torch.allclose(descent.energies[0], 0.5 * (y0 - target).flatten(1).pow(2).sum(1))
    assert descent.energies[1].abs().max() < 1e-10


@pytest.mark.parametrize("alpha,sign", [(0.5, -1), (1.5, 1)])
def test_step_size_gradient_points_towards_the_exact_step(alpha, sign):
    # ŷ_1 = y0 − α(y0 − y*), so loss = (1 − α)²‖y0 − y*‖² and ∂loss/∂α = −2(1 − α)‖y0 − y*‖².
    target, y0 = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    step_size = torch.tensor(alpha, requires_grad=True)
    descent = descend(quadratic(target), y0, steps=1, step_size=step_size, create_graph=True)
    loss = (descent.iterates[1] - target).pow(2).sum()
    (grad,) = torch.autograd.grad(loss, step_size)
    expected = -2 * (1 - alpha) * (y0 - target).pow(2).sum()
    assert torch.sign(grad) == sign and torch.allclose(grad, expected, rtol=1e-5)


# --- the second-order training path ---------------------------------------------------------------------------


def test_unrolled_step_gradient_matches_finite_differences_only_with_create_graph():
    torch.manual_seed(0)
    policy = make_policy(p_drop=0.0).double()
    obs = {"state": torch.randn(3, 2, 6, dtype=torch.float64)}
    target, y0 = torch.rand(3, 8, 3, dtype=torch.float64) * 2 - 1, torch.randn(3, 8, 3, dtype=torch.float64)
    weight = policy.energy_net.action_emb.weight

    def loss_fn(create_graph):
        context = policy.encode_obs(obs)
        descent = descend(lambda y, k: policy.energy_net(context, y, k), y0, 1, policy.step_size,
                          create_graph=create_graph)
        return F.mse_loss(descent.iterates[1], target)

    (autograd,) = torch.autograd.grad(loss_fn(True), weight)
    (first_order,) = torch.autograd.grad(loss_fn(False), weight, allow_unused=True)
    eps, finite_diff = 1e-6, torch.zeros(4, dtype=torch.float64)
    entries = [(0, 0), (5, 1), (17, 2), (31, 0)]
    with torch.no_grad():
        for i, (r, c) in enumerate(entries):
            weight[r, c] += eps
            up = loss_fn(False)
            weight[r, c] -= 2 * eps
            down = loss_fn(False)
            weight[r, c] += eps
            finite_diff[i] = (up - down) / (2 * eps)
    analytic = torch.stack([autograd[r, c] for r, c in entries])
    assert finite_diff.abs().min() > 1e-8  # the loss does depend on these weights
    assert torch.allclose(analytic, finite_diff, rtol=1e-4, atol=1e-9)
    # Without create_graph the step ∇_ŷE is a constant: θ gets no gradient, which is wrong.
    assert first_order is None


def test_truncation_keeps_second_order_graph_on_the_last_step_only():
    policy = make_policy()
    context = policy.encode_obs({"state": torch.randn(2, 2, 6)})
    descent = descend(lambda y, k: policy.energy_net(context, y, k), torch.randn(2, 8, 3), 3, policy.step_size,
                      create_graph=True, truncate=True, score_final=False)
    weight = policy.energy_net.action_emb.weight
    grads = [torch.autograd.grad(y.sum(), weight, allow_unused=True, retain_graph=True)[0]
             for y in descent.iterates[1:]]
    assert grads[0] is None and grads[1] is None and grads[2].abs().sum() > 0
    assert [e.requires_grad for e in descent.energies] == [False, False, True]


# --- dynamic compute, best-of-G, Langevin, replay ----------------------------------------------------------------


def test_dynamic_compute_stops_each_sample_once_its_energy_settles():
    # α = ½ halves the distance each step: E_k = ½·¼^k·D, so |E_k − E_{k−1}| = ⅜·D·¼^(k−1) < τ at a known k.
    target = torch.zeros(3, 4, 2)
    y0 = torch.ones(3, 4, 2) * torch.tensor([0.1, 1.0, 10.0]).reshape(3, 1, 1)
    distance = y0.flatten(1).pow(2).sum(1)
    tol = 1e-3
    expected = [next(k for k in range(1, 50) if 0.375 * d * 0.25 ** (k - 1) < tol) for d in distance.tolist()]
    descent = descend(quadratic(target), y0, steps=50, step_size=0.5, tolerance=tol)
    assert descent.steps.tolist() == expected and expected[0] < expected[1] < expected[2] < 50
    final = descent.iterates[-1]
    for i, k in enumerate(expected):
        assert torch.allclose(final[i], y0[i] * 0.5 ** k)  # frozen where it stopped
    assert len(descent.iterates) == max(expected) + 1  # the loop ended when the last sample stopped


def test_select_lowest_energy_picks_the_argmin_per_row():
    samples = torch.arange(3 * 2 * 2.0).reshape(3, 2, 2)
    energies = torch.tensor([[5.0, -1.0], [2.0, 0.0], [3.0, 7.0]])
    chosen, index = select_lowest_energy(samples, energies)
    assert index.tolist() == [1, 0]
    assert torch.equal(chosen, torch.stack([samples[1, 0], samples[0, 1]]))
    with pytest.raises(ValueError, match="disagree"):
        select_lowest_energy(samples, energies[:2])


def test_replay_buffer_swaps_half_the_batch_for_stored_rows_with_their_predictions():
    buffer = ReplayBuffer(size=6, fraction=0.5)
    batch = {"state": torch.zeros(4, 2, 3), "action": torch.zeros(4, 5, 2)}
    y0 = torch.zeros(4, 5, 2)
    assert buffer.mix(batch, y0)[1] is y0  # empty: nothing to replay
    for i in range(1, 4):  # 12 rows offered, the last 6 kept
        buffer.add({"state": torch.full((4, 2, 3), i), "action": torch.full((4, 5, 2), i)},
                   torch.full((4, 5, 2), 10.0 * i))
    assert len(buffer) == 6
    mixed, start = buffer.mix(batch, y0)
    assert torch.equal(start[:2], y0[:2]) and torch.equal(mixed["state"][:2], batch["state"][:2])
    replayed = mixed["action"][2:, 0, 0]
    assert set(replayed.tolist()) <= {2.0, 3.0}  # only the newest rows survive
    assert torch.equal(start[2:, 0, 0], 10 * replayed) and torch.equal(mixed["state"][2:, 0, 0], replayed)


def test_training_step_with_langevin_jitter_and_replay_updates_weights_and_step_size():
    torch.manual_seed(0)
    policy = make_policy(replay_buffer=True, langevin_std=0.1, step_size_jitter=2.0, truncate=True)
    optimizer = torch.optim.AdamW(policy.optim_groups(1e-3), lr=1e-2)
    batch = {"state": torch.randn(8, 2, 6), "action": torch.rand(8, 8, 3) * 2 - 1}
    before = policy.step_size.item()
    for _ in range(2):
        out = policy(batch)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
    assert torch.isfinite(out["loss"]) and out["loss"] == out["final_step_loss"]  # truncated: last step only
    assert len(policy.replay) == 16
    assert policy.step_size.item() != before


def test_langevin_noise_makes_sampling_stochastic_and_none_makes_it_deterministic():
    torch.manual_seed(0)
    policy = make_policy(num_inference_steps=3).eval()
    obs, noise = {"state": torch.randn(2, 2, 6)}, torch.randn(2, 8, 3)
    gen = lambda seed: torch.Generator().manual_seed(seed)  # noqa: E731
    a = policy.predict_chunk(obs, noise=noise, generator=gen(0))
    assert torch.equal(a, policy.predict_chunk(obs, noise=noise.clone(), generator=gen(1)))
    assert not torch.allclose(a, policy.predict_chunk(obs, noise=torch.randn(2, 8, 3)))
    policy.config.langevin_std = 0.5
    runs = torch.stack([policy.predict_chunk(obs, noise=noise, generator=gen(s)) for s in range(4)])
    assert runs.var(0).mean() > 1e-4
    assert torch.equal(runs[0], policy.predict_chunk(obs, noise=noise, generator=gen(0)))


# --- a policy trained on a real store --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    store = write_reach_store(tmp_path_factory.mktemp("store") / "reach.zarr", episodes=30)
    out = tmp_path_factory.mktemp("run") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: a second thread only adds contention
    try:
        summary = train(store, out, policy_name="ebt", preset="cpu", policy_overrides=TINY, progress=False,
                        cpu=True, train_overrides={"steps": 300, "batch_size": 64, "lr": 3e-3, "warmup_steps": 20,
                                                   "val_every": 100, "val_episodes": 2})
    finally:
        torch.set_num_threads(threads)
    policy, normalizer, meta = load_policy(out)
    policy.eval()
    c = policy.config
    demos = DemoStore.open(store)
    windows = WindowSampler(demos.load(["action", "state"]), demos.episode_ends,
                            episodes=np.array(meta["provenance"]["val_episodes"]), horizon=c.horizon,
                            n_obs_steps=c.n_obs_steps, obs_keys=["state"], action_key="action",
                            pad_before=c.n_obs_steps - 1, pad_after=c.n_action_steps - 1)
    held_out = windows.sample(np.arange(len(windows)))
    obs = {"state": normalizer.normalize("state", torch.from_numpy(held_out["state"]))}
    actions = normalizer.normalize("action", torch.from_numpy(held_out["action"]))
    return out, summary, policy, obs, actions


def test_energy_decreases_along_the_iterates_and_the_descent_predicts_held_out_chunks(trained):
    _, summary, policy, obs, actions = trained
    assert summary["val_loss"] < 0.05
    context = policy.encode_obs(obs)
    torch.manual_seed(1)
    descent = descend(lambda y, k: policy.energy_net(context, y, k), torch.randn_like(actions), 2,
                      policy.step_size.detach())
    energies = torch.stack(descent.energies)  # (3, B)
    assert (energies.mean(1).diff() < 0).all()  # initial_final_pred_energies_gap > 0, and each step descends
    assert (energies[-1] < energies[0]).float().mean() > 0.95
    losses = [F.mse_loss(y, actions).item() for y in descent.iterates]
    assert losses[-1] < 0.05 * losses[0]
    # Off the data manifold the energy is higher: the expert chunk ranks below random chunks, below another
    # episode's chunk, and below a corrupted copy of itself.
    expert = policy.energy(obs, actions)
    other_episode = actions.roll(len(actions) // 2, dims=0)
    corrupted = (actions + 0.3 * torch.randn_like(actions)).clamp(-1, 1)
    for off in (torch.rand_like(actions) * 2 - 1, other_episode, corrupted):
        assert (policy.energy(obs, off) > expert).float().mean() > 0.8


def test_best_of_g_returns_the_lowest_energy_candidate(trained):
    _, _, policy, obs, _ = trained
    obs = {"state": obs["state"][:5]}
    noise = torch.randn(4, 5, policy.config.horizon, policy.config.action_dim)
    singles, energies = [], []
    for g in range(4):
        singles.append(policy.predict_chunk(obs, noise=noise[g]))
        energies.append(policy.last_energy)
    policy.config.num_samples = 4
    try:
        chunk = policy.predict_chunk(obs, noise=noise)
        assert policy.sampler_name == "ebt-K2-G4" and policy.nfe == 8
        with pytest.raises(ValueError, match=r"\(G, B, H, A\)"):
            policy.predict_chunk(obs, noise=noise[0])
    finally:
        policy.config.num_samples = 1
    best = torch.stack(energies).argmin(0)
    for row in range(5):
        assert torch.allclose(chunk[row], singles[best[row]][row], atol=1e-5)
        assert torch.isclose(policy.last_energy[row], energies[best[row]][row], atol=1e-4)
    start = torch.stack([policy.energy_net(policy.encode_obs(obs), noise[g], 0) for g in range(4)])
    rows = torch.arange(5)
    torch.testing.assert_close(policy.last_relative_energy, policy.last_energy - start[best, rows],
                               atol=1e-4, rtol=1e-5)


def test_dynamic_compute_on_the_trained_policy_stops_early_where_the_full_budget_would_land(trained):
    _, _, policy, obs, _ = trained
    noise = torch.randn(obs["state"].shape[0], policy.config.horizon, policy.config.action_dim)
    policy.config.num_inference_steps = 20
    try:
        full = policy.predict_chunk(obs, noise=noise)
        assert policy.last_steps.min() == 20
        policy.config.dynamic_tolerance = 1e-2
        early = policy.predict_chunk(obs, noise=noise)
        assert policy.sampler_name == "ebt-K20-tol0.01"
    finally:
        policy.config.num_inference_steps, policy.config.dynamic_tolerance = 2, None
    assert 1 <= policy.last_steps.min() and policy.last_steps.max() < 10
    assert (early - full).abs().mean() < 0.01


def test_checkpoint_round_trip_and_the_runner_reach_goals_under_inference_mode(trained):
    out, _, policy, obs, _ = trained
    again, _, meta = load_policy(out)
    assert meta["policy"] == "ebt" and again.config == policy.config
    assert EBTConfig.from_dict(again.config.to_dict()) == again.config
    noise = torch.randn(3, policy.config.horizon, policy.config.action_dim)
    first = {"state": obs["state"][:3]}
    with torch.inference_mode():  # what a deployment loop may use; gradients w.r.t. ŷ still work
        reloaded = again.eval().predict_chunk(first, noise=noise)
    assert torch.equal(reloaded, policy.predict_chunk(first, noise=noise)) and reloaded.abs().max() <= 1

    runner = PolicyRunner.from_checkpoint(out, num_inference_steps=4, seed=0)
    assert runner.sampler == "ebt-K4" and runner.nfe == 4
    errors, starts = reach_with(runner)
    assert np.median(errors) < 0.25 * np.median(starts), (errors, starts)


# --- config ----------------------------------------------------------------------------------------------------


def test_config_presets_round_trip_and_bad_values_fail_clearly():
    paper = build_config("ebt", "paper", {"state": [39]}, 4)
    assert (paper.n_emb, paper.n_layer, paper.descent_steps, paper.num_inference_steps) == (256, 6, 2, 2)
    image = build_config("ebt", "cpu", {"image_front": [40, 40, 3], "state": [5]}, 3, crop_shape=(36, 36))
    assert EBTConfig.from_dict(image.to_dict()) == image and image.crop_shape == (36, 36)
    for bad, match in [({"loss": "l2"}, "loss must be"), ({"step_size": 0.0}, "step_size > 0"),
                       ({"num_inference_steps": 0}, "num_inference_steps"), ({"n_head": 3}, "divisible"),
                       ({"dynamic_tolerance": -1.0}, "dynamic_tolerance")]:
        with pytest.raises(ValueError, match=match):
            build_config("ebt", "cpu", {"state": [39]}, 4, **bad)


def test_step_size_is_positive_and_has_its_own_optimizer_group():
    policy = make_policy(step_size=0.25, step_size_lr_multiplier=30.0)
    assert torch.isclose(policy.step_size, torch.tensor(0.25))
    groups = policy.optim_groups(weight_decay=0.1)
    alpha_group = [g for g in groups if any(p is policy.log_step_size for p in g["params"])]
    assert len(alpha_group) == 1 and alpha_group[0]["params"] == [policy.log_step_size]
    assert alpha_group[0]["weight_decay"] == 0.0 and alpha_group[0]["lr_multiplier"] == 30.0
    in_groups = sum(p.numel() for g in groups for p in g["params"])
    assert in_groups == sum(p.numel() for p in policy.parameters())  # every parameter, once
    frozen = make_policy(learn_step_size=False)
    assert all(p is not frozen.log_step_size for g in frozen.optim_groups(0.1) for p in g["params"])
