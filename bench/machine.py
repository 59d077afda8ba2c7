"""What a benchmark ran on, recorded beside every result, and the lock that keeps benchmarks apart."""

import contextlib
import fcntl
import os
import platform
import subprocess

import torch


def machine_info() -> dict:
    cpu = platform.processor()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                        cwd=os.path.dirname(__file__)).stdout.strip()
    except OSError:
        pass
    return info


TRAINING_LOCK = "/tmp/robopolicy-train.lock"  # the same lock as `flock /tmp/robopolicy-train.lock cmd`


@contextlib.contextmanager
def training_lock(path: str | None = TRAINING_LOCK):
    """Hold the shared training lock (flock(2)) for the block, saying so if it has to wait; None: no lock."""
    if path is None:
        yield
        return
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for {path} ...", flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
