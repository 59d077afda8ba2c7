"""The simulated quadrotor flown by a trained policy over ROS 2: the sim bridge plays the vehicle.

    ros2 launch launch/quadrotor_sim.launch.py \
        checkpoint:=bench/results/suite/quadrotor-hover-v0-diffusion-cpu-1000/latest
    ros2 launch launch/quadrotor_sim.launch.py checkpoint:=... task:=robopolicy/quadrotor-track-v0

Parameters: config/quadrotor_sim.yaml.
"""

from pathlib import Path

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

CONFIG = Path(__file__).resolve().parent / "config" / "quadrotor_sim.yaml"


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("checkpoint", description="checkpoint directory (robopolicy train --out)"),
        DeclareLaunchArgument("task", default_value="robopolicy/quadrotor-hover-v0",
                              choices=["robopolicy/quadrotor-hover-v0", "robopolicy/quadrotor-track-v0"],
                              description="a velocity set-point quadrotor task"),
        DeclareLaunchArgument("publish_clock", default_value="false",
                              description="publish sim time on /clock (then run nodes with use_sim_time)"),
        Node(executable="robopolicy-sim-bridge", name="sim_bridge", output="screen",
             parameters=[str(CONFIG), {"task": LaunchConfiguration("task"),
                                       "publish_clock": LaunchConfiguration("publish_clock")}]),
        Node(executable="robopolicy-policy-node", name="policy_node", output="screen",
             parameters=[str(CONFIG), {"checkpoint": LaunchConfiguration("checkpoint")}]),
    ])
