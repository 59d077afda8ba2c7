from robopolicy.runtime.runner import CheckpointPolicy, ObservationError, PolicyRunner

__all__ = ["CheckpointPolicy", "ObservationError", "PolicyRunner"]
