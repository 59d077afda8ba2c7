"""Domain randomisation: a new vehicle per episode, drawn from the episode's seed.

In the spirit of RAPTOR (Eschmann et al. 2025; deployment notes §2.2): the policy never sees the
parameters, so it has to fly any vehicle of the family. The ranges are narrower than RAPTOR's
(32 g to 2.4 kg) because one nominal cascade (and expert) flies them all; they still move thrust to
weight between about 1.7 and 3.5.

| parameter       | nominal             | range per episode                        |
|-----------------|---------------------|------------------------------------------|
| mass            | 1.0 kg              | x U[0.8, 1.2]                            |
| inertia         | (8.2, 8.2, 14.9) g m^2 | x U[0.8, 1.2] (roll = pitch, yaw apart) |
| arm length      | 0.17 m              | x U[0.85, 1.15]                          |
| max thrust      | 6 N per rotor       | x U[0.85, 1.15]                          |
| torque coeff    | 0.016 m             | x U[0.8, 1.2]                            |
| motor tau       | 0.03 s              | U[0.02, 0.05] s                          |
| latency         | 0                   | integer U{0, ..., 5} physics steps (0-10 ms) |
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.quadrotor.model import QuadParams


@dataclass(frozen=True)
class RandomizationRanges:
    """Multiplicative ranges (lo, hi) on the nominal parameters, absolute ones for tau and latency."""

    mass: tuple[float, float] = (0.8, 1.2)
    inertia: tuple[float, float] = (0.8, 1.2)
    arm_length: tuple[float, float] = (0.85, 1.15)
    max_thrust: tuple[float, float] = (0.85, 1.15)
    torque_coeff: tuple[float, float] = (0.8, 1.2)
    motor_tau: tuple[float, float] = (0.02, 0.05)  # seconds
    latency_steps: tuple[int, int] = (0, 5)  # physics steps, both ends included


NO_RANDOMIZATION = RandomizationRanges(
    mass=(1.0, 1.0), inertia=(1.0, 1.0), arm_length=(1.0, 1.0), max_thrust=(1.0, 1.0),
    torque_coeff=(1.0, 1.0), motor_tau=(0.03, 0.03), latency_steps=(0, 0),
)


def sample_params(
    rng: np.random.Generator,
    ranges: RandomizationRanges = RandomizationRanges(),
    nominal: QuadParams = QuadParams(),
) -> QuadParams:
    """One vehicle: the nominal parameters scaled by factors drawn from ``ranges``."""

    def u(lo_hi: tuple[float, float]) -> float:
        return float(rng.uniform(*lo_hi))

    roll_pitch, yaw = u(ranges.inertia), u(ranges.inertia)
    ixx, iyy, izz = nominal.inertia
    lo, hi = ranges.latency_steps
    return nominal.replace(
        mass=nominal.mass * u(ranges.mass),
        inertia=(ixx * roll_pitch, iyy * roll_pitch, izz * yaw),
        arm_length=nominal.arm_length * u(ranges.arm_length),
        max_thrust=nominal.max_thrust * u(ranges.max_thrust),
        torque_coeff=nominal.torque_coeff * u(ranges.torque_coeff),
        motor_tau=u(ranges.motor_tau),
        latency_steps=int(rng.integers(lo, hi + 1)),
    )
