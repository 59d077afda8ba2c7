"""Flow matching: samplers on Gaussian toys, adaptive NFE, determinism, training, checkpoints, bad input."""

import json

import numpy as np
import pytest
import torch

from robopolicy.generative.flow import (
    adaptive_sample,
    euler_sample,
    guided_euler_sample,
    interpolate,
    sample_time,
    target_velocity,
)
from robopolicy.policies import build_config, get_policy_class
from robopolicy.policies.flow import FlowConfig, FlowPolicy
from robopolicy.runtime.executors import ChunkGuide, prefix_weights
from robopolicy.train.checkpoint import load_policy, save_checkpoint
from robopolicy.train.trainer import train
from tests.robopolicy.toy_store import metrics, reach_with, write_reach_store

TINY = {"down_dims": (32, 64), "step_embed_dim": 32, "horizon": 8, "n_action_steps": 4}


# Data a ~ N(μ, s²) per dimension, noise ε ~ N(0, 1), x_t = (1-t)ε + t·a. Everything is jointly Gaussian, so
# the ideal velocity E[a - ε | x_t] and its conditional variance (AdaFlow's σ²) have closed forms.
def gaussian_velocity(mu, s):
    def v(x, t):
        t = t.reshape(-1, *[1] * (x.dim() - 1))
        var_x = (1 - t) ** 2 + t**2 * s**2
        return mu + (t * s**2 - (1 - t)) / var_x * (x - t * mu)
    return v


def gaussian_sigma(s):
    """σ(t) = sqrt(Σ_d Var(a - ε | x_t)), the spread of the true velocity around its mean: (B,)."""
    def sigma(x, t):
        t = t.reshape(-1, *[1] * (x.dim() - 1))
        var_x = (1 - t) ** 2 + t**2 * s**2
        var_u = (s**2 + 1) - (t * s**2 - (1 - t)) ** 2 / var_x
        return var_u.expand_as(x).flatten(1).sum(1).clamp(min=0).sqrt()
    return sigma


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    # These networks are tiny: intra-op threads gain nothing, and on a busy shared machine their spin-waiting
    # made a training step 20x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_policy(preset="cpu", **overrides):
    config = build_config("flow", preset, {"state": [5]}, 3, **{**TINY, **overrides})
    return get_policy_class("flow")(config).eval()


def test_interpolation_runs_from_noise_at_zero_to_data_at_one():
    noise, data = torch.randn(4, 8, 3), torch.randn(4, 8, 3)
    assert torch.equal(interpolate(noise, data, torch.zeros(4)), noise)
    assert torch.allclose(interpolate(noise, data, torch.ones(4)), data)
    t, dt = torch.full((4,), 0.3), 1e-3
    slope = (interpolate(noise, data, t + dt) - interpolate(noise, data, t)) / dt
    assert torch.allclose(slope, target_velocity(noise, data), atol=1e-2)


def test_training_time_distributions():
    gen = torch.Generator().manual_seed(0)
    uniform = sample_time(200_000, "uniform", generator=gen)
    beta = sample_time(200_000, "beta", generator=gen)
    assert abs(uniform.mean().item() - 0.5) < 5e-3
    # π0: s ~ 0.999·Beta(1.5, 1) + 0.001 with s = 1 - t: E[t] = 0.999·(1 - 0.6), P(t < 0.5) = 1 - 0.5005^1.5.
    assert abs(beta.mean().item() - 0.3996) < 5e-3
    assert abs((beta < 0.5).float().mean().item() - (1 - 0.5005**1.5)) < 5e-3
    assert beta.min() >= 0 and beta.max() <= 0.999
    with pytest.raises(ValueError, match="unknown time distribution 'logit'"):
        sample_time(4, "logit")


def test_euler_with_many_steps_reproduces_a_gaussian_and_one_step_does_not():
    mu, s = torch.tensor([0.5, -1.0, 0.0]), torch.tensor([0.3, 2.0, 1.0])
    n = 10_000
    noise = torch.randn(n, 3, generator=torch.Generator().manual_seed(0))
    field = gaussian_velocity(mu, s)
    x = euler_sample(field, noise, steps=100)
    # The exact flow of a Gaussian is the affine map ε -> μ + s·ε; Euler converges to it sample by sample,
    # at first order: twice the steps, half the error.
    exact = mu + s * noise
    error = (x - exact).abs().max()
    assert error < 0.02 * exact.abs().max()
    finer = (euler_sample(field, noise, steps=200) - exact).abs().max()
    assert finer.item() == pytest.approx(error.item() / 2, rel=0.1)
    standard_error = s / n**0.5
    assert ((x.mean(0) - mu).abs() < 4 * standard_error).all()
    assert ((x.std(0) - s).abs() < 4 * standard_error).all()
    # One step follows the velocity at t = 0, which points every sample at the mean: the spread collapses.
    assert euler_sample(field, noise, steps=1).std(0).max() < 1e-5


