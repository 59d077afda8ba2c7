"""The cascaded flight controller: position -> velocity -> attitude -> body rate -> motor mixing.

Inner loops (:class:`Cascade`) are what a flight controller runs onboard. The env runs them at the
physics rate (500 Hz) to follow a ``velocity_setpoint`` action; the ``-motors`` expert runs the
same cascade at its own control rate and sends the motor commands. The outer loop
(:func:`position_loop`) turns a reference position and velocity into a velocity set point: it is
the expert of the velocity-level tasks.

Every loop is a proportional controller on the error of the loop above it, plus an integral on the
velocity error (it absorbs an unknown mass, thrust constant and steady wind). The cascade knows
only the nominal vehicle; domain randomisation makes the real one differ.

Frames: world ENU, body FLU; ``R`` is the body-to-world rotation; angular rates are in the body frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.quadrotor.model import GRAVITY, QuadParams, mixer_matrix, thrust_to_command

E_Z = np.array([0.0, 0.0, 1.0])


@dataclass(frozen=True)
class Gains:
    """Loop gains, each a bandwidth in rad/s (accelerations are per unit of mass or inertia).

    Tuned on the randomised vehicles: stiffer inner loops (rate 35, attitude 12) start to oscillate
    at the motor level, where the cascade runs at 100 Hz behind up to 10 ms latency and 50 ms motor lag.
    """

    pos_p: float = 3.0  # (m/s) per m of position error
    vel_p: float = 7.0  # (m/s^2) per m/s of velocity error
    vel_i: float = 15.0  # (m/s^2) per m of integrated velocity error; learns a 40 % thrust deficit in ~1 s
    vel_i_limit: float = 5.0  # m/s^2, anti-windup clamp; covers a 1.2 kg vehicle on 0.85x thrust (4 m/s^2)
    max_tilt: float = 0.6  # rad; bounds the horizontal acceleration the velocity loop asks for
    att_p: float = 10.0  # (rad/s) per rad of tilt error
    rate_p: float = 30.0  # (rad/s^2) per rad/s of rate error (roll, pitch)
    yaw_rate_p: float = 6.0  # (rad/s^2) per rad/s of yaw rate error
    max_yaw_torque: float = 0.1  # N m; yaw is the weakest axis and must not starve roll and pitch


# --------------------------------------------------------------------------------------- helpers
def quat_to_rotmat(q: np.ndarray) -> np.ndarray:
    """Unit quaternion ``wxyz`` -> (3, 3) rotation matrix (body to world)."""
    w, x, y, z = q
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """3-vector cross product; ``np.cross`` costs ~50 us a call and the env calls this 1000 times a second."""
    return np.array([a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]])


def yaw_of(R: np.ndarray) -> float:
    """Heading of the body x axis in the world xy plane (rad, ENU: 0 = east, counter-clockwise)."""
    return float(np.arctan2(R[1, 0], R[0, 0]))


def wrap_angle(a: float) -> float:
    return float((a + np.pi) % (2 * np.pi) - np.pi)


# --------------------------------------------------------------------------------------- loops
def position_loop(
    position: np.ndarray, ref_position: np.ndarray, ref_velocity: np.ndarray, gains: Gains, max_speed: float
) -> np.ndarray:
    """Velocity set point (3,) that drives the position to the reference: feed-forward plus P."""
    v = ref_velocity + gains.pos_p * (ref_position - position)
    return np.clip(v, -max_speed, max_speed)


def heading_hold(R: np.ndarray, yaw_ref: float = 0.0, gain: float = 1.0, max_rate: float = 1.0) -> float:
    """Yaw rate set point (rad/s) that turns the heading to ``yaw_ref``."""
    return float(np.clip(gain * wrap_angle(yaw_ref - yaw_of(R)), -max_rate, max_rate))


class Cascade:
    """Velocity, attitude and rate loops plus the X-frame mixer, tuned for the nominal vehicle.

    ``reset()`` clears the velocity integral; call it at the start of every episode.
    """

    def __init__(self, params: QuadParams = QuadParams(), gains: Gains = Gains()):
        self.params = params
        self.gains = gains
        self.inertia = np.asarray(params.inertia, dtype=float)
        self.unmix = np.linalg.inv(mixer_matrix(params))
        self.max_accel_xy = GRAVITY * np.tan(gains.max_tilt)
        self.vel_integral = np.zeros(3)

    def reset(self) -> None:
        self.vel_integral = np.zeros(3)

    def velocity(
        self,
        R: np.ndarray,
        velocity: np.ndarray,
        omega: np.ndarray,
        v_sp: np.ndarray,
        yaw_rate_sp: float,
        dt: float,
    ) -> np.ndarray:
        """Velocity set point (world, m/s) and yaw rate (rad/s) -> 4 motor commands in [-1, 1]."""
        g = self.gains
        err = v_sp - velocity
        integral = self.vel_integral + g.vel_i * dt * err  # np.minimum/maximum: np.clip's wrapper is slow
        self.vel_integral = np.minimum(np.maximum(integral, -g.vel_i_limit), g.vel_i_limit)
        accel = g.vel_p * err + self.vel_integral
        # Tilt limit: scale the horizontal acceleration down, keep its direction; never ask for free fall.
        horizontal = np.hypot(accel[0], accel[1])
        if horizontal > self.max_accel_xy:
            accel[:2] *= self.max_accel_xy / horizontal
        accel[2] = max(accel[2], -0.7 * GRAVITY)
        force = self.params.mass * (accel + GRAVITY * E_Z)  # what the rotors must supply, world frame
        return self.attitude(R, omega, force, yaw_rate_sp)

    def attitude(self, R: np.ndarray, omega: np.ndarray, force: np.ndarray, yaw_rate_sp: float) -> np.ndarray:
        """Desired world force (N) and yaw rate -> motor commands: tilt the thrust axis onto the force."""
        z_body = R[:, 2]
        z_des = force / np.linalg.norm(force)
        # The axis-angle error between the two thrust axes, in the body frame (its z part is zero).
        err_body = R.T @ cross(z_body, z_des)
        rate_sp = np.array([self.gains.att_p * err_body[0], self.gains.att_p * err_body[1], yaw_rate_sp])
        thrust = max(float(force @ z_body), 0.0)  # only the part along the thrust axis lifts
        return self.rates(omega, rate_sp, thrust)

    def rates(self, omega: np.ndarray, rate_sp: np.ndarray, thrust: float) -> np.ndarray:
        """Body rate set point (rad/s) and collective thrust (N) -> motor commands in [-1, 1]."""
        g = self.gains
        ang_accel = np.array([g.rate_p, g.rate_p, g.yaw_rate_p]) * (rate_sp - omega)
        torque = self.inertia * ang_accel + cross(omega, self.inertia * omega)
        torque[2] = min(max(torque[2], -g.max_yaw_torque), g.max_yaw_torque)
        return self.mix(thrust, torque)

    def mix(self, thrust: float, torque: np.ndarray) -> np.ndarray:
        """Collective thrust (N) and body torque (N m) -> motor commands in [-1, 1] (FR, BR, BL, FL)."""
        rotor = self.unmix @ np.array([thrust, torque[0], torque[1], torque[2]])
        return thrust_to_command(rotor, self.params.max_thrust)
