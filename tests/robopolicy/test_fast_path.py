"""The inference fast path (FastUnet1D, precomputed schedules) and the training conv backward are the same math.

Tolerances: fp32 fast path vs the eager module 1e-4 relative (GEMM vs oneDNN conv summation order: ~1e-6 seen);
bf16 weights 3e-2 relative on ε (8-bit mantissa at each GEMM input, and oneDNN's output: ~1e-2 seen).
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from robopolicy.generative.diffusion import make_scheduler, reverse_process, sample, sample_steps
from robopolicy.nn.fast_unet import FastUnet1D, compile_step
from robopolicy.nn.unet1d import ConditionalUnet1D, Conv1d, _ConvFastWeightGrad, weight_grad_form
from robopolicy.policies import build_config, get_policy_class
from robopolicy.runtime.runner import PolicyRunner
from robopolicy.store import Normalizer
from robopolicy.train.checkpoint import save_checkpoint


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def trained_like(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Perturbs a fresh init: its near-zero outputs would hide errors."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return module


def small_policy(**overrides):
    config = build_config("diffusion", "cpu", {"state": [5]}, 3, down_dims=(32, 64, 128), step_embed_dim=32,
                          **overrides)
    torch.manual_seed(0)
    return trained_like(get_policy_class("diffusion")(config)).eval()


@pytest.mark.parametrize("down_dims,horizon", [((32, 64, 128), 16), ((16, 32), 8)])
def test_fast_unet_matches_eager_module(down_dims, horizon):
    torch.manual_seed(0)
    unet = trained_like(ConditionalUnet1D(3, 10, down_dims, kernel_size=5, n_groups=8, step_embed_dim=32)).eval()
    x, cond = torch.randn(4, horizon, 3), torch.randn(4, 10)
    with torch.no_grad():
        for t in [torch.tensor([7]), torch.tensor([0, 31, 64, 99])]:  # one shared step, and one per row
            ref = unet(x, t, cond)
            assert rel(FastUnet1D(unet, "fp32", horizon=horizon)(x, t, cond), ref) < 1e-4
            bf16 = FastUnet1D(unet, "bf16", horizon=horizon)(x, t, cond)
            assert 1e-5 < rel(bf16, ref) < 3e-2  # really bf16, and still close
            assert rel(FastUnet1D(unet, "fp32", horizon=horizon, pack=False)(x, t, cond), ref) < 1e-4
            # oneDNN's GEMMs, where robopolicy's stream_linear kernel does not run
            assert rel(FastUnet1D(unet, "fp32", horizon=horizon, stream=False)(x, t, cond), ref) < 1e-4
            assert 1e-5 < rel(FastUnet1D(unet, "bf16", horizon=horizon, stream=False)(x, t, cond), ref) < 3e-2


def test_fast_unet_rejects_what_it_cannot_run():
    unet = ConditionalUnet1D(2, 4, (8, 16), step_embed_dim=8)
    with pytest.raises(ValueError, match="precision"):
        FastUnet1D(unet, "fp16")
    with pytest.raises(ValueError, match="divisible by 2"):
        FastUnet1D(unet)(torch.randn(1, 7, 2), torch.tensor([1]), torch.randn(1, 4))


@pytest.mark.parametrize("sampler,steps", [("ddim", 10), ("ddpm", 100), ("ddpm", 10), ("ddim", 100)])
def test_precomputed_schedule_equals_diffusers_step(sampler, steps):
    weight = torch.randn(2, 2)

    def denoise(x, t):
        return torch.tanh(x @ weight) * (1 + t.float() / 50)

    noise = torch.randn(3, 16, 2)
    ref = sample(denoise, make_scheduler(sampler), noise, steps, torch.Generator().manual_seed(1))
    process = reverse_process(make_scheduler(sampler), steps)
    out = sample_steps(lambda x, i: denoise(x, process.timesteps[i].reshape(1)), process, noise,
                       torch.Generator().manual_seed(1))
    assert torch.equal(out, ref)  # same float32 arithmetic in the same order, same noise draws
    assert len(process.timesteps) == steps


def test_precomputed_schedule_rejects_other_schedulers():
    with pytest.raises(ValueError, match="ε-prediction"):
        reverse_process(make_scheduler("ddpm", prediction_type="sample"), 10)


@pytest.mark.parametrize("sampler,steps", [("ddim", 10), ("ddpm", 20)])
def test_policy_fast_chunk_matches_eager(sampler, steps):
    policy = small_policy(sampler=sampler, num_inference_steps=steps)
    obs = {"state": torch.randn(2, 2, 5)}
    noise = torch.randn(2, 16, 3)
    eager = policy.set_inference(fast=False).predict_chunk(obs, noise=noise, generator=torch.Generator().manual_seed(3))
    fast = policy.set_inference().predict_chunk(obs, noise=noise, generator=torch.Generator().manual_seed(3))
    assert policy.fast_inference and rel(fast, eager) < 1e-4
    bf16 = policy.set_inference(precision="bf16").predict_chunk(obs, noise=noise,
                                                                generator=torch.Generator().manual_seed(3))
    assert 0 < (bf16 - eager).abs().max() < 0.1


def small_flow(**overrides):
    config = build_config("flow", "cpu", {"state": [5]}, 3, down_dims=(32, 64, 128), step_embed_dim=32,
                          **overrides)
    torch.manual_seed(0)
    return trained_like(get_policy_class("flow")(config)).eval()


@pytest.mark.parametrize("steps", [1, 10])
def test_flow_euler_fast_chunk_matches_eager(steps):
    policy = small_flow(num_inference_steps=steps)
    obs, noise = {"state": torch.randn(2, 2, 5)}, torch.randn(2, 16, 3)
    eager = policy.set_inference(fast=False).predict_chunk(obs, noise=noise)
    fast = policy.set_inference().predict_chunk(obs, noise=noise)
    assert policy._fast_view() is not None and rel(fast, eager) < 1e-4
    bf16 = policy.set_inference(precision="bf16").predict_chunk(obs, noise=noise)
    assert 0 < (bf16 - eager).abs().max() < 0.1


def test_a_subclass_with_its_own_denoise_runs_eager():
    """The view reproduces the declared `denoise`; an override that changes the output must be what runs."""
    flow_class = get_policy_class("flow")

    class Shifted(flow_class):
        name, config_class = "flow-shifted", flow_class.config_class

        def denoise(self, x_t, t, cond):
            return super().denoise(x_t, t, cond) + 1.0

    policy = Shifted(small_flow().config).eval()
    obs, noise = {"state": torch.randn(1, 2, 5)}, torch.zeros(1, 16, 3)
    assert policy.set_inference()._fast_view() is None
    plain = flow_class(policy.config).eval()
    plain.load_state_dict(policy.state_dict())
    assert rel(policy.predict_chunk(obs, noise=noise), plain.predict_chunk(obs, noise=noise)) > 0.01


def test_fast_view_follows_weight_changes():
    """Optimizer steps and EMA-style `.data` copies both reach the fast path: it never serves stale weights."""
    policy = small_policy(num_inference_steps=5)
    obs, noise = {"state": torch.randn(1, 2, 5)}, torch.randn(1, 16, 3)

    def both():
        # Flip the attribute rather than call set_inference, which would drop the cached view: here only the
        # view's own staleness check may rebuild it.
        policy.fast_inference = False
        eager = policy.predict_chunk(obs, noise=noise)
        policy.fast_inference = True
        return policy.predict_chunk(obs, noise=noise), eager

    policy.set_inference()
    before = policy.predict_chunk(obs, noise=noise)
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.5)
    policy.train()
    policy.compute_loss({"state": torch.randn(8, 2, 5), "action": torch.rand(8, 16, 3)})["loss"].backward()
    optimizer.step()
    policy.eval()
    fast, eager = both()
    assert rel(fast, eager) < 1e-4 and (fast - before).abs().max() > 1e-3
    with torch.no_grad():
        for p in policy.denoiser.parameters():
            p.data.copy_(p.data * 0.9)  # what diffusers' EMAModel.copy_to does: bypasses the version counter
    fast, eager = both()
    assert rel(fast, eager) < 1e-4


def test_set_inference_validates_and_transformer_stays_eager():
    policy = small_policy()
    with pytest.raises(ValueError, match="precision"):
        policy.set_inference(precision="int8")
    with pytest.raises(ValueError, match="needs fast=True"):
        policy.set_inference(fast=False, precision="bf16")
    transformer = get_policy_class("diffusion")(build_config("diffusion", "cpu-transformer", {"state": [5]}, 3,
                                                             n_layer=1, n_emb=32))
    assert transformer.set_inference()._fast_view() is None  # the fast view is a U-Net's
    assert transformer.predict_chunk({"state": torch.randn(1, 2, 5)}).shape == (1, 16, 3)


def test_runner_fast_and_bf16_from_checkpoint(tmp_path):
    policy = small_policy(num_inference_steps=4)
    stats = {"state": {"min": -np.ones(5), "max": np.ones(5), "mean": np.zeros(5), "std": np.ones(5)},
             "action": {"min": -2 * np.ones(3), "max": 2 * np.ones(3), "mean": np.zeros(3), "std": np.ones(3)}}
    path = save_checkpoint(tmp_path / "ckpt", policy, Normalizer.from_store_stats(stats),
                           {"action_key": "action", "obs_keys": ["state"]})
    obs = {"state": np.linspace(-0.5, 0.5, 5).astype(np.float32)}
    chunks = {}
    for name, kwargs in {"eager": dict(fast=False), "fast": {}, "bf16": dict(precision="bf16")}.items():
        runner = PolicyRunner.from_checkpoint(path, seed=7, **kwargs)
        runner.act(obs)
        chunks[name] = runner.predict_chunk()
    assert np.abs(chunks["fast"] - chunks["eager"]).max() < 1e-4
    assert 0 < np.abs(chunks["bf16"] - chunks["eager"]).max() < 0.2  # actions span [-2, 2]
    with pytest.raises(ValueError, match="precision"):
        PolicyRunner.from_checkpoint(path, precision="fp8")


def test_fast_weight_gradient_matches_conv_backward():
    conv = Conv1d(6, 4, 5, padding=2).double()
    x = torch.randn(3, 6, 4, dtype=torch.double, requires_grad=True)
    for form in ("conv", "gemm"):
        assert torch.autograd.gradcheck(lambda x, w, b: _ConvFastWeightGrad.apply(x, w, b, form),
                                        (x, conv.weight, conv.bias))

    grads = _unet_gradients()
    for ours, stock in zip(grads(True), grads(False)):
        assert rel(ours, stock) < 1e-5


def _unet_gradients():
    """grads(fast, autocast) -> a small U-Net's parameter gradients on fixed data, with our weight-gradient forms
    or oneDNN's backward, the forward optionally under bf16 autocast and the backward outside it."""
    torch.manual_seed(0)
    unet = ConditionalUnet1D(3, 10, (128, 128, 128), step_embed_dim=16)
    x, t, cond = torch.randn(64, 16, 3), torch.randint(0, 100, (64,)), torch.randn(64, 10)
    # B=64 at L=16, 8, 4: stock, conv and gemm in fp32; conv everywhere in bf16.
    assert [weight_grad_form((64, 128, length), (128, 128, 5), torch.float32) for length in (16, 8, 4)] == \
        ["stock", "conv", "gemm"]

    def grads(fast: bool, autocast: bool = False) -> list[torch.Tensor]:
        Conv1d.fast_weight_grad = fast
        try:
            unet.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                out = unet(x, t, cond)
            F.mse_loss(out.float(), x).backward()
        finally:
            Conv1d.fast_weight_grad = True
        return [p.grad.clone() for p in unet.parameters()]
    return grads


