"""Reference trajectories for the tracking task: position and velocity (world ENU) as functions of time.

- :class:`FigureEight`: a horizontal Lissajous figure eight ``c + Rz(psi) [A sin wt, A/2 sin 2wt, 0]``
  at constant height, centred at the origin. Per episode: amplitude A ~ U[0.7, 1.1] m, period
  ~ U[10, 14] s, heading psi ~ U[-pi, pi], height ~ U[0.8, 1.5] m. Its speed peaks at
  ``sqrt(2) A w`` <= 0.98 m/s, so in any heading it stays inside the 1 m/s per-axis action bound.
- :class:`Waypoints`: random waypoints in the box [-1.5, 1.5]^2 x [0.6, 1.6] m, joined by
  minimum-jerk segments that average 0.35 m/s (peak 0.66 m/s); the last one is held.
"""

from __future__ import annotations

import numpy as np

KINDS = ("figure8", "waypoints")


class FigureEight:
    def __init__(self, amplitude: float, period: float, heading: float, height: float):
        self.amplitude, self.period, self.heading, self.height = amplitude, period, heading, height
        self.omega = 2.0 * np.pi / period
        c, s = np.cos(heading), np.sin(heading)
        self.rot = np.array([[c, -s], [s, c]])

    @classmethod
    def sample(cls, rng: np.random.Generator, duration: float) -> "FigureEight":
        amplitude, period = rng.uniform(0.7, 1.1), rng.uniform(10.0, 14.0)
        return cls(amplitude, period, heading=rng.uniform(-np.pi, np.pi), height=rng.uniform(0.8, 1.5))

    def __call__(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        a, w = self.amplitude, self.omega
        p = self.rot @ np.array([a * np.sin(w * t), 0.5 * a * np.sin(2 * w * t)])
        v = self.rot @ np.array([a * w * np.cos(w * t), a * w * np.cos(2 * w * t)])
        return np.array([p[0], p[1], self.height]), np.array([v[0], v[1], 0.0])


class Waypoints:
    MEAN_SPEED = 0.35  # m/s; a minimum-jerk segment peaks at 1.875x its mean speed
    LOW = np.array([-1.5, -1.5, 0.6])
    HIGH = np.array([1.5, 1.5, 1.6])

    def __init__(self, points: np.ndarray, durations: np.ndarray):
        self.points = np.asarray(points, dtype=float)  # (N, 3)
        self.starts = np.concatenate([[0.0], np.cumsum(durations)])  # (N,)
        self.durations = np.asarray(durations, dtype=float)  # (N-1,)

    @classmethod
    def sample(cls, rng: np.random.Generator, duration: float) -> "Waypoints":
        points = [rng.uniform(cls.LOW, cls.HIGH)]
        durations: list[float] = []
        while sum(durations) < duration:
            nxt = rng.uniform(cls.LOW, cls.HIGH)
            durations.append(max(2.0, float(np.linalg.norm(nxt - points[-1])) / cls.MEAN_SPEED))
            points.append(nxt)
        return cls(np.array(points), np.array(durations))

    def __call__(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        i = int(np.searchsorted(self.starts, t, side="right")) - 1
        if i >= len(self.durations):
            return self.points[-1].copy(), np.zeros(3)
        T = self.durations[i]
        s = (t - self.starts[i]) / T
        blend = 10 * s**3 - 15 * s**4 + 6 * s**5  # minimum jerk: zero velocity and acceleration at both ends
        rate = (30 * s**2 - 60 * s**3 + 30 * s**4) / T
        delta = self.points[i + 1] - self.points[i]
        return self.points[i] + blend * delta, rate * delta


def sample_reference(kind: str, rng: np.random.Generator, duration: float):
    if kind == "figure8":
        return FigureEight.sample(rng, duration)
    if kind == "waypoints":
        return Waypoints.sample(rng, duration)
    raise ValueError(f"unknown reference {kind!r}; choose one of {KINDS}")
