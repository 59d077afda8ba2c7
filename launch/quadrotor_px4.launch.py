"""A trained velocity set-point policy on a PX4 vehicle in offboard mode, through uXRCE-DDS.

    ros2 launch launch/quadrotor_px4.launch.py checkpoint:=runs/hover/latest

The policy node follows the ``px4`` profile (hardware/profiles/px4.yaml): it reads
``/fmu/out/vehicle_odometry`` (NED/FRD, converted to the ENU/FLU state the policy was trained on),
publishes velocity-only ``px4_msgs/TrajectorySetpoint`` (NED) on ``/fmu/in/trajectory_setpoint`` and
streams ``OffboardControlMode`` at 10 Hz, which PX4 needs at > 2 Hz before and during offboard. Build
``px4_msgs`` for your firmware in your workspace and run the Micro XRCE-DDS agent yourself; arm and switch to
OFFBOARD from the ground station once set points stream. When its input is stale the node streams zero
velocity (hover); the heartbeat dead-man (``policy/heartbeat``) and ``policy/estop`` do the same.
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
