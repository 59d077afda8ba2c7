"""robopolicy: demonstrations in zarr, action-chunking generative policies, one runner for sim and ROS 2.

Importing this package needs neither MuJoCo nor ROS 2; those arrive through the `sim` and `ros` extras.
"""

__version__ = "0.1.0"
