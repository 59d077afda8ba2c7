"""What touches a physical robot without ROS: robot profiles and the safety filter (numpy and PyYAML only)."""

from hardware.profile import (
    CheckpointMatch,
    CheckpointMismatchError,
    ProfileError,
    RobotProfile,
    Source,
    check_checkpoint,
    list_profiles,
    load_profile,
    profile_from_dict,
)
from hardware.safety import SafetyDecision, SafetyFilter

__all__ = [
    "CheckpointMatch", "CheckpointMismatchError", "ProfileError", "RobotProfile", "SafetyDecision",
    "SafetyFilter", "Source", "check_checkpoint", "list_profiles", "load_profile", "profile_from_dict",
]
