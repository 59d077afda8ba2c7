"""Building robopolicy's C++ kernels on first use (torch.utils.cpp_extension), one build per environment.

Each kernel is a small library that registers its operators under `torch.ops.robopolicy` when it is loaded.
A failed build (no compiler, no ninja, a read-only cache) is a warning, and the caller keeps its PyTorch path.
"""

import hashlib
import os
import sys
import warnings
from pathlib import Path

import torch

SOURCES = Path(__file__).with_name("csrc")


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def build_directory(name: str, cflags: list[str]) -> Path:
    """One build per environment and set of flags: include paths (and torch) differ between virtual environments,
    and a shared directory would rebuild at every switch; -march=native code must not travel to another CPU."""
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR", Path.home() / ".cache" / "torch_extensions"))
    key = f"{sys.prefix} {torch.__version__} {' '.join(cflags)}"
    if "-march=native" in cflags:
        key += " " + " ".join(sorted(cpu_flags()))
    path = root / f"{name}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def load(name: str, source: str, cflags: list[str]) -> bool:
    """Compiles (first time, cached after) and loads csrc/`source`; False, with a warning, if that fails."""
    try:
        from torch.utils.cpp_extension import load as load_extension

        load_extension(name=name, sources=[str(SOURCES / source)], extra_cflags=cflags, extra_ldflags=["-fopenmp"],
                       is_python_module=False, build_directory=str(build_directory(name, cflags)))
    except Exception as error:
        warnings.warn(f"robopolicy's {Path(source).stem} kernel could not be built, using the PyTorch path: {error}",
                      RuntimeWarning, stacklevel=3)
        return False
    return True
