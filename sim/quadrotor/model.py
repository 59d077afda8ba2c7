"""The quadrotor: physical parameters, its MJCF, rotor geometry, the X-frame mixer and the motor model.

A generic ~1 kg X-frame quadrotor (a 450 mm class frame: 0.17 m arms, 6 N per rotor, thrust to
weight 2.4). Body frame FLU (x forward, y left, z up); rotors in RAPTOR's order ``[FR, BR, BL, FL]``
(deployment notes §2.2), so a ``motor_commands`` action maps one to one onto that convention.

Motor model (per rotor, what a normalised command means): the command ``u`` in ``[-1, 1]`` asks for a
normalised rotor speed ``s* = (u + 1) / 2``; the rotor speed follows it with a first-order lag
``motor_tau``, and the thrust is ``max_thrust * s**2`` (thrust grows with the square of the speed).
Each rotor also pushes back on the body with a yaw torque ``± torque_coeff * thrust``.

In MuJoCo each rotor is a ``motor`` actuator on a site at the rotor hub with
``gear="0 0 1 0 0 ±torque_coeff"``: its control is the rotor thrust in newtons, applied along the body
z axis, plus the reaction torque. Domain randomisation edits the compiled model in place
(:func:`apply_params`): body mass and inertia, rotor site positions (arm length) and actuator gears.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np

GRAVITY = 9.81
PHYSICS_DT = 0.002  # 500 Hz
ROTORS = ("fr", "br", "bl", "fl")  # RAPTOR / Crazyflie motor order
# Which way each rotor's reaction torque turns the body about +z, per newton of thrust (times
# torque_coeff). Diagonal rotors spin the same way so that the four torques cancel at hover.
ROTOR_SPIN = np.array([-1.0, 1.0, -1.0, 1.0])
# Unit direction of each arm in the body xy plane (X frame, arms at 45 degrees to x).
_H = 1.0 / math.sqrt(2.0)
ROTOR_DIRECTIONS = np.array([[_H, -_H], [-_H, -_H], [-_H, _H], [_H, _H]])


@dataclass(frozen=True)
class QuadParams:
    """Physical parameters of one vehicle. The defaults are the nominal vehicle.

    Units: kg, kg m^2, m, N, m (yaw torque per newton of thrust), s, physics steps.
    """

    mass: float = 1.0
    inertia: tuple[float, float, float] = (0.0082, 0.0082, 0.0149)
    arm_length: float = 0.17  # hub centre to rotor axis
    max_thrust: float = 6.0  # per rotor, at command +1
    torque_coeff: float = 0.016
    motor_tau: float = 0.03  # rotor speed time constant
    latency_steps: int = 0  # an action acts this many physics steps after the env receives it
    drag_coeff: float = 0.15  # N per m/s of airspeed, linear body drag (what wind pushes with)

    def __post_init__(self):
        if self.mass <= 0 or self.arm_length <= 0 or self.max_thrust <= 0 or self.motor_tau <= 0:
            raise ValueError(f"mass, arm_length, max_thrust and motor_tau must be positive: {self}")
        if len(self.inertia) != 3 or min(self.inertia) <= 0:
            raise ValueError(f"inertia must be 3 positive principal moments, got {self.inertia}")
        if self.latency_steps < 0:
            raise ValueError(f"latency_steps must be >= 0, got {self.latency_steps}")

    @property
    def thrust_to_weight(self) -> float:
        return 4.0 * self.max_thrust / (self.mass * GRAVITY)

    def rotor_positions(self) -> np.ndarray:
        """(4, 3) rotor hub positions in the body frame, order FR, BR, BL, FL."""
        xy = self.arm_length * ROTOR_DIRECTIONS
        return np.concatenate([xy, np.zeros((4, 1))], axis=1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["inertia"] = list(self.inertia)
        return d

    def replace(self, **changes) -> "QuadParams":
        return replace(self, **changes)


def mixer_matrix(params: QuadParams) -> np.ndarray:
    """(4, 4) map from rotor thrusts (FR, BR, BL, FL) to [collective thrust, roll, pitch, yaw torque]."""
    pos = params.rotor_positions()
    return np.stack([
        np.ones(4),
        pos[:, 1],  # tau_x = y * f
        -pos[:, 0],  # tau_y = -x * f
        ROTOR_SPIN * params.torque_coeff,
    ])


def thrust_to_command(thrust: np.ndarray, max_thrust: float) -> np.ndarray:
    """Steady-state inverse of the motor model: rotor thrusts (N) -> normalised commands in [-1, 1]."""
    speed = np.sqrt(np.minimum(np.maximum(thrust / max_thrust, 0.0), 1.0))
    return 2.0 * speed - 1.0


def command_to_speed(command: np.ndarray) -> np.ndarray:
    """Normalised commands in [-1, 1] -> normalised rotor speed set points in [0, 1]."""
    return (np.minimum(np.maximum(command, -1.0), 1.0) + 1.0) * 0.5


def hover_speed(params: QuadParams) -> float:
    """Normalised rotor speed at which the four rotors carry the vehicle's weight."""
    return math.sqrt(params.mass * GRAVITY / (4.0 * params.max_thrust))


