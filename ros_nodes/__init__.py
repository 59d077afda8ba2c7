"""rclpy nodes of the ROS 2 deployment path (DESIGN §9): policy node, sim bridge, recorder, teleop.

``convert`` (messages <-> numpy), ``qos`` (the three QoS profiles) and ``observation`` (profile-driven
observation assembly) are shared by every node. Importing this package imports nothing heavy.
"""
