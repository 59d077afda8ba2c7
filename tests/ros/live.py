"""Waiting on live node processes: fail at once, with the node's log, when one of them has died."""

from __future__ import annotations

import time
from typing import Callable

import pytest

from ros_nodes.harness import NodeProcess
from tests.ros.conftest import wait_for


def wait_alive(predicate: Callable[[], object], timeout: float, what: str, *nodes: NodeProcess):
    """``wait_for(predicate)``, failing with the log of the first of ``nodes`` that exits meanwhile."""

    def check():
        for node in nodes:
            if not node.running():
                pytest.fail(f"{node.executable} exited ({node.process.returncode}) while waiting for "
                            f"{what}:\n{node.log()}")
        return predicate()

    return wait_for(check, timeout, what=what)


def trigger(ros, name: str, timeout: float = 20.0, resend_s: float = 2.0) -> tuple[bool, str]:
    """Call a ``std_srvs/Trigger`` service; ``(success, message)``.

    A request sent before the server has matched the client is lost without a word (and a killed server
    stays in the graph for a while, so ``wait_for_service`` may answer for it): unanswered requests are
    sent again every ``resend_s``.
    """
    from std_srvs.srv import Trigger

    client = ros.node.create_client(Trigger, name)
    try:
        if not client.wait_for_service(timeout_sec=timeout):
            pytest.fail(f"service {name!r} did not appear within {timeout} s")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            future = client.call_async(Trigger.Request())
            resend = time.monotonic() + resend_s
            while not future.done() and time.monotonic() < resend:
                time.sleep(0.01)
            if future.done():
                reply = future.result()
                return reply.success, reply.message
            client.remove_pending_request(future)
        pytest.fail(f"no reply from {name!r} within {timeout} s")
    finally:
        ros.node.destroy_client(client)
