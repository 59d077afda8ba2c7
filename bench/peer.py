"""The peer: LeRobot 0.4.4's DiffusionPolicy, built with the same network as ours, for side-by-side timing.

LeRobot pins torch < 2.11 and a CUDA torchvision, so it lives in its own git-ignored venv that reuses our torch:

    python bench/peer.py setup        # creates .venv-lerobot (once; reads only the package index)
    .venv-lerobot/bin/python bench/speed.py

`setup` makes `.venv-lerobot` with a .pth that adds `.venv`'s site-packages (torch, diffusers, robopolicy),
installs `lerobot==0.4.4` with `--no-deps` plus the packages its diffusion policy imports, and skips the
op registrations of the index's torchvision (a CUDA build, whose registrations fail on a CPU-only torch;
the diffusion policy needs none of its ops).
"""

import site
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-lerobot"
LEROBOT = "lerobot==0.4.4"
# What `lerobot.policies.diffusion` imports at load time (its full dependency list would pull another torch).
IMPORT_TIME = ["draccus==0.10.0", "datasets>=4,<5", "dill==0.4.1", "multiprocess==0.70.19", "pandas", "pyarrow",
               "xxhash", "httpx==0.28.1", "httpcore==1.0.9", "pyserial>=3.5,<4", "termcolor>=2.4,<4",
               "jsonlines>=4,<5", "deepdiff>=7.0.1,<9", "orderly-set", "av>=15,<16", "torchvision==0.28.0"]


def lerobot_available() -> bool:
    try:
        import lerobot.policies.diffusion.modeling_diffusion  # noqa: F401
    except ImportError:
        return False
    return True


def build_lerobot(obs_dim: int = 20, action_dim: int = 2, horizon: int = 16, n_obs_steps: int = 2,
                  down_dims=(256, 512, 1024), kernel_size: int = 5, step_embed_dim: int = 128):
    """LeRobot's DiffusionPolicy with our network's shape. Its low-dim path needs an environment-state key:
    the first 2 observation dims go to `observation.state`, the rest to `observation.environment_state`."""
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

    config = DiffusionConfig(
        input_features={"observation.state": PolicyFeature(FeatureType.STATE, (2,)),
                        "observation.environment_state": PolicyFeature(FeatureType.ENV, (obs_dim - 2,))},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (action_dim,))},
        horizon=horizon, n_obs_steps=n_obs_steps, n_action_steps=8, down_dims=tuple(down_dims),
        kernel_size=kernel_size, diffusion_step_embed_dim=step_embed_dim, device="cpu")
    return DiffusionPolicy(config)


def lerobot_batch(obs: "torch.Tensor", action: "torch.Tensor | None" = None) -> dict:  # noqa: F821
    """Our (B, To, obs_dim) observation (and (B, H, A) actions) as LeRobot's batch dict."""
    import torch

    batch = {"observation.state": obs[..., :2], "observation.environment_state": obs[..., 2:]}
    if action is not None:
        batch["action"] = action
        batch["action_is_pad"] = torch.zeros(action.shape[:2], dtype=torch.bool)
    return batch


def set_lerobot_sampler(policy, sampler: str, steps: int) -> None:
    """Switches LeRobot's sampler the way its config would ("DDIM"/"DDPM", num_inference_steps)."""
    from lerobot.policies.diffusion.modeling_diffusion import _make_noise_scheduler

    c = policy.config
    policy.diffusion.noise_scheduler = _make_noise_scheduler(
        sampler.upper(), num_train_timesteps=c.num_train_timesteps, beta_start=c.beta_start, beta_end=c.beta_end,
        beta_schedule=c.beta_schedule, clip_sample=c.clip_sample, clip_sample_range=c.clip_sample_range,
        prediction_type=c.prediction_type)
    policy.diffusion.num_inference_steps = steps


def setup() -> None:
    """Creates .venv-lerobot next to .venv; idempotent."""
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    ours = Path(site.getsitepackages()[0])
    if not (ours / "torch").is_dir():
        raise SystemExit(f"run setup with .venv's python (no torch in {ours})")
    theirs = Path(subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"],
                                 capture_output=True, text=True, check=True).stdout.strip())
    (theirs / "zz_robopolicy_venv.pth").write_text(f'import site; site.addsitedir("{ours}")\n')
    pip = [str(python), "-m", "pip", "install", "--no-deps", "-q"]
    subprocess.run([*pip, LEROBOT, *IMPORT_TIME], check=True)
    init = theirs / "torchvision" / "__init__.py"
    text = init.read_text()
    init.write_text(text.replace("    _autograd_registrations,\n    _meta_registrations,\n", ""))
    check = subprocess.run([str(python), str(Path(__file__)), "check"], capture_output=True, text=True)
    print(check.stdout.strip() or check.stderr[-2000:])


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "check"
    if command == "setup":
        setup()
    elif command == "check":
        sys.path.insert(0, str(ROOT))
        if not lerobot_available():
            raise SystemExit("lerobot is not importable here; run `python bench/peer.py setup` and use "
                             ".venv-lerobot/bin/python")
        policy = build_lerobot()
        print(f"lerobot DiffusionPolicy ok: {sum(p.numel() for p in policy.parameters()):,} parameters")
    else:
        raise SystemExit(f"unknown command '{command}'; use setup or check")
