"""Training loop: windows from a zarr store -> Policy.compute_loss, with AdamW, cosine warm-up, EMA,
validation on held-out episodes, periodic evaluation, safetensors checkpoints, resume, and DDP.

Multi-process training (DDP) comes from accelerate: on GPUs launch this same command with
`accelerate launch --multi_gpu --num_processes N -m robopolicy.cli train ...` (add --num_machines and
--machine_rank for several nodes); on CPUs with `torchrun --nproc_per_node N -m robopolicy.cli train ...
--device cpu` (gloo). Every process draws its own batches (seeded by rank), so the global batch is
`batch_size × processes`.
"""

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from diffusers.optimization import get_scheduler
from tqdm.auto import tqdm

from robopolicy.nn.obs_encoder import is_image_key
from robopolicy.policies import build_config, get_policy_class, preset_train_overrides
from robopolicy.store import DemoStore, Normalizer, StoreError, WindowSampler, split_episodes
from robopolicy.train.checkpoint import (CheckpointError, load_training_state, read_config, save_checkpoint)
from robopolicy.train.ema import EMA


# Autocast dtypes. fp16 is left out: it needs loss scaling, and bf16 runs wherever fp16 would pay.
MIXED_PRECISION = {"no": None, "bf16": torch.bfloat16}


@dataclass
class TrainConfig:
    """Args:
        steps: optimiser steps in total (a resumed run continues up to this count).
        batch_size: windows per step and process. lr, betas, weight_decay: AdamW. warmup_steps: linear
            warm-up before the cosine decay (stepped per batch, as in the reference).
        grad_clip_norm: clip the global gradient norm to this value; None disables clipping (the reference's default).
        ema_power, ema_max_decay: EMA decay 1 - (1 + step)^-power, capped (the reference's schedule).
        val_episodes: whole episodes held out for the validation loss.
        log_every, val_every, save_every: in steps. eval_every: steps between evaluations in simulation
            (0: only at the end); needs an evaluation function, i.e. `--task`. eval_episodes: per evaluation.
        seed: seeds the model init, batches, the validation split and the noise.
        mixed_precision: "no", or "bf16": the training forward runs under torch.autocast in bfloat16 (GEMMs and
            convolutions in bf16 with fp32 accumulation; weights, gradients, AdamW and EMA stay fp32). 1.5-1.8x
            faster steps for the paper U-Net on a CPU with AVX-512 BF16 (bench/speed.py); validation and
            evaluation run in fp32 either way.
    """

    steps: int = 1000
    batch_size: int = 256
    lr: float = 1e-4
    betas: tuple[float, float] = (0.95, 0.999)
    weight_decay: float = 1e-6
    warmup_steps: int = 500
    grad_clip_norm: float | None = None
    use_ema: bool = True
    ema_power: float = 0.75
    ema_max_decay: float = 0.9999
    val_episodes: int = 2
    log_every: int = 10
    val_every: int = 100
    save_every: int = 500
    eval_every: int = 0
    eval_episodes: int = 10
    seed: int = 0
    wandb: bool = False
    mixed_precision: str = "no"

    def __post_init__(self):
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision must be one of {sorted(MIXED_PRECISION)}, got '{self.mixed_precision}'")


EvaluateFn = Callable[[Path, int], dict]  # (checkpoint dir, episodes) -> {"success_rate": ..., ...}