@pytest.mark.parametrize("steps", [1, 3, 10])
def test_euler_lands_exactly_on_a_point_target(steps):
    # Data = one chunk a*: the straight path from ε has the constant velocity a* - ε; Euler is exact on it.
    target = torch.randn(1, 8, 3)
    noise = torch.randn(5, 8, 3)
    x = euler_sample(gaussian_velocity(target, torch.zeros(())), noise, steps)
    assert torch.allclose(x, target.expand_as(x), atol=1e-5)


def test_adaptive_steps_are_few_where_the_velocity_is_certain_and_many_where_it_is_not():
    # Rows 0-3 come from a near-point distribution (σ = s << η), rows 4-7 from a wide one (σ >= 1 > η).
    b, d = 8, 1
    mu = torch.linspace(-0.5, 0.5, b)[:, None].expand(b, d)
    s = torch.tensor([0.001] * 4 + [1.0] * 4)[:, None].expand(b, d)
    noise = torch.randn(b, d, generator=torch.Generator().manual_seed(1))
    x, nfe = adaptive_sample(gaussian_velocity(mu, s), gaussian_sigma(s), noise, eta=0.1, max_steps=20)
    assert nfe.dtype == torch.long and nfe.shape == (b,)
    assert nfe[:4].tolist() == [1, 1, 1, 1]
    # σ(t) >= 1 all along the wide rows' path, so h = 0.1/σ stays near 1/N: about 13 of at most 20 steps.
    assert (nfe[4:] >= 10).all() and (nfe[4:] <= 20).all(), nfe
    assert torch.allclose(x[:4], mu[:4], atol=0.01)
    exact = mu[4:] + noise[4:]
    assert ((x[4:] - exact).abs() < 0.1 * (1 + exact.abs())).all()  # the wide rows follow their exact flow
    # The extremes: a certain field always takes one step, an uncertain one always the cap.
    ones = lambda x, t: torch.full((x.shape[0],), 1e6)  # noqa: E731
    _, nfe_cap = adaptive_sample(gaussian_velocity(mu, s), ones, noise, max_steps=7)
    assert nfe_cap.tolist() == [7] * b


def test_sampling_is_determined_by_the_initial_noise():
    obs = {"state": torch.randn(2, 2, 5)}
    for sampler in ("euler", "adaptive"):
        policy = make_policy(sampler=sampler, num_inference_steps=4)
        noise = torch.randn(2, 8, 3)
        a = policy.predict_chunk(obs, noise=noise)
        b = policy.predict_chunk(obs, noise=noise.clone(), generator=torch.Generator().manual_seed(3))
        c = policy.predict_chunk(obs, noise=torch.randn(2, 8, 3))
        assert torch.equal(a, b)
        assert not torch.allclose(a, c)
        assert a.shape == (2, 8, 3) and a.abs().max() <= 1.0
        g = lambda: torch.Generator().manual_seed(11)  # noqa: E731
        assert torch.equal(policy.predict_chunk(obs, generator=g()), policy.predict_chunk(obs, generator=g()))
    assert make_policy(num_inference_steps=4).sampler_name == "euler-4"


def test_policy_adaptive_nfe_follows_its_sigma_head():
    policy = make_policy(sampler="adaptive", num_inference_steps=6)
    last = policy.sigma_head.mlp[-1]
    obs = {"state": torch.randn(3, 2, 5)}
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(np.log(1e-3))  # σ << η: the velocity is certain
    policy.predict_chunk(obs)
    assert policy.last_nfe.tolist() == [1, 1, 1] and policy.nfe == 1
    with torch.no_grad():
        last.bias.fill_(np.log(10.0))  # σ >> η: the smallest step, 1/N
    policy.predict_chunk(obs)
    assert policy.last_nfe.tolist() == [6, 6, 6]
    assert policy.nfe == pytest.approx(3.5)  # the running mean over both chunks
    assert policy.sampler_name == "adaptive"


