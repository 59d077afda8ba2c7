"""Own-MuJoCo quadrotor tasks: hover and tracking, at the velocity-set-point and the motor level.

Files: ``model`` (parameters, MJCF, mixer, motor model), ``randomization`` (a vehicle per seed),
``control`` (the cascade), ``disturbance`` (wind, pushes), ``references`` (figure eight, waypoints),
``env`` (:class:`QuadrotorEnv`), ``expert`` (:class:`QuadrotorExpert`), ``tasks`` (specs and
registration), ``bench`` (the measured numbers). Importing this package does not import MuJoCo.
"""

from sim.quadrotor.tasks import register_quadrotor_tasks

__all__ = ["register_quadrotor_tasks"]