def test_fast_weight_gradient_under_bf16_autocast():
    """Mixed-precision training: forward under autocast, backward outside it (as the trainer runs it). The
    gradients come back in fp32, within bf16 rounding of the fp32 ones, and agree with oneDNN's bf16 backward."""
    conv = Conv1d(128, 128, 5, padding=2)
    x32 = torch.randn(3, 128, 4, requires_grad=True)  # an fp32 input, e.g. a norm's output
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(x32)
    assert type(out.grad_fn).__name__ == "_ConvFastWeightGradBackward"
    out.float().square().sum().backward()
    assert x32.grad.dtype == conv.weight.grad.dtype == torch.float32

    grads = _unet_gradients()
    reference, ours, stock = grads(True, False), grads(True, True), grads(False, True)
    assert all(g.dtype == torch.float32 for g in ours)
    errors = [rel(o, r) for o, r in zip(ours, reference)]
    # bf16 rounding (8 bits of mantissa) through six residual blocks, not fp32 agreement: the autocast ran.
    assert 1e-3 < np.median(errors) < 0.05 and max(errors) < 0.15
    assert max(rel(o, s) for o, s in zip(ours, stock)) < 1e-2


@pytest.mark.slow
def test_compiled_fast_path_matches_eager_and_follows_new_weights():
    """Inductor-compiled fast step (frozen weights, GEMM autotuning; ~1-2 min of compilation, hence slow).

    After the weights change, the rebuilt step must run the new weights: every compiled step module shares
    one `forward`, so a guard filter that dropped the module's identity would silently reuse the old ones."""
    policy = small_policy(num_inference_steps=3)
    obs, noise = {"state": torch.randn(1, 2, 5)}, torch.randn(1, 16, 3)
    eager = policy.set_inference(fast=False).predict_chunk(obs, noise=noise)
    compiled = policy.set_inference(compile=True).predict_chunk(obs, noise=noise)
    assert rel(compiled, eager) < 1e-4
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    eager = policy.set_inference(fast=False).predict_chunk(obs, noise=noise)
    assert rel(eager, compiled) > 0.05  # the new weights do change the chunk
    assert rel(policy.set_inference(compile=True).predict_chunk(obs, noise=noise), eager) < 1e-4


def test_compile_step_refuses_a_packed_view():
    with pytest.raises(ValueError, match="pack=False"):
        compile_step(FastUnet1D(small_policy().denoiser, "fp32"))


def test_a_policy_that_has_run_the_fast_path_can_be_copied():
    """The packed views cannot be copied; a deep copy (EMA, DSRL, GPC keep copies) builds its own and agrees."""
    import copy

    policy = small_policy(num_inference_steps=5)
    obs, noise = {"state": torch.randn(1, 2, 5)}, torch.randn(1, 16, 3)
    before = policy.predict_chunk(obs, noise=noise)
    twin = copy.deepcopy(policy)
    assert twin._fast_views == {} and policy._fast_views
    torch.testing.assert_close(twin.predict_chunk(obs, noise=noise), before)
