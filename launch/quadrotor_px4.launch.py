"""A trained velocity set-point policy on a PX4 vehicle, through MAVROS-style set-point topics.

    ros2 launch launch/quadrotor_px4.launch.py checkpoint:=runs/hover/latest

The policy node publishes ``geometry_msgs/TwistStamped`` (world ENU, yaw rate in ``angular.z``) on
``/mavros/setpoint_velocity/cmd_vel``; MAVROS turns it into PX4 offboard set points (NED). Start
MAVROS (``fcu_url`` for your link) yourself, and arm and switch to OFFBOARD from the ground station
only once set points stream: PX4 needs them at > 2 Hz before and during offboard. When its input is
stale the node streams zero velocity (hover); the heartbeat dead-man (``policy/heartbeat``) and
``policy/estop`` do the same. Observations follow the ``px4`` profile (hardware/profiles/px4.yaml).
Parameters: config/quadrotor_px4.yaml.
"""

from pathlib import Path

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

CONFIG = Path(__file__).resolve().parent / "config" / "quadrotor_px4.yaml"


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("checkpoint", description="checkpoint directory (robopolicy train --out)"),
        DeclareLaunchArgument("namespace", default_value="", description="the vehicle's namespace, if any"),
        Node(executable="robopolicy-policy-node", name="policy_node", output="screen",
             namespace=LaunchConfiguration("namespace"),
             parameters=[str(CONFIG), {"checkpoint": LaunchConfiguration("checkpoint")}]),
    ])