def train(store_path: str, out_dir: str, policy_name: str = "diffusion", preset: str = "cpu",
          train_overrides: dict | None = None, policy_overrides: dict | None = None,
          obs_keys: list[str] | None = None, action_key: str | None = None,
          evaluate: EvaluateFn | None = None, cpu: bool = False, progress: bool = True,
          stop_at: int | None = None, max_seconds: float | None = None) -> dict:
    """Trains (or resumes) a policy on a store and returns a summary dict. See TrainConfig for the knobs.

    `stop_at` ends this invocation at that step with a checkpoint, as a pre-empted job would; running again
    resumes it on the same schedule. `max_seconds` does the same once this invocation has spent that much
    wall-clock time in optimiser steps (a fixed compute budget); the summary's `stopped_by` says which limit
    ended the run ("steps", "stop_at" or "time") and `train_seconds` how long the loop ran.
    """
    if max_seconds is not None and max_seconds <= 0:
        raise ValueError(f"max_seconds must be positive or None, got {max_seconds=}")
    accelerator = Accelerator(cpu=cpu)
    main = accelerator.is_main_process
    out = Path(out_dir)
    latest = out / "latest"
    resume = (latest / "training_state.json").is_file()

    store = DemoStore.open(store_path)
    action_key = action_key or store.action_key
    obs_keys = list(obs_keys or store.obs_keys)
    missing = [k for k in [action_key, *obs_keys] if k not in store.keys]
    if missing:
        raise StoreError(f"{store_path}: key(s) {missing} not in the store; it has {sorted(store.keys)}")
    store.check_finite([action_key] + [k for k in obs_keys if not is_image_key(k)])

    arrays = store.load([action_key, *obs_keys])
    obs_shapes = {k: list(arrays[k].shape[1:]) for k in obs_keys}
    action_dim = arrays[action_key].shape[-1]

    overrides = dict(preset_train_overrides(policy_name, preset, any(map(is_image_key, obs_keys))))
    overrides.update(train_overrides or {})
    if resume:
        previous = read_config(latest)
        _check_resumable(previous, latest, policy_name, obs_shapes, action_dim)
        preset = previous.get("preset", preset)  # the run keeps its own config; only train overrides apply
        config = TrainConfig(**{**_restore_tuples(previous["train_config"]), **(train_overrides or {})})
        policy_config = get_policy_class(policy_name).config_class.from_dict(previous["policy_config"])
        normalizer = Normalizer.from_dict(previous["normalizer"])
    else:
        config = TrainConfig(**overrides)
        policy_config = build_config(policy_name, preset, obs_shapes, action_dim, **(policy_overrides or {}))
        stats = {k: store.stats(k) for k in [action_key, *obs_keys] if not is_image_key(k)}
        modes = {k: "image" if is_image_key(k) else "minmax" for k in obs_keys} | {action_key: "minmax"}
        normalizer = Normalizer.from_store_stats(stats, modes)

    torch.manual_seed(config.seed)
    train_eps, val_eps = split_episodes(store.n_episodes, config.val_episodes, config.seed)
    # Padding as the reference task configs set it: the first window starts with To-1 repeated first frames,
    # the last one still executes Ta real steps.
    window_args = dict(horizon=policy_config.horizon, n_obs_steps=policy_config.n_obs_steps, obs_keys=obs_keys,
                       action_key=action_key, pad_before=policy_config.n_obs_steps - 1,
                       pad_after=policy_config.n_action_steps - 1)
    train_windows = WindowSampler(arrays, store.episode_ends, episodes=train_eps, **window_args)
    val_windows = WindowSampler(arrays, store.episode_ends, episodes=val_eps, **window_args) if len(val_eps) else None

    policy = get_policy_class(policy_name)(policy_config)
    device = accelerator.device
    # One fused kernel for the whole update where torch has it (CPU and CUDA): for the paper U-Net's 63 M
    # parameters on two CPU cores, 33 ms a step against 170 ms for the default multi-tensor AdamW.
    fused = device.type in ("cpu", "cuda")
    optimizer = torch.optim.AdamW(policy.optim_groups(config.weight_decay), lr=config.lr, betas=config.betas,
                                  fused=fused)
    for group in optimizer.param_groups:  # e.g. EBT's step size learns faster than the network
        group["lr"] = config.lr * group.get("lr_multiplier", 1.0)
    lr_schedule = get_scheduler("cosine", optimizer, num_warmup_steps=config.warmup_steps,
                                num_training_steps=config.steps)
    state = {"step": 0, "best_success": None, "best_step": None}
    ema_weights = None
    if resume:
        ema_weights, state = load_training_state(latest, policy, optimizer)
        # The optimiser's restored param groups already carry this step's LR; the schedule continues from it.
        lr_schedule.load_state_dict({**lr_schedule.state_dict(), "last_epoch": state["step"],
                                     "_step_count": state["step"] + 1})
    ema = EMA(policy.parameters(), decay=config.ema_max_decay, use_ema_warmup=True, inv_gamma=1.0,
              power=config.ema_power) if config.use_ema else None
    if ema is not None and ema_weights is not None:
        names = [n for n, _ in policy.named_parameters()]
        ema.shadow_params = [ema_weights[n].clone() for n in names]
        ema.optimization_step = state["step"]

    model, optimizer, lr_schedule = accelerator.prepare(policy, optimizer, lr_schedule)
    autocast_dtype = MIXED_PRECISION[config.mixed_precision]
    if main and autocast_dtype is torch.bfloat16 and device.type == "cpu" and not _native_cpu_bf16():
        print("warning: this CPU has no native bf16 (AVX-512 BF16 or AMX): bf16 autocast is emulated and "
              "usually slower than fp32; --mixed-precision no is the faster choice here")
    if ema is not None:
        ema.to(device)

    meta = {
        "action_key": action_key,
        "obs_keys": obs_keys,
        "action_semantics": store.action_semantics,
        "control_rate_hz": store.control_rate_hz,
        "train_config": dataclasses.asdict(config),
        "preset": preset,
        "provenance": {"store": str(Path(store_path).resolve()), "episodes": store.n_episodes,
                       "train_episodes": [int(e) for e in train_eps], "val_episodes": [int(e) for e in val_eps],
                       "store_attrs": {k: v for k, v in store.attrs.items() if k in ("task", "expert", "robot_profile")},
                       "processes": accelerator.num_processes},
    }
    logger = _Logger(out, config, enabled=main)

    def to_batch(windows: WindowSampler, idx: np.ndarray, extras: dict[str, np.ndarray] | None = None
                 ) -> dict[str, torch.Tensor]:
        # The sampler's fast path: gathered and normalised in whole-batch torch ops, into reused buffers
        # (each batch is consumed before the next one is drawn).
        batch = windows.batch(idx, normalizer, device, reuse_buffers=True)
        batch.update({key: torch.from_numpy(value).to(device) for key, value in (extras or {}).items()})
        return batch

    def ema_state() -> dict[str, torch.Tensor] | None:
        if ema is None:
            return None
        shadow = dict(zip([n for n, _ in policy.named_parameters()], ema.shadow_params))
        return {k: shadow.get(k, v) for k, v in accelerator.unwrap_model(model).state_dict().items()}

    def save(directory: Path, extra: dict | None = None) -> Path:
        meta["step"] = state["step"]
        meta.update(extra or {})
        return save_checkpoint(directory, accelerator.unwrap_model(model), normalizer, meta, ema_state(),
                               optimizer, training_state=state)

    @torch.no_grad()
    def validation_loss() -> float:
        # Fixed windows and fixed noise, so successive values are comparable; EMA weights, which are evaluated.
        eval_model = accelerator.unwrap_model(model)
        if ema is not None:
            ema.store(eval_model.parameters())
            ema.copy_to(eval_model.parameters())
        eval_model.eval()
        rng_state = torch.get_rng_state()
        torch.manual_seed(12345)
        idx = np.arange(len(val_windows))[: 4 * config.batch_size]
        losses = [eval_model.compute_loss(to_batch(val_windows, idx[i : i + config.batch_size]))["loss"].item()
                  for i in range(0, len(idx), config.batch_size)]
        torch.set_rng_state(rng_state)
        eval_model.train()
        if ema is not None:
            ema.restore(eval_model.parameters())
        return float(np.mean(losses))

    def run_evaluation() -> None:
        path = save(latest)
        result = evaluate(path, config.eval_episodes)
        success = result["success_rate"]
        logger.scalar("eval/success_rate", success, state["step"])
        if state["best_success"] is None or success > state["best_success"]:
            state["best_success"], state["best_step"] = success, state["step"]
            save(out / "best", {"eval": result})

    if main:
        print(f"training {policy_name} ({preset}): {sum(p.numel() for p in policy.parameters()):,} parameters, "
              f"{len(train_windows):,} train windows from {len(train_eps)} episodes, "
              f"{len(val_eps)} validation episodes, device {device}, {accelerator.num_processes} process(es)")
    bar = tqdm(total=config.steps, initial=state["step"], disable=not (main and progress), desc="train",
               dynamic_ncols=True)
    model.train()
    t_last, samples_since = time.perf_counter(), 0
    last_step = min(config.steps, stop_at or config.steps)
    t_start, out_of_time = time.perf_counter(), False
    while state["step"] < last_step and not out_of_time:
        rng = np.random.default_rng([config.seed, accelerator.process_index, state["step"]])
        idx, extras = policy.batch_indices(len(train_windows), train_windows.window_episode, config.batch_size,
                                           state["step"], rng)
        batch = to_batch(train_windows, idx, extras)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = model(batch)["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {state['step']}; lower --lr or check the data")
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        if config.grad_clip_norm:
            accelerator.clip_grad_norm_(model.parameters(), config.grad_clip_norm)
        optimizer.step()
        lr_schedule.step()
        if ema is not None:
            ema.step(accelerator.unwrap_model(model).parameters())
        state["step"] += 1
        step = state["step"]
        samples_since += config.batch_size * accelerator.num_processes
        bar.update(1)

        if step % config.log_every == 0 or step == config.steps:
            elapsed = time.perf_counter() - t_last
            throughput = samples_since / max(elapsed, 1e-9)
            t_last, samples_since = time.perf_counter(), 0
            logger.scalar("train/loss", loss.item(), step)
            logger.scalar("train/lr", lr_schedule.get_last_lr()[0], step)
            logger.scalar("train/samples_per_s", throughput, step)
            bar.set_postfix(loss=f"{loss.item():.4f}", samples_s=f"{throughput:,.0f}")
        if val_windows is not None and (step % config.val_every == 0 or step == config.steps) and main:
            logger.scalar("val/loss", validation_loss(), step)
        if main and evaluate is not None and config.eval_every and step % config.eval_every == 0 and step < config.steps:
            run_evaluation()
        elif main and step % config.save_every == 0:
            save(latest)
        if max_seconds is not None:
            elapsed = time.perf_counter() - t_start
            if accelerator.num_processes > 1:
                # Every process must stop at the same step (DDP): the slowest clock decides for all.
                elapsed = accelerator.reduce(torch.tensor([elapsed], device=device), "max").item()
            out_of_time = elapsed >= max_seconds
    train_seconds = time.perf_counter() - t_start
    bar.close()
    if accelerator.num_processes > 1:
        # DDP keeps replicas identical only if every gradient went through the wrapped forward; verify it.
        checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1)
        gathered = accelerator.gather(checksum)
        if not torch.allclose(gathered, gathered[0].expand_as(gathered), rtol=1e-9, atol=0):
            raise RuntimeError(f"DDP replicas diverged: parameter checksums {gathered.tolist()}")
        meta["provenance"]["replica_checksums"] = gathered.tolist()

    if main:
        save(latest)
        if evaluate is not None and state["step"] == config.steps:
            run_evaluation()
    accelerator.wait_for_everyone()
    logger.close()
    stopped_by = "steps" if state["step"] >= config.steps else "time" if out_of_time else "stop_at"
    return {"out": str(out), "steps": state["step"], "stopped_by": stopped_by, "train_seconds": train_seconds,
            "best_success": state["best_success"],
            "best_step": state["best_step"], "final_loss": logger.last.get("train/loss"),
            "val_loss": logger.last.get("val/loss")}


