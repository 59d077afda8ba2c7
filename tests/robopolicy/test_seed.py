"""SeedPolicy / SEGA: the gate, resets, the carried state (inference and training), the stateful sampler,
training through the real trainer on a real zarr store, checkpoints and resume (methods.md §1, tests 1-6)."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from robopolicy.nn.sega import SEGA
from robopolicy.policies import build_config, get_policy_class
from robopolicy.policies.seed import SeedConfig, SeedPolicy
from robopolicy.runtime import PolicyRunner
from robopolicy.store import DemoStore, WindowSampler
from robopolicy.train.checkpoint import load_policy
from robopolicy.train.trainer import train
from tests.robopolicy.toy_store import write_reach_store

TINY = dict(down_dims=(32, 64), step_embed_dim=32, horizon=8, n_obs_steps=2, n_action_steps=4, num_state_tokens=8,
            state_dim=32, sega_depth=2, sega_heads=4, num_inference_steps=5)
TRAIN = dict(batch_size=8, warmup_steps=2, val_every=10, val_episodes=2, save_every=1000, log_every=5)


def make_policy(**overrides) -> SeedPolicy:
    torch.manual_seed(0)
    return get_policy_class("seed")(build_config("seed", "cpu", {"state": [4]}, 2, **{**TINY, **overrides}))


def toy_batch(batch_size: int = 4, **extra) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {"state": torch.randn(batch_size, 2, 4, generator=g),
            "action": torch.rand(batch_size, 8, 2, generator=g) * 2 - 1, **extra}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Networks this small run faster on one thread, and much faster on a machine whose cores are shared.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reach_store(tmp_path_factory):
    return write_reach_store(tmp_path_factory.mktemp("store") / "reach.zarr", episodes=10)


@pytest.fixture(scope="module")
def trained(reach_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    summary = train(reach_store, out, policy_name="seed", preset="cpu", policy_overrides=TINY, progress=False,
                    cpu=True, train_overrides={**TRAIN, "steps": 20, "lr": 2e-3})
    return out, summary


def test_gate_is_a_per_token_fraction_and_one_on_reset_rows():
    torch.manual_seed(0)
    sega = SEGA(32, num_state_tokens=8, depth=2, heads=4)
    with torch.no_grad():
        sega.pos.normal_()  # a non-zero P, so that the "- P" in the update is checked
    obs, state = torch.randn(4, 2, 32), torch.randn(4, 8, 32)
    reset = torch.tensor([True, False, False, True])
    enhanced, new_state, gate = sega(obs, state, reset)
    assert enhanced.shape == (4, 2, 32) and new_state.shape == (4, 8, 32) and gate.shape == (4, 8, 1)
    assert torch.all(gate[reset] == 1)
    carried_gate = gate[~reset]
    assert torch.all((carried_gate > 0) & (carried_gate < 1)) and carried_gate.std() > 1e-4  # one gate per token

    # Carried rows: S_t = g·S~ + (1-g)·X - P with X = S_{t-1} + P and g from the pre-softmax logits.
    x = state + sega.pos
    updated, _, logits = sega.updater(x, obs)
    assert logits.shape == (2, 4, 4, 8, 2)  # (layers, B, heads, N_s, To)
    g = torch.sigmoid(logits.mean(dim=(0, 2, 4))).unsqueeze(-1)
    torch.testing.assert_close(new_state[~reset], (g * updated + (1 - g) * x - sega.pos)[~reset])

    # g ≡ 1 (first call): the state is Updater(X) - P, X the initial state + P; reset rows are first calls.
    _, first_state, first_gate = sega(obs)
    assert torch.all(first_gate == 1)
    updated, _, _ = sega.updater(sega.initial(4) + sega.pos, obs)
    torch.testing.assert_close(first_state, updated - sega.pos)
    torch.testing.assert_close(new_state[reset], first_state[reset])


def test_cross_attention_logits_are_taken_before_the_softmax():
    torch.manual_seed(0)
    attn = SEGA(8, 3, depth=1, heads=2).updater.state_blocks[0].cross_attn
    x, memory = torch.randn(1, 3, 8), torch.randn(1, 5, 8)
    out, logits = attn(x, memory)
    q = attn.q(x).reshape(1, 3, 2, 4).transpose(1, 2)
    k, v = attn.kv(memory).reshape(1, 5, 2, 2, 4).permute(2, 0, 3, 1, 4)
    torch.testing.assert_close(logits, q @ k.transpose(-2, -1) / 2.0)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
    torch.testing.assert_close(out, attn.proj(expected))


def test_reset_rows_ignore_the_incoming_training_state():
    policy = make_policy()
    batch = toy_batch()
    random_state, initial = torch.randn(4, 8, 32), policy.sega.initial(4).detach().clone()

    def step(incoming, is_reset):
        policy.train_state = incoming.clone()
        torch.manual_seed(1)
        loss = policy.compute_loss({**batch, "is_reset": is_reset})["loss"]
        return loss, policy.train_state

    every_row = torch.ones(4, dtype=torch.bool)
    assert torch.equal(step(random_state, every_row)[0], step(initial, every_row)[0])
    mixed = torch.tensor([True, False, True, False])
    (loss_a, state_a), (loss_b, state_b) = step(random_state, mixed), step(initial, mixed)
    assert torch.equal(state_a[mixed], state_b[mixed])
    assert not torch.allclose(state_a[~mixed], state_b[~mixed]) and loss_a != loss_b  # carried rows do see it


def test_no_gradient_crosses_batches():
    policy = make_policy()
    policy.compute_loss(toy_batch(is_reset=torch.ones(4, dtype=torch.bool)))["loss"].backward()
    previous = policy.train_state  # S_{t-1} for the next batch
    assert not previous.requires_grad and previous.grad_fn is None
    policy.zero_grad()
    # Were S_{t-1} still attached, this backward would run into the previous batch's freed graph.
    policy.compute_loss(toy_batch(is_reset=torch.zeros(4, dtype=torch.bool)))["loss"].backward()
    assert previous.grad is None
    grad = policy.sega.initial_state.grad  # no row restarted: the initial state played no part in this batch
    assert grad is None or not grad.any()
    assert policy.sega.pos.grad is not None and policy.sega.pos.grad.abs().sum() > 0


def test_validation_batches_start_fresh_and_leave_the_training_state_alone():
    policy = make_policy()
    policy.compute_loss(toy_batch(is_reset=torch.ones(4, dtype=torch.bool)))
    carried = policy.train_state
    torch.manual_seed(1)
    no_flags = policy.compute_loss(toy_batch(batch_size=4))["loss"]
    assert policy.train_state is carried
    policy.train_state = torch.randn(4, 8, 32)
    torch.manual_seed(1)
    all_reset = policy.compute_loss(toy_batch(is_reset=torch.ones(4, dtype=torch.bool)))["loss"]
    assert torch.equal(no_flags, all_reset)
    with pytest.raises(ValueError, match="fixed batch size"):
        policy.compute_loss(toy_batch(batch_size=3, is_reset=torch.zeros(3, dtype=torch.bool)))


def test_state_carries_history_beyond_the_observation_window(trained):
    policy, _, _ = load_policy(trained[0])
    policy.eval()
    last, noise = {"state": torch.randn(1, 2, 4)}, torch.randn(1, 8, 2)

    def chunk_after(history):
        policy.reset()
        for frames in history:
            policy.predict_chunk({"state": frames})
        return policy.predict_chunk(last, noise=noise)

    a = chunk_after([torch.randn(1, 2, 4) for _ in range(3)])
    b = chunk_after([torch.randn(1, 2, 4) for _ in range(3)])
    assert (a - b).abs().max() > 1e-3  # same last To frames, same noise: only the state differs

    policy.reset()
    from_none = policy.predict_chunk(last, noise=noise)
    policy.state = policy.sega.initial(1).detach().clone()
    from_initial = policy.predict_chunk(last, noise=noise)
    assert torch.equal(from_none, from_initial)


def test_reset_mask_restarts_only_the_flagged_rows():
    policy = make_policy().eval()
    frames = [{"state": torch.randn(2, 2, 4)} for _ in range(3)]
    policy.predict_chunk(frames[0])
    policy.predict_chunk(frames[1])
    carried = policy.state.clone()
    policy.reset(torch.tensor([True, False]))
    policy.predict_chunk(frames[2])
    masked = policy.state
    policy.reset()
    policy.predict_chunk(frames[2])
    fresh = policy.state
    policy.state = carried
    policy.predict_chunk(frames[2])
    continued = policy.state
    torch.testing.assert_close(masked[0], fresh[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(masked[1], continued[1], rtol=0, atol=1e-6)
    assert (fresh[1] - continued[1]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="call reset"):
        policy.predict_chunk({"state": torch.randn(3, 2, 4)})
    with pytest.raises(ValueError, match="mask has 3 rows"):
        policy.reset(torch.ones(3, dtype=torch.bool))


def test_state_stays_the_same_size_over_a_1000_step_rollout(trained):
    runner = PolicyRunner.from_checkpoint(trained[0], num_inference_steps=1, seed=0)  # the state is under test
    policy = runner.policy
    shapes, calls, previous = set(), 0, None
    rng = np.random.default_rng(0)
    for _ in range(1000):
        runner.act({"state": rng.uniform(-1, 1, 4).astype(np.float32)})
        if policy.state is not previous:  # a new chunk was planned
            calls, previous = calls + 1, policy.state
            shapes.add(tuple(policy.state.shape))
            assert policy.state.grad_fn is None and not policy.state.requires_grad
    assert calls == 1000 // 4  # one state update per executed chunk (Ta = 4)
    assert shapes == {(1, 8, 32)}
    runner.reset()
    assert policy.state is None


def sampler_windows(store_path: str) -> WindowSampler:
    store = DemoStore.open(store_path)
    return WindowSampler(store.load(["state", "action"]), store.episode_ends, horizon=8, n_obs_steps=2,
                         obs_keys=["state"], action_key="action", pad_before=1, pad_after=3)


def test_sampler_walks_every_slot_through_episodes_chunk_by_chunk(reach_store):
    windows = sampler_windows(reach_store)
    episode = windows.window_episode
    first = {e: np.flatnonzero(episode == e).min() for e in np.unique(episode)}
    last = {e: np.flatnonzero(episode == e).max() for e in np.unique(episode)}
    policy, slots, steps, ta, interval = make_policy(reset_interval=5), 6, 150, 4, 5
    batches = [policy.batch_indices(len(windows), episode, slots, s, np.random.default_rng(s)) for s in range(steps)]
    idx = np.stack([i for i, _ in batches])
    reset = np.stack([extra["is_reset"] for _, extra in batches])
    assert idx.shape == reset.shape == (steps, slots) and reset.dtype == bool
    assert reset[0].all() and all(idx[0, b] - first[episode[idx[0, b]]] < ta for b in range(slots))

    chains, mid_chain_resets = 0, 0
    for b in range(slots):
        since_start = 0
        for t in range(1, steps):
            prev, cur = idx[t - 1, b], idx[t, b]
            if cur == prev + ta and episode[cur] == episode[prev]:  # the chunk executed after the previous one
                since_start += 1
                assert reset[t, b] == (since_start % interval == 0)
                mid_chain_resets += int(reset[t, b])
            else:  # a new chain: the previous one ran to its episode's end, the new one starts at its beginning
                assert reset[t, b]
                assert prev + ta > last[episode[prev]] and cur - first[episode[cur]] < ta
                since_start, chains = 0, chains + 1
    assert chains > 2 * slots and mid_chain_resets > slots
    assert len(np.unique(episode[idx])) == len(first)  # every training episode gets walked

    # A pure function of the step: a fresh policy asked for step 97 alone, with another rng, agrees.
    again, extra = make_policy(reset_interval=5).batch_indices(len(windows), episode, slots, 97,
                                                                np.random.default_rng(12345))
    assert np.array_equal(again, idx[97]) and np.array_equal(extra["is_reset"], reset[97])
    other, _ = make_policy(reset_interval=5, walk_seed=1).batch_indices(len(windows), episode, slots, 97, None)
    assert not np.array_equal(other, idx[97])


def test_sampler_refuses_windows_out_of_episode_order():
    policy = make_policy()
    with pytest.raises(ValueError, match="contiguous"):
        policy.batch_indices(4, np.array([0, 1, 0, 1]), 2, 0, None)


def test_trains_through_the_trainer_and_round_trips_a_checkpoint(trained):
    out, summary = trained
    assert summary["steps"] == 20 and np.isfinite(summary["final_loss"]) and np.isfinite(summary["val_loss"])
    tensors = load_file(out / "latest" / "model.safetensors")
    assert tensors["model._extra_state"].shape == (8, 8, 32)  # the training carry of the 8 batch slots
    config = json.loads((out / "latest" / "config.json").read_text())
    assert config["policy"] == "seed" and config["policy_config"]["reset_interval"] == 40

    policy, normalizer, _ = load_policy(out)
    assert isinstance(policy, SeedPolicy) and policy.config == SeedConfig.from_dict(config["policy_config"])
    assert policy.config.n_obs_steps == 2 and policy.config.state_dim == 32
    for key, value in policy.state_dict().items():
        assert torch.equal(value, tensors[f"ema.{key}"]), key
    assert "action" in normalizer.keys


def test_interrupted_training_resumes_bit_for_bit(reach_store, tmp_path):
    args = dict(policy_name="seed", preset="cpu", policy_overrides=TINY, progress=False, cpu=True)
    overrides = {**TRAIN, "steps": 6, "val_every": 1000, "log_every": 1}
    train(reach_store, tmp_path / "straight", train_overrides=overrides, **args)
    train(reach_store, tmp_path / "resumed", train_overrides=overrides, stop_at=3, **args)
    train(reach_store, tmp_path / "resumed", train_overrides=overrides, **args)
    a = load_file(tmp_path / "straight" / "latest" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "latest" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_presets_and_config_round_trip():
    paper = build_config("seed", "paper", {"state": [14]}, 14)
    assert (paper.num_state_tokens, paper.state_dim, paper.sega_depth, paper.sega_heads) == (60, 256, 6, 8)
    assert (paper.n_obs_steps, paper.horizon, paper.n_action_steps, paper.reset_interval) == (3, 8, 6, 40)
    transformer = build_config("seed", "paper-transformer", {"state": [14]}, 14)
    assert transformer.backbone == "transformer" and transformer.horizon == 9 and transformer.p_drop_attn == 0.3
    long = build_config("seed", "cpu-long", {"state": [4]}, 2)
    assert long.n_obs_steps == 16
    assert SeedConfig.from_dict(long.to_dict()) == long and isinstance(SeedConfig.from_dict(long.to_dict()).down_dims,
                                                                       tuple)
    with pytest.raises(ValueError, match="divisible by sega_heads"):
        build_config("seed", "cpu", {"state": [4]}, 2, state_dim=30)
    with pytest.raises(ValueError, match="reset_interval"):
        build_config("seed", "cpu", {"state": [4]}, 2, reset_interval=0)


def test_transformer_backbone_takes_the_enhanced_tokens():
    policy = make_policy(backbone="transformer", n_layer=1, n_head=2, n_emb=16)
    assert policy.denoiser.obs_emb.in_features == 32  # D_s: E_t replaces the raw 4-d features
    loss = policy.compute_loss(toy_batch(is_reset=torch.ones(4, dtype=torch.bool)))["loss"]
    loss.backward()
    assert torch.isfinite(loss) and policy.sega.initial_state.grad.abs().sum() > 0
    chunk = policy.eval().predict_chunk({"state": torch.randn(2, 2, 4)})
    assert chunk.shape == (2, 8, 2) and policy.state.shape == (2, 8, 32)
