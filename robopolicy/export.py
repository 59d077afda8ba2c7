"""Export a checkpoint's whole chunk predictor as one TorchScript file, for robots without a Python stack.

The exported module is the policy's own inference path, traced end to end:

    raw obs window {key: (B, To, ...)}  ->  normalise (the checkpoint's statistics; uint8 images -> [-1, 1])
      ->  observation encoder  ->  sampling loop (fixed steps: DDIM for diffusion, Euler for flow)
      ->  un-normalise  ->  action chunk (B, H, A) in the robot's units

`forward(obs: Dict[str, Tensor], noise: Tensor (B, H, A)) -> Tensor (B, H, A)`. The initial noise is an
input, so the chunk is a deterministic function of (obs, noise): the caller draws `noise` from N(0, I)
(any RNG) and can reproduce a chunk exactly. Execute steps To-1 ... To-1+Ta-1 of it, as PolicyRunner does.
Tracing unrolls the loop, so the step count is fixed at export; samplers that draw noise inside the loop
(DDPM) or choose their steps from the data (adaptive flow) are refused.

The file also carries `extra/config.json` (observation keys, shapes and dtypes, H, To, Ta, sampler,
action semantics): a C++ caller reads it with `torch::jit::load(path, device, extra_files)`.

`fmt="onnx"` writes the same graph as ONNX (torch's TorchScript-based exporter; batch 1, inputs named after
the observation keys plus `noise`, output `chunk`) and the metadata beside it as `<file>.json`.
"""

import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from robopolicy.nn.obs_encoder import is_image_key
from robopolicy.policies import Policy
from robopolicy.store import Normalizer
from robopolicy.train.checkpoint import load_policy, resolve_checkpoint

FORMATS = ("torchscript", "onnx")
# Samplers whose loop is a fixed function of (obs, noise); others cannot be traced faithfully.
DETERMINISTIC_SAMPLERS = {"diffusion": ("ddim",), "flow": ("euler",)}


class ExportError(ValueError):
    pass


class ChunkPredictor(nn.Module):
    """Raw observation window + initial noise -> un-normalised action chunk, in plain tensor ops.

    Args:
        policy: a diffusion or flow policy, in eval mode, with a deterministic sampler.
        normalizer: the checkpoint's normaliser; action_key: its name for the action.
    """

    def __init__(self, policy: Policy, normalizer: Normalizer, action_key: str = "action"):
        super().__init__()
        self.policy = policy.eval()
        self.normalizer, self.action_key = normalizer, action_key
        self.obs_keys = list(policy.config.obs_keys)

    def forward(self, obs: dict[str, torch.Tensor], noise: torch.Tensor) -> torch.Tensor:
        """obs {key: (B, To, ...)} as the robot gives them (images uint8 HWC), noise (B, H, A) -> chunk."""
        normalised = {k: self.normalizer.normalize(k, obs[k]) for k in self.obs_keys}
        chunk = self.policy.predict_chunk(normalised, noise=noise)
        return self.normalizer.unnormalize(self.action_key, chunk)


def example_inputs(policy: Policy, batch: int = 1) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Zero observations of the policy's shapes and dtypes (images uint8) and unit noise, for tracing."""
    c = policy.config
    obs = {k: torch.zeros(batch, c.n_obs_steps, *c.obs_shapes[k], dtype=torch.uint8 if is_image_key(k) else
                          torch.float32) for k in c.obs_keys}
    return obs, torch.randn(batch, c.horizon, c.action_dim, generator=torch.Generator().manual_seed(0))


def export_metadata(policy: Policy, config: dict) -> dict:
    """What a caller needs besides the weights: input keys, shapes, dtypes, and which steps to execute."""
    c = policy.config
    return {
        "format_version": 1, "policy": config["policy"],
        "inputs": {k: {"shape": ["B", c.n_obs_steps, *c.obs_shapes[k]],
                       "dtype": "uint8" if is_image_key(k) else "float32"} for k in c.obs_keys},
        "noise": {"shape": ["B", c.horizon, c.action_dim], "dtype": "float32", "distribution": "N(0, I)"},
        "output": {"shape": ["B", c.horizon, c.action_dim], "dtype": "float32", "units": "un-normalised"},
        "horizon": c.horizon, "n_obs_steps": c.n_obs_steps, "n_action_steps": c.n_action_steps,
        "execute": [c.n_obs_steps - 1, c.n_obs_steps - 1 + c.n_action_steps],
        "sampler": policy.sampler_name, "nfe": policy.nfe,
        "action_key": config.get("action_key", "action"), "action_semantics": config.get("action_semantics"),
        "control_rate_hz": config.get("control_rate_hz"), "step": config.get("step"),
    }


