"""TorchScript export: the file reproduces the eager policy's chunk for the same initial noise."""

import json

import numpy as np
import pytest
import torch

from robopolicy.cli import main as cli
from robopolicy.export import ExportError, export, load_exported
from robopolicy.policies import build_config, get_policy_class
from robopolicy.store import Normalizer
from robopolicy.train.checkpoint import load_policy, save_checkpoint

TINY = {"down_dims": (16, 32), "step_embed_dim": 16, "horizon": 8, "n_action_steps": 4, "image_feature_dim": 8}


def write_checkpoint(path, policy_name: str, obs_shapes: dict, **overrides):
    """A real checkpoint on disk (random weights, store-like statistics): what `train` leaves behind."""
    torch.manual_seed(0)
    config = build_config(policy_name, "cpu", obs_shapes, 3, **{**TINY, **overrides})
    policy = get_policy_class(policy_name)(config)
    rng = np.random.default_rng(0)
    stats = {k: {"min": -rng.uniform(1, 2, s[0]), "max": rng.uniform(1, 2, s[0]), "mean": np.zeros(s[0]),
                 "std": np.ones(s[0])} for k, s in {**obs_shapes, "action": [3]}.items() if not k.startswith("image_")}
    modes = {k: "image" for k in obs_shapes if k.startswith("image_")}
    normalizer = Normalizer.from_store_stats(stats, modes)
    meta = {"action_key": "action", "obs_keys": sorted(obs_shapes), "action_semantics": "joint_pos",
            "control_rate_hz": 10.0, "step": 0}
    return save_checkpoint(path, policy, normalizer, meta)


def eager_chunk(checkpoint, obs: dict, noise: torch.Tensor, **config) -> torch.Tensor:
    """The policy as the runner drives it: normalise, predict_chunk with the given noise, un-normalise."""
    policy, normalizer, _ = load_policy(checkpoint)
    for k, v in config.items():
        setattr(policy.config, k, v)
    normalised = {k: normalizer.normalize(k, torch.as_tensor(v)) for k, v in obs.items()}
    return normalizer.unnormalize("action", policy.eval().predict_chunk(normalised, noise=noise))


def observations(batch: int, shapes: dict, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randint(0, 256, (batch, 2, *s), dtype=torch.uint8, generator=g) if k.startswith("image_")
            else torch.randn(batch, 2, *s, generator=g) for k, s in shapes.items()}


@pytest.mark.parametrize(("policy_name", "shapes", "overrides"), [
    ("diffusion", {"state": [5], "image_front": [24, 24, 3]}, {}),
    ("flow", {"state": [5]}, {"sampler": "euler", "num_inference_steps": 4}),
])
def test_exported_file_matches_the_eager_policy(tmp_path, policy_name, shapes, overrides):
    checkpoint = write_checkpoint(tmp_path / "ckpt", policy_name, shapes, **overrides)
    path = export(checkpoint, tmp_path / "policy.pt")
    module, meta = load_exported(path)
    assert meta["inputs"]["state"] == {"shape": ["B", 2, 5], "dtype": "float32"}
    assert meta["execute"] == [1, 5] and meta["action_semantics"] == "joint_pos"
    assert meta["sampler"] == ("ddim-10" if policy_name == "diffusion" else "euler-4")
    for batch, seed in [(1, 1), (1, 2), (3, 3)]:
        obs = observations(batch, shapes, seed)
        noise = torch.randn(batch, 8, 3, generator=torch.Generator().manual_seed(seed))
        want = eager_chunk(checkpoint, obs, noise)
        got = module(obs, noise)
        assert got.shape == (batch, 8, 3) and got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # The noise is an input: another draw gives another chunk, the same draw the same one.
    obs = observations(1, shapes)
    a = module(obs, torch.randn(1, 8, 3, generator=torch.Generator().manual_seed(7)))
    b = module(obs, torch.randn(1, 8, 3, generator=torch.Generator().manual_seed(8)))
    assert (a - b).abs().max() > 1e-3
    torch.testing.assert_close(module(obs, torch.randn(1, 8, 3, generator=torch.Generator().manual_seed(7))), a,
                               rtol=0, atol=0)


def test_export_sampler_override_and_refusals(tmp_path):
    checkpoint = write_checkpoint(tmp_path / "ckpt", "diffusion", {"state": [5]}, sampler="ddpm",
                                  num_inference_steps=100)
    with pytest.raises(ExportError, match="sampler 'ddpm' .* use --sampler ddim"):
        export(checkpoint, tmp_path / "ddpm.pt")
    assert not (tmp_path / "ddpm.pt").exists()
    path = export(checkpoint, tmp_path / "ddim4.pt", sampler="ddim", num_inference_steps=4)
    module, meta = load_exported(path)
    assert meta["sampler"] == "ddim-4" and meta["nfe"] == 4
    obs, noise = observations(1, {"state": [5]}), torch.randn(1, 8, 3)
    want = eager_chunk(checkpoint, obs, noise, sampler="ddim", num_inference_steps=4)
    torch.testing.assert_close(module(obs, noise), want, rtol=1e-4, atol=1e-5)
    with pytest.raises(ExportError, match="unknown export format 'tflite'"):
        export(checkpoint, tmp_path / "x.tflite", fmt="tflite")


def test_onnx_export_matches_the_eager_policy(tmp_path):
    onnx = pytest.importorskip("onnx")  # optional: `pip install onnx` (no torch dependency)
    from onnx.reference import ReferenceEvaluator

    shapes = {"state": [5], "image_front": [24, 24, 3]}
    checkpoint = write_checkpoint(tmp_path / "ckpt", "diffusion", shapes, num_inference_steps=3)
    path = export(checkpoint, tmp_path / "policy.onnx", fmt="onnx")
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["image_front", "state", "noise"]
    assert json.loads((tmp_path / "policy.onnx.json").read_text())["sampler"] == "ddim-3"
    obs, noise = observations(1, shapes), torch.randn(1, 8, 3)
    (got,) = ReferenceEvaluator(model).run(None, {**{k: v.numpy() for k, v in obs.items()}, "noise": noise.numpy()})
    np.testing.assert_allclose(got, eager_chunk(checkpoint, obs, noise).numpy(), rtol=1e-4, atol=1e-5)


def test_export_cli(tmp_path, capsys):
    checkpoint = write_checkpoint(tmp_path / "run" / "latest", "diffusion", {"state": [5]})
    out = tmp_path / "deploy" / "policy.pt"
    assert cli(["export", "--checkpoint", str(tmp_path / "run"), "--out", str(out)]) == 0
    assert "exported" in capsys.readouterr().out and out.is_file()
    module, meta = load_exported(out)
    obs, noise = observations(1, {"state": [5]}), torch.randn(1, 8, 3)
    torch.testing.assert_close(module(obs, noise), eager_chunk(checkpoint, obs, noise), rtol=1e-4, atol=1e-5)
    assert json.loads(json.dumps(meta))["n_obs_steps"] == 2
    assert cli(["export", "--checkpoint", str(tmp_path / "run"), "--out", str(out), "--sampler", "ddpm"]) == 2
    assert "cannot be exported" in capsys.readouterr().err
    assert cli(["export", "--checkpoint", str(tmp_path / "nothing"), "--out", str(out)]) == 2
    assert "not a checkpoint" in capsys.readouterr().err
