"""Run our nodes as separate processes and talk to them from Python: for tests, benchmarks and scripts.

- :func:`isolate` claims a ``ROS_DOMAIN_ID`` no other process on this machine holds (a lock file per
  id) and limits discovery to localhost, so concurrent runs never hear each other. Call it before
  any rclpy context starts.
- :class:`NodeProcess` starts a console script (``robopolicy-sim-bridge`` ...) with ROS parameters,
  logs to a file, and stops it with SIGINT, then SIGTERM, then SIGKILL.
- :class:`SpunNode` is an rclpy node spinning in a background thread: ``collect`` fills a list with
  ``(receive time, msg)``, ``call`` calls a Trigger-like service and waits for the reply.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import rclpy
from rclpy.executors import SingleThreadedExecutor

BIN = Path(sys.executable).parent
# Fast DDS leaves shared-memory segments behind when a process is killed; UDP on loopback does not.
TRANSPORT_ENV = {"FASTDDS_BUILTIN_TRANSPORTS": "UDPv4"}
_DOMAIN_LOCK = None


def isolate(first: int = 30, count: int = 200) -> int:
    """Claim a free ROS domain id in ``first .. first+count-1`` for this process (held until exit) and
    set ``ROS_DOMAIN_ID``, localhost-only discovery and UDP transport in ``os.environ``. Idempotent."""
    global _DOMAIN_LOCK
    if _DOMAIN_LOCK is not None:
        return int(os.environ["ROS_DOMAIN_ID"])
    start = os.getpid() % count
    for i in range(count):
        domain = first + (start + i) % count
        f = open(f"/tmp/robopolicy-ros-domain-{domain}.lock", "w")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        _DOMAIN_LOCK = f
        os.environ["ROS_DOMAIN_ID"] = str(domain)
        os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
        os.environ.update(TRANSPORT_ENV)
        return domain
    raise RuntimeError(f"no free ROS domain id in {first}..{first + count - 1}")


def wait_until(predicate: Callable[[], object], timeout: float, what: str = "condition", period: float = 0.02):
    """Poll ``predicate`` until it returns something truthy and return that; TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(period)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


class NodeProcess:
    """One node from its console script: ``NodeProcess("robopolicy-sim-bridge", {"task": ...}, log_path)``."""

    def __init__(self, executable: str, params: dict, log_path: str | os.PathLike, extra_env: dict | None = None):
        args = [str(BIN / executable), "--ros-args"]
        for key, value in params.items():
            if isinstance(value, bool):
                value = "true" if value else "false"
            args += ["-p", f"{key}:={value}"]
        self.executable, self.log_path = executable, Path(log_path)
        self._log = open(self.log_path, "w")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(extra_env or {})}
        self.process = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def running(self) -> bool:
        return self.process.poll() is None

    def wait_exit(self, timeout: float = 30.0) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self, timeout: float = 5.0) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            if self.process.poll() is not None:
                break
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                continue
        self._log.close()
        return self.process.returncode


class SpunNode:
    """An rclpy node in its own context, spun by a background thread."""

    def __init__(self, name: str):
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            while self.context.ok():
                self.executor.spin_once(timeout_sec=0.05)
        except Exception:
            if self.context.ok():
                raise

    def collect(self, msg_class, topic: str, qos) -> list:
        """A list that fills with ``(time.monotonic(), msg)`` for every message on ``topic``."""
        received: list = []
        self.node.create_subscription(msg_class, topic, lambda m: received.append((time.monotonic(), m)), qos)
        return received

    def call(self, srv_class, name: str, timeout: float = 10.0):
        client = self.node.create_client(srv_class, name)
        if not client.wait_for_service(timeout_sec=timeout):
            raise TimeoutError(f"service {name!r} did not appear within {timeout} s")
        future = client.call_async(srv_class.Request())
        wait_until(future.done, timeout, what=f"a reply from {name!r}")
        return future.result()

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        if self.context.ok():
            rclpy.shutdown(context=self.context)
        self._thread.join(timeout=2.0)
