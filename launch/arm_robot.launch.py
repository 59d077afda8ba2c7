"""A trained policy on a real arm under ros2_control (UR5e or a low-cost arm).

    ros2 launch launch/arm_robot.launch.py checkpoint:=runs/ur5e-pick/latest profile:=ur5e

Start the robot's own bringup first (driver, ``joint_state_broadcaster``, a
``joint_trajectory_controller`` over the profile's joints with the gripper last). The policy node
reads ``joint_states`` and the cameras of the profile and publishes ``joint_trajectory``, remapped
here onto the controller's ``/<controller>/joint_trajectory``. The profiles have a heartbeat dead-man
(``policy/heartbeat``, std_msgs/Empty): without it the node holds (publishes nothing), so wire it to
a foot pedal or a held key. ``policy/estop`` (Trigger) latches a stop. Parameters:
config/arm_robot.yaml.
"""

from pathlib import Path

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

CONFIG = Path(__file__).resolve().parent / "config" / "arm_robot.yaml"


def generate_launch_description():
    controller = LaunchConfiguration("controller")
    return LaunchDescription([
        DeclareLaunchArgument("checkpoint", description="checkpoint directory (robopolicy train --out)"),
        DeclareLaunchArgument("profile", default_value="ur5e", choices=["ur5e", "lowcost_arm"],
                              description="robot profile (hardware/profiles)"),
        DeclareLaunchArgument("controller", default_value="joint_trajectory_controller",
                              description="name of the ros2_control joint trajectory controller"),
        DeclareLaunchArgument("namespace", default_value="", description="the robot's namespace, if any"),
        Node(executable="robopolicy-policy-node", name="policy_node", output="screen",
             namespace=LaunchConfiguration("namespace"),
             parameters=[str(CONFIG), {"checkpoint": LaunchConfiguration("checkpoint"),
                                       "profile": LaunchConfiguration("profile")}],
             remappings=[("joint_trajectory", ["/", controller, "/joint_trajectory"])]),
    ])