def test_transformer_backbone_trains_a_step_and_samples():
    policy = make_policy("cpu-transformer", n_layer=1, n_emb=32)
    policy.train()
    batch = {"state": torch.randn(4, 2, 5), "action": torch.rand(4, 8, 3) * 2 - 1}
    losses = policy(batch)
    losses["loss"].backward()
    assert {"loss", "flow_loss", "sigma_nll"} <= set(losses)
    assert policy.denoiser.head.weight.grad.abs().sum() > 0
    groups = policy.optim_groups(0.1)
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0] and len(groups[1]["params"]) > 0
    assert policy.eval().predict_chunk({"state": torch.randn(1, 2, 5)}).shape == (1, 8, 3)


def test_sigma_head_learns_from_the_detached_error_only():
    policy = make_policy().train()
    batch = {"state": torch.randn(4, 2, 5), "action": torch.rand(4, 8, 3) * 2 - 1}
    torch.manual_seed(0)
    policy.compute_loss(batch)["sigma_nll"].backward()
    assert all(p.grad is None for p in policy.denoiser.parameters())
    assert all(p.grad is not None for p in policy.sigma_head.parameters())


def test_bad_configs_and_inputs_fail_clearly():
    with pytest.raises(ValueError, match="flow sampler must be one of"):
        make_policy(sampler="ddim")
    with pytest.raises(ValueError, match="adaptive sampler needs the σ head"):
        make_policy(sampler="adaptive", sigma_head=False)
    with pytest.raises(ValueError, match="time_distribution must be one of"):
        make_policy(time_distribution="logit")
    with pytest.raises(ValueError, match="num_inference_steps >= 1"):
        make_policy(num_inference_steps=0)
    with pytest.raises(ValueError, match=r"noise must be \(B, H, A\)"):
        make_policy().predict_chunk({"state": torch.randn(1, 2, 5)}, noise=torch.randn(1, 16, 3))
    with pytest.raises(RuntimeError, match="without a σ head"):
        make_policy(sigma_head=False).log_sigma(torch.zeros(1, 8, 3), torch.zeros(1), torch.zeros(1, 10))


def test_presets_mirror_diffusion_policy_networks_and_training():
    from robopolicy.policies.diffusion import PRESETS as DIFFUSION

    for name, entry in FlowPolicy.presets.items():
        sampling = ("sampler", "num_inference_steps")
        ours = {k: v for k, v in entry["policy"].items() if k not in sampling}
        theirs = {k: v for k, v in DIFFUSION[name]["policy"].items() if k not in sampling}
        assert ours == theirs
        assert entry["train"] == DIFFUSION[name]["train"] and entry["image"] == DIFFUSION[name]["image"]
        assert entry["policy"]["sampler"] == "euler" and entry["policy"]["num_inference_steps"] == 10
    assert DIFFUSION["cpu"]["policy"]["sampler"] == "ddim"  # building ours did not edit theirs


def test_rtc_guidance_off_is_plain_euler_and_pulls_the_prefix_harder_as_beta_grows():
    """RTC's sampler on the exact Gaussian field: β = 0 or zero weights give Euler's result to the bit, and the
    frozen prefix lands nearer the running chunk's actions as the guidance cap β grows."""
    mu, s = torch.tensor(0.3), torch.tensor(0.5)
    velocity = gaussian_velocity(mu, s)
    noise = torch.randn(64, 8, 2, generator=torch.Generator().manual_seed(0))
    target = torch.full((64, 8, 2), -0.8)  # the running chunk: far out in the tail of N(0.3, 0.5²)
    weights = torch.from_numpy(prefix_weights(3, 6, 8))
    plain = euler_sample(velocity, noise, 5)
    assert torch.equal(guided_euler_sample(velocity, noise, 5, target, weights, max_guidance=0.0), plain)
    assert torch.equal(guided_euler_sample(velocity, noise, 5, target, torch.zeros(8), max_guidance=5.0), plain)
    gaps = []
    for beta in (0.0, 0.5, 1.0, 2.0, 4.0):  # c(t) on 5 steps is at most 4.25 after t = 0, where the field's
        # Jacobian ∂x̂_1/∂x_t is 0: a larger β changes nothing here
        x = guided_euler_sample(velocity, noise, 5, target, weights, max_guidance=beta)
        gaps.append((x[:, :3] - target[:, :3]).abs().mean().item())
        assert torch.allclose(x[:, 6:], plain[:, 6:], atol=1e-6)  # unweighted indices are untouched
    assert all(a > b for a, b in zip(gaps, gaps[1:])), gaps
    assert gaps[-1] < 0.25 * gaps[0], gaps


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    store = write_reach_store(tmp_path_factory.mktemp("store") / "reach.zarr", episodes=30)
    out = tmp_path_factory.mktemp("run") / "run"
    overrides = {"steps": 300, "batch_size": 64, "lr": 2e-3, "warmup_steps": 20, "val_every": 100,
                 "val_episodes": 2}
    summary = train(store, out, policy_name="flow", preset="cpu", policy_overrides=TINY,
                    train_overrides=overrides, progress=False, cpu=True)
    return out, summary


