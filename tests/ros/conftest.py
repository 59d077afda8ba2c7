"""ROS 2 test rig: real rclpy over DDS on loopback, isolated per test session (ros_nodes.harness).

- The session claims a ``ROS_DOMAIN_ID`` no other session on this machine holds and limits discovery
  to localhost, so concurrent test runs never hear each other.
- ``ros_node`` gives the test its own rclpy node, spun in a background thread; ``wait_for`` polls.
- ``launch_node`` starts one of our console scripts (``robopolicy-sim-bridge`` ...) as a separate
  process with ROS parameters (and a namespace), logs to a file under the test's tmp dir, and stops
  them all together (SIGINT, then SIGTERM, then SIGKILL) when the test ends. ``NodeProcess.log()`` shows what it said.
- ``tiny_checkpoints``: tiny real checkpoints of an arm and a quadrotor task, built once per session.
"""

from __future__ import annotations

import os
from typing import Callable

import pytest

pytest.importorskip("rclpy")
from ros_nodes.harness import NodeProcess, SpunNode, isolate, stop_all, wait_until  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def ros_domain() -> int:
    """This session's ROS_DOMAIN_ID, set in os.environ before any rclpy context starts."""
    return isolate()


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, period: float = 0.02, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy; return it, or fail the test naming ``what``."""
    try:
        return wait_until(predicate, timeout, what, period)
    except TimeoutError as e:
        pytest.fail(str(e))


@pytest.fixture
def ros_node(ros_domain):
    node = SpunNode(f"test_{os.getpid()}")
    yield node
    node.close()


@pytest.fixture
def launch_node(ros_domain, tmp_path):
    """Factory: ``launch_node("robopolicy-policy-node", {"checkpoint": ..., "profile": ...})``."""
    started: list[NodeProcess] = []

    def start(executable: str, params: dict, extra_env: dict | None = None, namespace: str = "") -> NodeProcess:
        proc = NodeProcess(executable, params, tmp_path / f"{executable}-{len(started)}.log", extra_env, namespace)
        started.append(proc)
        return proc

    yield start
    stop_all(started)


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict:
    """``{"arm": (ckpt, store), "quadrotor": (ckpt, store), "quadrotor-flow": (ckpt, store)}``: tiny diffusion
    checkpoints of robosuite-Lift-joint-v0 and quadrotor-hover-v0, a flow one of the latter (for RTC) and a
    diffusion one of quadrotor-hover-motors-v0 (``"quadrotor-motors"``), trained from expert demos once per
    session."""
    import torch

    from tests.ros.checkpoints import tiny_checkpoint

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ros-checkpoints")
    try:
        checkpoints = {kind: tiny_checkpoint(kind, root) for kind in ("arm", "quadrotor")}
        checkpoints["quadrotor-flow"] = tiny_checkpoint("quadrotor", root, "flow")
        checkpoints["quadrotor-motors"] = tiny_checkpoint("quadrotor-motors", root)
        return checkpoints
    finally:
        torch.set_num_threads(threads)
