"""Record demonstrations by teleoperation in simulation: teleop -> sim bridge -> recorder -> zarr store.

    ros2 launch launch/record.launch.py store:=data/lift_teleop.zarr
    ros2 launch launch/record.launch.py store:=data/hover.zarr \
        task:=robopolicy/quadrotor-hover-v0 profile:=sim_quadrotor

The keyboard teleop opens its own terminal (``teleop_prefix``, ``xterm -e`` by default; a launched
node has no terminal of its own); ``teleop_prefix:=''`` with ``teleop_device:=gamepad`` uses the
first ``/dev/input/js*``. In the teleop window: Enter starts an episode and Enter again commits it,
Backspace discards it, Esc quits; the keys that move the robot are printed there. Episodes go to
``store`` (appended if it exists); ``robopolicy info STORE`` shows them. The same recorder runs on a
real robot: leave the sim bridge out and use the robot's profile. Parameters: config/record.yaml.
"""

from pathlib import Path

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

CONFIG = Path(__file__).resolve().parent / "config" / "record.yaml"


def generate_launch_description():
    profile, task = LaunchConfiguration("profile"), LaunchConfiguration("task")
    return LaunchDescription([
        DeclareLaunchArgument("store", description="zarr store to append the episodes to"),
        DeclareLaunchArgument("task", default_value="robopolicy/robosuite-Lift-joint-v0"),
        DeclareLaunchArgument("profile", default_value="sim_panda", choices=["sim_panda", "sim_quadrotor"]),
        DeclareLaunchArgument("teleop_device", default_value="keyboard", choices=["keyboard", "gamepad"]),
        DeclareLaunchArgument("teleop_prefix", default_value="xterm -e",
                              description="how to give the keyboard teleop a terminal"),
        Node(executable="robopolicy-sim-bridge", name="sim_bridge", output="screen",
             parameters=[str(CONFIG), {"task": task, "profile": profile}]),
        Node(executable="robopolicy-teleop", name="teleop", output="screen",
             prefix=LaunchConfiguration("teleop_prefix"),
             parameters=[str(CONFIG), {"profile": profile, "device": LaunchConfiguration("teleop_device")}]),
        Node(executable="robopolicy-recorder", name="recorder", output="screen",
             parameters=[str(CONFIG), {"store": LaunchConfiguration("store"), "profile": profile,
                                       "task": task, "teleop": LaunchConfiguration("teleop_device")}]),
    ])
