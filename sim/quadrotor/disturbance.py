"""External disturbances: wind (steady plus gusts) acting through body drag, and pushes (impulses).

Wind. Per episode a steady horizontal wind of speed U[0, ``wind_speed``] m/s from a uniform random
direction, plus gusts: an Ornstein-Uhlenbeck velocity per axis (horizontal std U[0, ``gust_std``] m/s,
vertical std a third of it, correlation time ``gust_tau``). The air pushes the body with a linear
drag ``drag_coeff * (wind - velocity)`` (0.15 N per m/s on the nominal vehicle: a 3 m/s wind is
0.45 N, 5 % of the weight).

Pushes. Starting after ``push_start`` s, a push every U[``push_interval``] s: an impulse of
U[``push_impulse``] N s in a uniformly random direction (its vertical part halved), spread over
``push_duration`` s. On the 1 kg nominal vehicle 0.3 N s is a 0.3 m/s kick.

Everything is drawn from the generator handed to :meth:`Disturbances.reset`, so it follows the seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DisturbanceConfig:
    wind_speed: float = 3.0  # m/s, upper bound of the steady horizontal wind
    gust_std: float = 1.0  # m/s, upper bound of the horizontal gust standard deviation
    gust_tau: float = 1.0  # s
    push_impulse: tuple[float, float] = (0.1, 0.3)  # N s; (0, 0) switches pushes off
    push_interval: tuple[float, float] = (2.0, 4.0)  # s between pushes
    push_start: float = 1.0  # s
    push_duration: float = 0.02  # s

    @property
    def pushes(self) -> bool:
        return self.push_impulse[1] > 0


HOVER_DISTURBANCES = DisturbanceConfig()
TRACK_DISTURBANCES = DisturbanceConfig(wind_speed=2.0, gust_std=0.5, push_impulse=(0.0, 0.0))
CALM = DisturbanceConfig(wind_speed=0.0, gust_std=0.0, push_impulse=(0.0, 0.0))


class Disturbances:
    """Steps the wind and the pushes at the physics rate; :meth:`force` is the world force on the body."""

    def __init__(self, config: DisturbanceConfig, dt: float):
        self.config = config
        self.dt = dt

    def reset(self, rng: np.random.Generator) -> dict:
        c = self.config
        self.rng = rng
        heading = rng.uniform(-np.pi, np.pi)
        speed = rng.uniform(0.0, c.wind_speed)
        self.steady = np.array([speed * np.cos(heading), speed * np.sin(heading), 0.0])
        std = rng.uniform(0.0, c.gust_std)
        self.gust_std = np.array([std, std, std / 3.0])
        self.gust = self.gust_std * rng.standard_normal(3)  # start in the stationary distribution
        self.t = 0.0
        self.push_force = np.zeros(3)
        self.push_until = -1.0
        self.next_push = c.push_start + rng.uniform(*c.push_interval) if c.pushes else np.inf
        self.pushes = 0
        return {"wind_steady": self.steady.tolist(), "gust_std": float(std)}

    @property
    def wind(self) -> np.ndarray:
        return self.steady + self.gust

    def step(self, velocity: np.ndarray, drag_coeff: float) -> np.ndarray:
        """Advance one physics step; returns the disturbance force (3,) on the body, world frame, N."""
        c, dt = self.config, self.dt
        if c.gust_tau > 0:  # exact discretisation of the OU process
            a = np.exp(-dt / c.gust_tau)
            self.gust = a * self.gust + self.gust_std * np.sqrt(1.0 - a * a) * self.rng.standard_normal(3)
        if self.t >= self.next_push:
            direction = self.rng.standard_normal(3)
            direction[2] *= 0.5
            direction /= np.linalg.norm(direction)
            self.push_force = direction * self.rng.uniform(*c.push_impulse) / c.push_duration
            self.push_until = self.t + c.push_duration
            self.next_push = self.t + self.rng.uniform(*c.push_interval)
            self.pushes += 1
        force = drag_coeff * (self.wind - velocity)
        if self.t < self.push_until - 1e-9:
            force = force + self.push_force
        self.t += dt
        return force
