"""Runtime: PolicyRunner (observation history -> chunk -> executed actions) and the chunk executors.

The runner is imported lazily so that `robopolicy.runtime.executors` (pure numpy) loads without torch,
e.g. in the ROS node before it has checked a checkpoint against the robot.
"""

__all__ = ["CheckpointPolicy", "ObservationError", "PolicyRunner"]


def __getattr__(name: str):
    if name in __all__:
        from robopolicy.runtime import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'robopolicy.runtime' has no attribute '{name}'")
