"""The three QoS profiles of the ROS 2 path (DESIGN §9), shared by every node and test.

- ``SENSOR_QOS``: best-effort, keep last 1, volatile. A late sensor sample is worthless; the sampler
  wants only the newest one. Matches publishers of either reliability (a best-effort subscriber
  accepts a reliable publisher, not the other way round), so subscribe with it.
- ``COMMAND_QOS``: reliable, keep last 10. A dropped trajectory would leave the controller on a stale one.
- ``STATUS_QOS``: reliable, transient-local, keep last 1 ("latched"): a late joiner still gets the
  current status. Subscribers must ask for transient-local too to receive the latched sample.
- ``PX4_QOS``: what PX4's uXRCE-DDS bridge publishes (best-effort, transient-local, keep last 1).
"""

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

SENSOR_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT,
                        durability=DurabilityPolicy.VOLATILE)
COMMAND_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.VOLATILE)
STATUS_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                        durability=DurabilityPolicy.TRANSIENT_LOCAL)
PX4_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)

# hardware.profile.Source.qos names -> the profile a subscriber uses for that source.
BY_NAME = {"sensor": SENSOR_QOS, "reliable": COMMAND_QOS, "px4": PX4_QOS}


def for_source(name: str) -> QoSProfile:
    """The subscription QoS for a profile source's ``qos`` entry (``sensor`` | ``reliable`` | ``px4``)."""
    if name not in BY_NAME:
        raise ValueError(f"unknown QoS name {name!r}; known: {sorted(BY_NAME)}")
    return BY_NAME[name]