def test_flow_policy_trains_on_a_real_store_and_its_loss_falls(trained):
    out, summary = trained
    assert summary["steps"] == 300
    train_loss, val_loss = metrics(out, "train/loss"), metrics(out, "val/loss")
    assert np.mean(train_loss[-5:]) < 0.5 * np.mean(train_loss[:3])
    assert len(val_loss) == 3 and val_loss[-1] < val_loss[0]
    assert json.loads((out / "latest" / "config.json").read_text())["policy"] == "flow"


def test_trained_flow_policy_reaches_the_goal_through_the_runner(trained):
    from robopolicy.runtime import PolicyRunner

    out, _ = trained
    runner = PolicyRunner.from_checkpoint(out, seed=0, num_inference_steps=4)
    assert runner.sampler == "euler-4" and runner.nfe == 4
    errors, starts = reach_with(runner)
    assert np.median(errors) < 0.25 * np.median(starts), (errors, starts)


def test_checkpoint_round_trip_gives_identical_chunks(trained, tmp_path):
    out, _ = trained
    policy, normalizer, meta = load_policy(out, expect_policy="flow")
    assert isinstance(policy.config, FlowConfig) and policy.config.down_dims == (32, 64)
    save_checkpoint(tmp_path / "copy", policy, normalizer, {k: meta[k] for k in ("action_key", "obs_keys")})
    again, _, _ = load_policy(tmp_path / "copy")
    assert again.config == policy.config
    policy.eval()
    again.eval()
    obs = {"state": torch.rand(3, 2, 4) * 2 - 1}
    for sampler in ("euler", "adaptive"):
        policy.config.sampler = again.config.sampler = sampler
        noise = torch.randn(3, 8, 2)
        assert torch.equal(policy.predict_chunk(obs, noise=noise), again.predict_chunk(obs, noise=noise))
    stored = json.loads((out / "latest" / "config.json").read_text())["policy_config"]
    fresh = FlowPolicy(FlowConfig.from_dict(stored)).eval()
    assert not torch.allclose(fresh.predict_chunk(obs, noise=noise), policy.predict_chunk(obs, noise=noise))


def test_rtc_through_the_runner_inpaints_a_trained_policys_chunk(trained):
    """The runner takes an RTC guide in action units: the guided chunk starts where the running one is and
    keeps the policy's own plan where the weights are 0."""
    from robopolicy.runtime import PolicyRunner

    out, _ = trained
    runner = PolicyRunner.from_checkpoint(out, seed=0, num_inference_steps=5)
    frames = [{"state": np.array([0.5, -0.5, -0.5, 0.5], np.float32)}] * 2
    free = runner.predict_from(frames)
    running = free + np.array([0.3, -0.3], np.float32)  # a plan that disagrees by 0.3 per axis
    weights = prefix_weights(3, 6, 8)
    runner.reset(0)
    guided = runner.predict_from(frames, ChunkGuide(running, weights, max_guidance=5.0))
    # The pull acts through the field's Jacobian ∂x̂_1/∂x_t, small for a policy this sure of its chunk: 0.30 ->
    # 0.21 here. The unweighted tail moves only by what the network couples across the chunk.
    assert np.abs(guided[:3] - running[:3]).mean() < 0.8 * np.abs(free[:3] - running[:3]).mean()
    np.testing.assert_allclose(guided[6:], free[6:], atol=0.05)
