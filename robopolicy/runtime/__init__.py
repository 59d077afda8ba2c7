"""Runtime: PolicyRunner (observation history -> chunk -> executed actions), the chunk executors, and
RunnerProcess (a runner in a worker process).

The runner is imported lazily so that `robopolicy.runtime.executors` (pure numpy) and
`robopolicy.runtime.process` load without torch, e.g. in the ROS node, whose inference runs in a worker.
"""

__all__ = ["CheckpointPolicy", "ObservationError", "PolicyRunner"]


def __getattr__(name: str):
    if name in __all__:
        from robopolicy.runtime import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'robopolicy.runtime' has no attribute '{name}'")
