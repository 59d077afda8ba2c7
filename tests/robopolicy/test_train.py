"""Training on real zarr stores: learning, checkpoints without pickle, resume, DDP, bad input."""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numcodecs
import numpy as np
import pytest
import torch
import zarr
from safetensors.torch import load_file

from robopolicy.cli import main as cli
from robopolicy.policies import DiffusionPolicy
from robopolicy.store import DemoStore, StoreError
from robopolicy.train.checkpoint import CheckpointError, load_policy, resolve_checkpoint
from robopolicy.train.trainer import train
from tests.robopolicy.toy_store import metrics, reach_episode, reach_with, write_reach_store

TINY = {"down_dims": (32, 64), "step_embed_dim": 32, "horizon": 8, "n_action_steps": 4}


@pytest.fixture(scope="module")
def reach_store(tmp_path_factory):
    return write_reach_store(tmp_path_factory.mktemp("store") / "reach.zarr", episodes=30)


@pytest.fixture(scope="module")
def trained(reach_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    summary = train(reach_store, out, preset="cpu", policy_overrides=TINY, progress=False, cpu=True,
                    train_overrides={"steps": 300, "batch_size": 64, "lr": 2e-3, "warmup_steps": 20,
                                     "val_every": 50, "val_episodes": 2})
    return out, summary


def test_training_learns_and_writes_a_checkpoint_and_logs(trained):
    out, summary = trained
    assert summary["steps"] == 300
    train_loss, val_loss = metrics(out, "train/loss"), metrics(out, "val/loss")
    assert np.mean(train_loss[-5:]) < 0.5 * np.mean(train_loss[:3])
    assert len(val_loss) == 6 and val_loss[-1] < val_loss[0]
    files = sorted(p.name for p in (out / "latest").iterdir())
    assert files == ["config.json", "model.safetensors", "training_state.json", "training_state.safetensors"]
    assert list((out / "logs").glob("events.out.tfevents.*"))  # TensorBoard
    tensors = load_file(out / "latest" / "model.safetensors")
    assert any(k.startswith("ema.") for k in tensors) and any(k.startswith("model.") for k in tensors)


def test_bf16_mixed_precision_trains_as_well_as_fp32(trained, reach_store, tmp_path):
    fp32_run, _ = trained
    config = json.loads((fp32_run / "latest" / "config.json").read_text())["train_config"]
    assert config["mixed_precision"] == "no"
    overrides = {k: config[k] for k in ("steps", "batch_size", "lr", "warmup_steps", "val_every", "val_episodes")}
    out = tmp_path / "bf16"
    train(reach_store, out, preset="cpu", policy_overrides=TINY, progress=False, cpu=True,
          train_overrides={**overrides, "mixed_precision": "bf16"})
    assert json.loads((out / "latest" / "config.json").read_text())["train_config"]["mixed_precision"] == "bf16"
    assert all(t.dtype == torch.float32 for t in load_file(out / "latest" / "model.safetensors").values())
    fp32_loss, bf16_loss = metrics(fp32_run, "train/loss"), metrics(out, "train/loss")
    assert bf16_loss != fp32_loss  # same seed and batches: only the autocast can make them differ
    fp32_val, bf16_val = metrics(fp32_run, "val/loss"), metrics(out, "val/loss")
    assert bf16_val[-1] < 0.7 * bf16_val[0] and abs(bf16_val[-1] - fp32_val[-1]) < 0.05 * fp32_val[-1]
    with pytest.raises(ValueError, match="mixed_precision must be one of"):
        train(reach_store, tmp_path / "fp16", preset="cpu", policy_overrides=TINY, progress=False, cpu=True,
              train_overrides={**overrides, "mixed_precision": "fp16"})


@pytest.mark.parametrize("policy", ["flow", "seed", "ebt"])
def test_every_family_trains_under_bf16_autocast(reach_store, tmp_path, policy):
    """EBT differentiates through its energy descent (second order), SeedPolicy through its recurrent state:
    both must run under autocast too, and give what fp32 gives up to bf16 rounding."""
    overrides = {"steps": 3, "batch_size": 16, "val_every": 3, "val_episodes": 1}
    losses = {}
    for precision in ("no", "bf16"):
        summary = train(reach_store, tmp_path / precision, policy, "cpu", {**overrides, "mixed_precision": precision},
                        progress=False, cpu=True)
        losses[precision] = summary["val_loss"]
    assert np.isfinite(losses["bf16"]) and losses["bf16"] != losses["no"]
    assert abs(losses["bf16"] - losses["no"]) < 0.05 * losses["no"]


def test_trained_policy_reaches_the_goal_through_the_runner(trained):
    from robopolicy.runtime import PolicyRunner

    out, _ = trained
    runner = PolicyRunner.from_checkpoint(out, seed=0)
    errors, starts = reach_with(runner, episodes=8)
    # Doing nothing leaves the point ~1 away; a policy that learned the task ends within a fraction of that.
    assert np.median(errors) < 0.25 * np.median(starts), (errors, starts)


def test_runner_process_predicts_what_the_runner_predicts(trained, tmp_path):
    """The ROS node's inference worker: the same chunks as an in-process runner with the same seed, errors
    reported with the worker's own message, and a worker that serves on after one and exits on close."""
    from robopolicy.runtime import PolicyRunner
    from robopolicy.runtime.executors import ChunkGuide
    from robopolicy.runtime.process import RunnerProcess, RunnerProcessError, RunnerSpec

    out, _ = trained
    episode = reach_episode(np.random.default_rng(5), 10)
    frames = [{"state": episode["state"][i]} for i in (3, 4)]
    local = PolicyRunner.from_checkpoint(out, seed=7)
    expected = [local.predict_from(frames), local.predict_from(frames)]
    with RunnerProcess(RunnerSpec(str(out), seed=7, torch_threads=1)) as worker:
        assert worker.obs_shapes == {"state": (4,)} and worker.config.horizon == local.config.horizon
        assert worker.sampler == local.sampler and worker.nfe == local.nfe
        first = worker.predict_from(frames)
        np.testing.assert_allclose(first, expected[0], atol=1e-5)
        np.testing.assert_allclose(worker.predict_from(frames), expected[1], atol=1e-5)
        assert not np.allclose(expected[0], expected[1])  # fresh noise per chunk: not a vacuous comparison
        worker.reset(7)
        np.testing.assert_allclose(worker.predict_from(frames), first, atol=1e-5)
        with pytest.raises(RunnerProcessError, match="'state'"):
            worker.predict_from([{"image_top": np.zeros((8, 8, 3), np.uint8)}])
        np.testing.assert_allclose(worker.predict_from(frames).shape, first.shape)  # still serving
        guide = ChunkGuide(first, np.ones(len(first), np.float32))
        with pytest.raises(RunnerProcessError, match="real-time chunking needs a flow policy.*'diffusion'"):
            worker.predict_from(frames, guide)
        process = worker._process
    assert not process.is_alive()
    with pytest.raises(RunnerProcessError, match="loading .*nowhere"):
        RunnerProcess(RunnerSpec(str(tmp_path / "nowhere")))


def test_checkpoint_loads_without_unpickling(trained, monkeypatch):
    out, _ = trained

    def refuse(*args, **kwargs):
        raise AssertionError("checkpoint loading tried to unpickle")

    for module, name in [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")]:
        monkeypatch.setattr(module, name, refuse)
    policy, normalizer, config = load_policy(out)
    assert isinstance(policy, DiffusionPolicy) and config["step"] == 300
    assert "action" in normalizer.keys


def test_loading_uses_ema_weights_by_default(trained):
    out, _ = trained
    ema, _, _ = load_policy(out)
    live, _, _ = load_policy(out, use_ema=False)
    w_ema, w_live = ema.state_dict(), live.state_dict()
    assert any(not torch.equal(w_ema[k], w_live[k]) for k in w_ema)


def test_checkpoint_of_another_policy_or_action_dim_is_refused(trained, reach_store, tmp_path):
    out, _ = trained
    with pytest.raises(CheckpointError, match="holds a 'diffusion' policy, not 'flow'"):
        load_policy(out, expect_policy="flow")
    with pytest.raises(CheckpointError, match="predicts 2-d actions, but 7-d"):
        load_policy(out, expect_action_dim=7)
    with pytest.raises(CheckpointError, match="is not a checkpoint"):
        resolve_checkpoint(tmp_path)
    # Resuming a run directory with a store of another action dimension.
    other = tmp_path / "wide.zarr"
    from robopolicy.store import EpisodeWriter

    with EpisodeWriter(other) as w:
        for _ in range(3):
            w.add_episode({"state": np.zeros((20, 4), np.float32), "action": np.zeros((20, 3), np.float32)})
    with pytest.raises(CheckpointError, match="2-d actions, the store has 3-d"):
        train(str(other), out, progress=False, cpu=True)
    # A config.json that names a policy we do not have.
    bad = tmp_path / "bad"
    bad.mkdir()
    cfg = json.loads((out / "latest" / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "policy": "nonsense"}))
    with pytest.raises(ValueError, match="unknown policy 'nonsense'"):
        load_policy(bad)


def test_interrupted_training_resumes_bit_for_bit(reach_store, tmp_path):
    args = dict(preset="cpu", policy_overrides=TINY, progress=False, cpu=True)
    overrides = {"batch_size": 32, "warmup_steps": 5, "val_every": 1000, "save_every": 1000}
    train(reach_store, tmp_path / "straight", train_overrides={**overrides, "steps": 30}, **args)
    train(reach_store, tmp_path / "resumed", train_overrides={**overrides, "steps": 30}, stop_at=15, **args)
    assert json.loads((tmp_path / "resumed" / "latest" / "config.json").read_text())["step"] == 15
    train(reach_store, tmp_path / "resumed", train_overrides={**overrides, "steps": 30}, **args)
    a = load_file(tmp_path / "straight" / "latest" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "latest" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    assert metrics(tmp_path / "resumed", "train/loss") == metrics(tmp_path / "straight", "train/loss")
    rows = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [10, 20, 30]  # the log continues, no repeats


def write_diffusion_policy_replay_buffer(path: Path, zip_path: Path | None = None) -> None:
    """What Diffusion Policy's ReplayBuffer writes: zarr v2, data/<key> + meta/episode_ends, Blosc lz4, no attrs."""
    rng = np.random.default_rng(1)
    episodes = [reach_episode(rng, int(rng.integers(20, 30))) for _ in range(6)]
    compressor = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.NOSHUFFLE)

    def fill(store):
        root = zarr.open_group(store, mode="w", zarr_format=2)
        data = root.create_group("data")
        for key in ("state", "action"):
            values = np.concatenate([e[key] for e in episodes])
            data.create_array(key, shape=values.shape, chunks=(100, values.shape[1]), dtype=values.dtype,
                              compressors=compressor)[:] = values
        ends = np.cumsum([len(e["action"]) for e in episodes]).astype(np.int64)
        root.create_group("meta").create_array("episode_ends", shape=ends.shape, dtype=np.int64,
                                               compressors=compressor)[:] = ends

    fill(zarr.storage.LocalStore(str(path)))
    if zip_path is not None:
        zip_store = zarr.storage.ZipStore(str(zip_path), mode="w")
        fill(zip_store)
        zip_store.close()


@pytest.mark.parametrize("kind", ["directory", "zip"])
def test_diffusion_policy_replay_buffer_trains_unchanged(tmp_path, kind):
    directory, zipped = tmp_path / "replay.zarr", tmp_path / "replay.zarr.zip"
    write_diffusion_policy_replay_buffer(directory, zipped)
    store_path = directory if kind == "directory" else zipped
    assert DemoStore.open(store_path).attrs == {}
    code = cli(["--quiet", "train", "--store", str(store_path), "--out", str(tmp_path / "run"), "--steps", "3",
                "--batch-size", "8", "--device", "cpu"])
    assert code == 0
    config = json.loads((tmp_path / "run" / "latest" / "config.json").read_text())
    assert config["action_key"] == "action" and config["obs_keys"] == ["state"]
    assert config["action_semantics"] == "unknown" and config["policy_config"]["action_dim"] == 2


def test_bad_stores_fail_with_clear_errors(tmp_path, reach_store, capsys):
    out = str(tmp_path / "run")
    assert cli(["train", "--store", str(tmp_path), "--out", out]) == 2
    assert "not" in capsys.readouterr().err  # names the path and says it is not a store

    assert cli(["train", "--store", reach_store, "--out", out, "--obs-keys", "state,image_wrist"]) == 2
    err = capsys.readouterr().err
    assert "image_wrist" in err and "state" in err

    nan_store = tmp_path / "nan.zarr"
    from robopolicy.store import EpisodeWriter

    rng = np.random.default_rng(0)
    with EpisodeWriter(nan_store) as w:
        w.add_episode(reach_episode(rng, 20))
        bad = reach_episode(rng, 20)
        bad["action"][7, 1] = np.nan
        w.add_episode(bad)
    with pytest.raises(StoreError, match="episode 1") as info:
        train(str(nan_store), out, progress=False, cpu=True)
    assert "action" in str(info.value)


def test_two_process_ddp_training_on_cpu(reach_store, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "robopolicy.cli",
           "--quiet", "train", "--store", reach_store, "--out", str(out), "--steps", "4", "--batch-size", "8",
           "--device", "cpu"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads((out / "latest" / "config.json").read_text())
    assert config["provenance"]["processes"] == 2 and config["step"] == 4
    checksums = config["provenance"]["replica_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]  # gradients were all-reduced


def test_ema_step_matches_diffusers_emamodel():
    """Our in-place EMA step against diffusers' EMAModel, through its warm-up decay schedule; frozen weights
    are copied, as EMAModel does."""
    from diffusers.training_utils import EMAModel

    from robopolicy.train.ema import EMA

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 4))
    net[1].bias.requires_grad_(False)
    ours = EMA(net.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=0.75)
    theirs = EMAModel(net.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=0.75, foreach=True)
    for _ in range(5):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        ours.step(net.parameters())
        theirs.step(net.parameters())
        for a, b in zip(ours.shadow_params, theirs.shadow_params):
            assert torch.allclose(a, b, atol=1e-6)
    assert ours.cur_decay_value == theirs.cur_decay_value and 0 < ours.cur_decay_value < 0.9999
    assert torch.equal(ours.shadow_params[-1], net[1].bias)  # frozen: copied
    assert not torch.allclose(ours.shadow_params[0], net[0].weight)  # trained: averaged
    with pytest.raises(ValueError, match="tracks 4 tensors"):
        ours.step(list(net.parameters())[:2])
