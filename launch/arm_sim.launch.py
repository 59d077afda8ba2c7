"""The simulated Panda driven by a trained policy over ROS 2: the sim bridge plays the robot.

    ros2 launch launch/arm_sim.launch.py checkpoint:=runs/lift/latest \
        [task:=robopolicy/robosuite-Lift-joint-v0]

The checkpoint must be a ``joint_pos`` policy of a robosuite ``-joint`` task (``robopolicy train --task
robopolicy/robosuite-Lift-joint-v0 ...``). Parameters: config/arm_sim.yaml.
"""

from pathlib import Path

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

CONFIG = Path(__file__).resolve().parent / "config" / "arm_sim.yaml"


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("checkpoint", description="checkpoint directory (robopolicy train --out)"),
        DeclareLaunchArgument("task", default_value="robopolicy/robosuite-Lift-joint-v0",
                              description="a robosuite -joint task"),
        # package=None: our console scripts are found on PATH (the activated .venv), no colcon needed
        Node(executable="robopolicy-sim-bridge", name="sim_bridge", output="screen",
             parameters=[str(CONFIG), {"task": LaunchConfiguration("task")}]),
        Node(executable="robopolicy-policy-node", name="policy_node", output="screen",
             parameters=[str(CONFIG), {"checkpoint": LaunchConfiguration("checkpoint")}]),
    ])