def _check_resumable(previous: dict, path: Path, policy_name: str, obs_shapes: dict, action_dim: int) -> None:
    if previous["policy"] != policy_name:
        raise CheckpointError(f"{path} holds a '{previous['policy']}' policy; cannot resume it as '{policy_name}' "
                              "(choose another --out)")
    if previous["policy_config"]["action_dim"] != action_dim:
        raise CheckpointError(f"{path} was trained on {previous['policy_config']['action_dim']}-d actions, the store "
                              f"has {action_dim}-d actions (choose another --out)")
    if previous["policy_config"]["obs_shapes"] != obs_shapes:
        raise CheckpointError(f"{path} was trained on observations {previous['policy_config']['obs_shapes']}, the "
                              f"store gives {obs_shapes} (choose another --out)")


def _native_cpu_bf16() -> bool:
    """Whether this CPU computes bf16 natively (where autocast pays); torch only reports it privately."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def _restore_tuples(values: dict) -> dict:
    return {k: tuple(v) if k == "betas" else v for k, v in values.items()}


class _Logger:
    """TensorBoard (+ optional wandb) and a metrics.jsonl the report reads. Silent on non-main processes."""

    def __init__(self, out: Path, config: TrainConfig, enabled: bool):
        self.enabled, self.last = enabled, {}
        if not enabled:
            return
        out.mkdir(parents=True, exist_ok=True)
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(out / "logs"))
        self.jsonl = open(out / "metrics.jsonl", "a")
        self.wandb = None
        if config.wandb:
            import wandb

            self.wandb = wandb.init(project="robopolicy", config=dataclasses.asdict(config), dir=str(out))

    def scalar(self, name: str, value: float, step: int) -> None:
        self.last[name] = value
        if not self.enabled or not math.isfinite(value):
            return
        self.tb.add_scalar(name, value, step)
        self.jsonl.write(json.dumps({"step": step, name: value}) + "\n")
        self.jsonl.flush()
        if self.wandb is not None:
            self.wandb.log({name: value}, step=step)

    def close(self) -> None:
        if self.enabled:
            self.tb.close()
            self.jsonl.close()
            if self.wandb is not None:
                self.wandb.finish()
