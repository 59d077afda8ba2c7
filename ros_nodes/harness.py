"""Run our nodes as separate processes and talk to them from Python: for tests, benchmarks and scripts.

- :func:`isolate` claims a ``ROS_DOMAIN_ID`` no other process on this machine holds (a lock file per
  id) and limits discovery to localhost, so concurrent runs never hear each other. Call it before
  any rclpy context starts.
- :class:`NodeProcess` starts a console script (``robopolicy-sim-bridge`` ...) with ROS parameters (and
  optionally a namespace), logs to a file, reports its resident memory, and stops it with SIGINT, then
  SIGTERM, then SIGKILL; :func:`stop_all` stops several at once.
- :class:`SpunNode` is an rclpy node spinning in a background thread: ``collect`` fills a list with
  ``(receive time, msg)``, ``call`` calls a service and waits for the reply (re-sending a request
  that a server not yet matched lost), ``trigger`` does that for a ``std_srvs/Trigger``.
- :func:`wait_until` polls a condition; :func:`wait_alive` does too, but fails at once, with the log,
  when one of the node processes it watches has died.
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


class NodeDied(RuntimeError):
    """A node process exited while something was waiting on it; the message carries its log."""


def wait_alive(predicate: Callable[[], object], timeout: float, what: str, *nodes: "NodeProcess",
               period: float = 0.02):
    """``wait_until(predicate)``, raising :class:`NodeDied` with the log of the first of ``nodes`` that
    exits meanwhile (instead of waiting out the timeout for a node that is gone)."""

    def check():
        for node in nodes:
            if not node.running():
                raise NodeDied(f"{node.executable} exited ({node.process.returncode}) while waiting for "
                               f"{what}:\n{node.log()}")
        return predicate()

    return wait_until(check, timeout, what, period)


class NodeProcess:
    """One node from its console script: ``NodeProcess("robopolicy-sim-bridge", {"task": ...}, log_path)``."""

    def __init__(self, executable: str, params: dict, log_path: str | os.PathLike, extra_env: dict | None = None,
                 namespace: str = ""):
        args = [str(BIN / executable), "--ros-args"]
        if namespace:
            args += ["-r", f"__ns:={namespace}"]
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

    def rss_mb(self) -> float:
        """Resident memory of the process now (``VmRSS`` in ``/proc/<pid>/status``), MiB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
        raise RuntimeError(f"no VmRSS for pid {self.process.pid} ({self.executable})")

    def wait_exit(self, timeout: float = 30.0) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self, timeout: float = 5.0) -> int:
        stop_all([self], timeout)
        return self.process.returncode


def stop_all(nodes: list[NodeProcess], timeout: float = 5.0) -> None:
    """Stop node processes together: SIGINT to all, then SIGTERM, then SIGKILL to those still running
    ``timeout`` s later (one shared wait, so ``n`` nodes take as long as the slowest, not the sum)."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        alive = [n for n in nodes if n.process.poll() is None]
        if not alive:
            break
        for n in alive:
            n.process.send_signal(sig)
        deadline = time.monotonic() + timeout
        for n in alive:
            try:
                n.process.wait(timeout=max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                pass
    for n in nodes:
        n._log.close()


class SpunNode:
    """An rclpy node in its own context, spun by a background thread."""

    def __init__(self, name: str):
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._clients: dict = {}  # (srv_class, name) -> client, kept: a matched client is answered at once
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

    def call(self, srv_class, name: str, timeout: float = 10.0, resend_s: float = 2.0, request=None):
        """Call service ``name`` and return its response; TimeoutError if none comes within ``timeout``.

        Until a client has matched the server both ways, DDS drops its requests or the replies without a
        word, and a killed server stays in the graph for a while (so ``wait_for_service`` may answer for
        it). So a request still unanswered after ``resend_s`` is sent again, and a reply to any of the
        requests sent counts: at-least-once, so a service that must not run twice should answer within
        ``resend_s``. One client per service is kept, and once it has been answered its paths are matched:
        later calls are answered at the first try.
        """
        key = (srv_class, name)
        if key not in self._clients:
            self._clients[key] = self.node.create_client(srv_class, name)
        client = self._clients[key]
        if not client.wait_for_service(timeout_sec=timeout):
            raise TimeoutError(f"service {name!r} did not appear within {timeout} s")
        deadline = time.monotonic() + timeout
        futures: list = []
        while time.monotonic() < deadline:
            futures.append(client.call_async(request if request is not None else srv_class.Request()))
            resend = min(time.monotonic() + resend_s, deadline)
            while time.monotonic() < resend:
                done = next((f for f in futures if f.done()), None)
                if done is not None:
                    for f in futures:
                        if f is not done and not f.done():
                            client.remove_pending_request(f)
                    return done.result()
                time.sleep(0.005)
        for f in futures:
            client.remove_pending_request(f)
        raise TimeoutError(f"no reply from {name!r} within {timeout} s ({len(futures)} requests sent)")

    def trigger(self, name: str, timeout: float = 20.0, resend_s: float = 2.0) -> tuple[bool, str]:
        """Call a ``std_srvs/Trigger`` service: ``(success, message)``."""
        from std_srvs.srv import Trigger

        reply = self.call(Trigger, name, timeout, resend_s)
        return reply.success, reply.message

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        if self.context.ok():
            rclpy.shutdown(context=self.context)
        self._thread.join(timeout=2.0)
