"""A PolicyRunner in a process of its own, for callers that must hold a control rate beside it.

Inference on a CPU is thousands of small torch operators, and Python holds the GIL between them. A ROS node
whose observation sampler and publisher are threads of the same process waits for that GIL at every tick
a chunk is being computed, and misses ticks. In its own process the runner takes none of the caller's GIL,
and the caller never imports torch.

    caller ──("predict", To observation frames)──► worker process: PolicyRunner.predict_from
           ◄──────────────("chunk", (H, A))────────

Messages go over a `multiprocessing` pipe between our own two processes (the checkpoint itself is still
loaded without pickle, by the worker). The worker exits when the pipe closes, so a caller that dies, however
it dies, leaves no orphan behind.

This module imports neither torch nor the runner: only the worker does.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import traceback
import types
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from robopolicy.runtime.executors import ChunkGuide


class RunnerProcessError(RuntimeError):
    """The worker failed to load the checkpoint or to predict; the message carries its own error."""


@dataclass(frozen=True)
class RunnerSpec:
    """What `PolicyRunner.from_checkpoint` takes, plus the worker's torch threads (0: torch's default)."""

    checkpoint: str
    device: str = "cpu"
    sampler: str | None = None
    num_inference_steps: int | None = None
    seed: int | None = 0
    fast: bool = True
    precision: str = "fp32"
    compile: bool = False
    torch_threads: int = 0


class RunnerProcess:
    """The part of PolicyRunner's interface a chunk-at-a-time caller uses: `config`, `obs_shapes`, `sampler`,
    `nfe`, `action_semantics`, `reset(seed)` and `predict_from(frames)`, served by a worker process."""

    def __init__(self, spec: RunnerSpec, start_timeout_s: float = 300.0):
        ctx = multiprocessing.get_context("spawn")  # never fork a process that runs DDS or CUDA threads
        self._conn, child_conn = ctx.Pipe()
        self._process = ctx.Process(target=_serve, args=(child_conn, spec), name="robopolicy-inference",
                                    daemon=True)
        self._process.start()
        child_conn.close()
        info = self._reply(start_timeout_s, "load the checkpoint")
        self.config: types.SimpleNamespace = info["config"]  # the policy config's fields
        self.obs_shapes: dict[str, tuple[int, ...]] = info["obs_shapes"]
        self.sampler: str = info["sampler"]
        self.nfe: int = info["nfe"]
        self.action_semantics: str = info["action_semantics"]
        self.pid = self._process.pid

    def reset(self, seed: int | None = None) -> None:
        """As PolicyRunner.reset: a new episode (recurrent state cleared), reproducible noise given a seed."""
        self._conn.send(("reset", seed))
        self._reply(60.0, "reset")

    def predict_from(self, frames: Sequence[dict[str, np.ndarray]], guide: ChunkGuide | None = None,
                     timeout_s: float = 600.0) -> np.ndarray:
        """Chunk (H, A) from these observation frames, oldest first (at most To); `guide` as for the runner."""
        self._conn.send(("predict", (list(frames), guide)))
        return self._reply(timeout_s, "predict a chunk")

    def close(self, timeout_s: float = 5.0) -> None:
        if self._process.is_alive():
            try:
                self._conn.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
            self._process.join(timeout_s)
            if self._process.is_alive():
                self._process.kill()
                self._process.join(timeout_s)
        self._conn.close()

    def __enter__(self) -> "RunnerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _reply(self, timeout_s: float, doing: str):
        if not self._conn.poll(timeout_s):
            alive = self._process.is_alive()
            exited = "" if alive else f"; it exited with code {self._process.exitcode}"
            raise RunnerProcessError(f"the inference process (pid {self._process.pid}) did not {doing} "
                                     f"within {timeout_s:g} s{exited}")
        try:
            kind, value = self._conn.recv()
        except EOFError:
            self._process.join(5.0)
            raise RunnerProcessError(f"the inference process (pid {self._process.pid}) exited with code "
                                     f"{self._process.exitcode} while trying to {doing}") from None
        if kind == "error":
            raise RunnerProcessError(value)
        return value


def _serve(conn, spec: RunnerSpec) -> None:
    """The worker: load, then answer requests in order until told to close or the pipe closes."""
    import torch

    from robopolicy.runtime.runner import PolicyRunner

    if spec.torch_threads > 0:
        torch.set_num_threads(spec.torch_threads)
    try:
        runner = PolicyRunner.from_checkpoint(spec.checkpoint, spec.device, spec.sampler,
                                              spec.num_inference_steps, spec.seed, fast=spec.fast,
                                              precision=spec.precision, compile=spec.compile)
    except Exception as e:
        conn.send(("error", f"loading {spec.checkpoint}: {type(e).__name__}: {e}"))
        return
    # The config goes as plain values: unpickling its class would import the policy module, and torch with it.
    config = types.SimpleNamespace(**dataclasses.asdict(runner.config))
    conn.send(("ready", {"config": config, "obs_shapes": runner.obs_shapes, "sampler": runner.sampler,
                         "nfe": runner.nfe, "action_semantics": runner.action_semantics}))
    while True:
        try:
            request, payload = conn.recv()
        except (EOFError, OSError):
            return  # the caller is gone
        if request == "close":
            return
        try:
            if request == "predict":
                conn.send(("chunk", runner.predict_from(*payload)))
            elif request == "reset":
                runner.reset(payload)
                conn.send(("reset", None))
            else:
                conn.send(("error", f"unknown request {request!r}"))
        except Exception as e:
            conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}"))