def build_mjcf(params: QuadParams = QuadParams()) -> str:
    """The MJCF scene (quadrotor on a free joint above a floor) as an XML string."""
    ixx, iyy, izz = params.inertia
    rotors = params.rotor_positions()
    arms = "\n".join(
        f'      <geom name="arm_{n}" type="capsule" fromto="0 0 0 {p[0]:.5f} {p[1]:.5f} 0" size="0.008" '
        'material="frame"/>'
        for n, p in zip(ROTORS, rotors)
    )
    props = "\n".join(
        f'      <geom name="prop_{n}" type="cylinder" pos="{p[0]:.5f} {p[1]:.5f} 0.015" size="0.065 0.003" '
        f'material="{"front" if n in ("fr", "fl") else "prop"}" contype="0" conaffinity="0"/>'
        for n, p in zip(ROTORS, rotors)
    )
    sites = "\n".join(
        f'      <site name="rotor_{n}" pos="{p[0]:.5f} {p[1]:.5f} 0" size="0.01"/>'
        for n, p in zip(ROTORS, rotors)
    )
    # ctrlrange leaves room for a randomised max_thrust above the nominal one; the env computes thrusts.
    actuators = "\n".join(
        f'    <motor name="thrust_{n}" site="rotor_{n}" gear="0 0 1 0 0 {s * params.torque_coeff:.6f}" '
        f'ctrllimited="true" ctrlrange="0 {2.0 * params.max_thrust:.4f}"/>'
        for n, s in zip(ROTORS, ROTOR_SPIN)
    )
    return f"""<mujoco model="robopolicy_quadrotor">
  <compiler angle="radian"/>
  <option timestep="{PHYSICS_DT}" gravity="0 0 -{GRAVITY}" density="0" viscosity="0"/>
  <visual><global offwidth="640" offheight="640"/></visual>
  <asset>
    <texture name="grid" type="2d" builtin="checker" rgb1=".25 .28 .32" rgb2=".35 .38 .42"
             width="256" height="256"/>
    <material name="grid" texture="grid" texrepeat="8 8"/>
    <material name="frame" rgba=".15 .15 .15 1"/>
    <material name="prop" rgba=".2 .4 .8 .6"/>
    <material name="front" rgba=".9 .3 .2 .6"/>
  </asset>
  <worldbody>
    <light pos="0 0 5" dir="0 0 -1" directional="true"/>
    <geom name="floor" type="plane" size="8 8 0.1" material="grid"/>
    <site name="target" pos="0 0 1" size="0.02" rgba="0 1 0 .5"/>
    <camera name="overview" mode="targetbody" target="quadrotor" pos="3 -3 2.5"/>
    <body name="quadrotor" pos="0 0 1">
      <freejoint name="root"/>
      <inertial pos="0 0 0" mass="{params.mass}" diaginertia="{ixx} {iyy} {izz}"/>
      <geom name="hub" type="box" size="0.06 0.04 0.025" material="frame"/>
{arms}
{props}
{sites}
      <camera name="chase" mode="trackcom" pos="-1.2 0 0.5" xyaxes="0 -1 0 0.38 0 0.92"/>
    </body>
  </worldbody>
  <actuator>
{actuators}
  </actuator>
</mujoco>
"""


def apply_params(model, params: QuadParams, body_id: int, site_ids: np.ndarray) -> None:
    """Write a vehicle's mass, inertia, arm length and yaw torque coefficient into a compiled model.

    The motor constants that are not MuJoCo's (max thrust, time constant) and the latency live in the
    env, which reads them from ``params`` directly.
    """
    model.body_mass[body_id] = params.mass
    model.body_inertia[body_id] = params.inertia
    model.site_pos[site_ids] = params.rotor_positions()
    model.actuator_gear[:, 5] = ROTOR_SPIN * params.torque_coeff