def load_for_export(checkpoint: str | os.PathLike, sampler: str | None = None,
                    num_inference_steps: int | None = None) -> tuple[ChunkPredictor, dict]:
    """The checkpoint's EMA policy as a ChunkPredictor (CPU, fp32), with an optional sampler override."""
    policy, normalizer, config = load_policy(checkpoint, "cpu")
    name = config["policy"]
    if name not in DETERMINISTIC_SAMPLERS:
        raise ExportError(f"{checkpoint}: exporting '{name}' policies is not supported; "
                          f"exportable: {sorted(DETERMINISTIC_SAMPLERS)}")
    if sampler is not None:
        policy.config.sampler = sampler
    if num_inference_steps is not None:
        policy.config.num_inference_steps = num_inference_steps
    policy.config.__post_init__()
    if hasattr(policy, "set_inference"):
        # The eager network, not the CPU fast view: its oneDNN-packed weights are not portable ATen ops, and
        # libtorch on the robot runs its own kernels anyway.
        policy.set_inference(fast=False)
    if policy.config.sampler not in DETERMINISTIC_SAMPLERS[name]:
        raise ExportError(f"{checkpoint}: sampler '{policy.config.sampler}' draws noise or chooses its steps "
                          f"inside the loop and cannot be exported; use --sampler "
                          f"{' or '.join(DETERMINISTIC_SAMPLERS[name])}")
    return ChunkPredictor(policy, normalizer, config.get("action_key", "action")), config


def export(checkpoint: str | os.PathLike, out: str | os.PathLike, fmt: str = "torchscript",
           sampler: str | None = None, num_inference_steps: int | None = None) -> Path:
    """Writes the chunk predictor of `checkpoint` to `out` and returns the path. See the module docstring."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format '{fmt}'; choose one of {FORMATS}")
    checkpoint = resolve_checkpoint(checkpoint)
    predictor, config = load_for_export(checkpoint, sampler, num_inference_steps)
    meta = export_metadata(predictor.policy, config)
    meta["format"] = f"robopolicy-{fmt}"
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    if fmt == "torchscript":
        _write_torchscript(predictor, tmp, meta)
    else:
        _write_onnx(predictor, tmp)
        out.with_name(out.name + ".json").write_text(json.dumps(meta, indent=2))
    os.replace(tmp, out)  # a robot never loads half a file
    return out


def _write_torchscript(predictor: ChunkPredictor, path: Path, meta: dict) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns wherever Python reads a tensor (the schedule's steps, shape checks): those values
        # are fixed at export by design. check_trace would re-run the whole loop; the export test compares
        # the file against the eager policy instead.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(predictor, example_inputs(predictor.policy), check_trace=False, strict=False)
    traced = torch.jit.freeze(traced.eval())  # weights become constants: no attribute look-ups per step
    torch.jit.save(traced, str(path), _extra_files={"config.json": json.dumps(meta, indent=2)})


def _write_onnx(predictor: ChunkPredictor, path: Path) -> None:
    """The predictor through torch's TorchScript-based ONNX exporter (it traces it itself: a frozen trace
    no longer carries the shapes it needs), batch 1; inputs: the observation keys (sorted), then `noise`."""
    obs, noise = example_inputs(predictor.policy)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes (above) and the exporter's notes about its frontend
        torch.onnx.export(predictor, (obs, noise), str(path), dynamo=False, input_names=[*obs, "noise"],
                          output_names=["chunk"])


def load_exported(path: str | os.PathLike) -> tuple[torch.jit.ScriptModule, dict]:
    """The exported module and its metadata, as a C++ caller would see them (Python, for tests and tools)."""
    files = {"config.json": ""}
    module = torch.jit.load(str(path), map_location="cpu", _extra_files=files)
    return module, json.loads(files["config.json"])
