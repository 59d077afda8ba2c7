"""The one way our threaded nodes run: build, spin, shut down cleanly.

`threads` > 1 spins a multi-threaded executor, for nodes whose callbacks may wait on one another (a
service that calls a service). 1 spins the single-threaded one: for nodes whose callbacks only store a
message or flip a flag, it does the same for a fraction of the CPU (rclpy's multi-threaded executor hands
every callback to a thread pool, which cost the policy node about half a core at 50 Hz).

A node that cannot start (a checkpoint the robot cannot serve, an unknown task) exits with code 2 and one
line on stderr saying why, rather than a traceback.
"""

from __future__ import annotations

import gc
import sys
from typing import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor


def spin_node(make_node: Callable[[], "rclpy.node.Node"], program: str,
              refusals: tuple[type[BaseException], ...], threads: int = 2) -> int:
    """Builds the node (refusals -> exit code 2), spins it until SIGINT/shutdown, then calls its shutdown()."""
    rclpy.init()
    try:
        node = make_node()
    except refusals as e:
        print(f"{program}: refused to start: {e}", file=sys.stderr, flush=True)
        node = None
    if node is None:
        # The half-built node lived in the exception's traceback until here; free it while the context is up.
        # Freed after rclpy.shutdown() instead, a refusing node once exited by SIGSEGV rather than with 2 (CI,
        # five nodes refusing at once; not reproduced in 30 direct runs).
        gc.collect()
        if rclpy.ok():
            rclpy.shutdown()
        return 2
    executor = MultiThreadedExecutor(num_threads=threads) if threads > 1 else SingleThreadedExecutor()
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        if rclpy.ok():  # a real error; otherwise SIGINT shut the context down mid-spin
            raise
    finally:
        node.shutdown()
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0
