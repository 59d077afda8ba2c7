"""The safety filter between a policy and the command publisher. Pure numpy; time is always an argument.

Each control tick the ROS node calls ``step(action, now, obs_time, measured)`` with the policy's
un-normalised action ``(A,)``, the current time, the stamp of the observation it came from, and the
robot's measured value of each action dimension (joint positions; a quadrotor's velocity and yaw rate;
NaN where the robot does not report one). It gets a :class:`SafetyDecision` back: the command to
publish, or ``None`` for "publish nothing", and the reasons, for diagnostics.

In order, a tick is held when:

1. the e-stop is latched (``estop()``; cleared only by ``reset_estop`` while observations are fresh);
2. the heartbeat dead-man has not been fed within the profile's timeout (if the profile has one);
3. the observation is stale: older than ``obs_timeout_s`` (or that far in the future: a clock mismatch);
4. the action holds NaN or inf;
5. it is the first command since start, reset or a hold, it lies more than ``first_step.threshold``
   from the measured state, and the profile's guard mode is ``refuse`` (or the arm's state is unknown).

Holding follows the robot (DESIGN §9): an arm publishes nothing, so its position controller keeps the
last command (a zero would mean "go to the origin"); a quadrotor publishes the zero velocity set point,
since silence would trip its failsafe; a quadrotor flown by motor commands (hold ``failsafe``) publishes
nothing, on purpose, so that its flight controller's failsafe holds position. After a hold, the next
command of a silent robot is guarded like a first one.

Otherwise the command is clamped to the action limits and rate-limited: no dimension moves more than
``max_rate * dt`` from the reference, which is the last published command (``dt`` = the time since it,
at most one control period, so a slow publisher slows the robot instead of letting it jump) or, for a
first command, the measured state (``dt`` = one control period). With the ``ramp`` guard a first command
beyond the threshold is approached at ``ramp_scale * max_rate`` until the policy's command is back within
the threshold of what is published; then the normal rate applies. Dimensions whose reference is unknown
(a virtual gripper before its first command) are only clamped, and the limits win over the rate bound
when a measured state lies past a stop. Acceleration limits are not enforced here:
they are for timing the trajectories sent to the controller.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hardware.profile import UNMEASURED, RobotProfile

CLAMPED = "clamped"
RATE_LIMITED = "rate_limited"
JUMP_RAMPED = "jump_ramped"
JUMP_REFUSED = "jump_refused"
NAN_REJECTED = "nan_rejected"
HELD_STALE = "held_stale"
ESTOPPED = "estopped"
HEARTBEAT_LOST = "heartbeat_lost"
NO_STATE = "no_measured_state"

SUPPORTED_SEMANTICS = ("joint_pos", "velocity_setpoint", "motor_commands")


@dataclass(frozen=True)
class SafetyDecision:
    """``command``: what to publish, ``(A,)``, or None for nothing. ``held``: the policy's action was not
    used (the command, if any, is the hover set point). ``flags``: the reasons, e.g. {"clamped"}."""

    command: np.ndarray | None
    held: bool = False
    flags: frozenset[str] = field(default_factory=frozenset)
    detail: str = ""

    def to_dict(self) -> dict:
        command = None if self.command is None else [float(x) for x in self.command]
        return {"command": command, "held": self.held, "flags": sorted(self.flags), "detail": self.detail}


class SafetyFilter:
    """Clamp, rate-limit and guard commands for one robot profile; hold when anything is wrong.

    Example (the ROS node's control tick)::

        f = SafetyFilter(load_profile("ur5e"))
        f.heartbeat(now)                      # from the heartbeat subscriber
        d = f.step(action, now=now, obs_time=stamp, measured=joint_positions)
        if d.command is not None:
            publish(d.command)
    """

    def __init__(self, profile: RobotProfile):
        if profile.action_semantics not in SUPPORTED_SEMANTICS:
            raise ValueError(f"the safety filter handles {list(SUPPORTED_SEMANTICS)} actions, not "
                             f"{profile.action_semantics!r} (profile {profile.name!r})")
        self.profile = profile
        self.lower, self.upper = profile.action_limits[:, 0], profile.action_limits[:, 1]
        self.max_rate = profile.max_rate
        self.period = 1.0 / profile.control_rate_hz
        self.hover = np.zeros(profile.action_dim) if profile.hold == "hover" else None
        # Dimensions the robot reports (a virtual gripper does not): an arm must know them all to start.
        self.reported = np.concatenate([np.full(s.size, s.field != UNMEASURED) for s in profile.feedback])
        self._estop_reason: str | None = None
        self._last_heartbeat: float | None = None
        self.reset()

    # ---- episode and operator controls ------------------------------------------------------------

    def reset(self) -> None:
        """Forget the last command (new episode): the next is guarded like the first. Keeps the e-stop."""
        self._last: np.ndarray | None = None
        self._last_time: float | None = None
        self._ramping = False

    def heartbeat(self, now: float) -> None:
        self._last_heartbeat = float(now)

    def estop(self, reason: str = "e-stop requested") -> None:
        """Latch the e-stop: every tick holds until ``reset_estop`` succeeds."""
        self._estop_reason = reason
        self.reset()

    @property
    def estopped(self) -> bool:
        return self._estop_reason is not None

    def reset_estop(self, now: float, obs_time: float | None) -> tuple[bool, str]:
        """Clear the e-stop, only while observations are fresh. Returns (success, message) as Trigger does."""
        if not self.estopped:
            return True, "e-stop was not latched"
        stale = self._stale(now, obs_time)
        if stale:
            return False, f"e-stop stays latched: {stale}"
        self._estop_reason = None
        self.reset()
        return True, "e-stop reset; the next command is guarded against the measured state"

    # ---- the control tick -------------------------------------------------------------------------

    def step(self, action, now: float, obs_time: float | None, measured=None) -> SafetyDecision:
        """Filter one action ``(A,)`` taken at time ``now`` from an observation stamped ``obs_time``."""
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (self.profile.action_dim,):
            raise ValueError(f"expected an action of shape ({self.profile.action_dim},) for profile "
                             f"{self.profile.name!r}, got {action.shape}")
        if measured is not None:
            measured = np.asarray(measured, dtype=np.float64)
            if measured.shape != action.shape:
                raise ValueError(f"measured state has shape {measured.shape}, expected {action.shape}")
            measured = np.where(np.isfinite(measured), measured, np.nan)

        if self.estopped:
            return self._hold(now, ESTOPPED, self._estop_reason)
        if self.profile.heartbeat_timeout_s is not None:
            if self._last_heartbeat is None:
                return self._hold(now, HEARTBEAT_LOST, "no heartbeat received yet")
            silence = now - self._last_heartbeat
            if silence > self.profile.heartbeat_timeout_s:
                return self._hold(now, HEARTBEAT_LOST,
                                  f"no heartbeat for {silence:.3f} s > {self.profile.heartbeat_timeout_s} s")
        stale = self._stale(now, obs_time)
        if stale:
            return self._hold(now, HELD_STALE, stale)
        if not np.all(np.isfinite(action)):
            dims = np.flatnonzero(~np.isfinite(action)).tolist()
            return self._hold(now, NAN_REJECTED, f"non-finite action in dims {dims}")

        flags = set()
        target = np.clip(action, self.lower, self.upper)
        if np.any(target != action):
            flags.add(CLAMPED)

        if self._last is None:
            reference, dt = self._first_reference(measured), self.period
            if reference is None:
                return self._hold(now, NO_STATE, "no measured state to guard the first command against")
            known = np.isfinite(reference)
            gap = float(np.max(np.abs(target - reference)[known], initial=0.0))
            if gap > self.profile.first_step.threshold:
                if self.profile.first_step.mode == "refuse":
                    detail = (f"first command is {gap:.3f} from the measured state "
                              f"(> {self.profile.first_step.threshold})")
                    return self._hold(now, JUMP_REFUSED, detail, flags)
                self._ramping = True
        else:
            reference, dt = self._last, min(max(now - self._last_time, 0.0), self.period)

        scale = self.profile.first_step.ramp_scale if self._ramping else 1.0
        bound = self.max_rate * scale * dt
        known = np.isfinite(reference)
        delta = target - np.where(known, reference, 0.0)
        limited = np.clip(delta, -bound, bound)
        command = np.where(known, reference + limited, target)
        if np.any(known & (limited != delta)):
            flags.add(RATE_LIMITED)
        # A measured state outside the limits (noise at a joint stop) must not leak through: the limit wins
        # over the rate bound, since a controller faults on a target past a stop.
        inside = np.clip(command, self.lower, self.upper)
        if np.any(inside != command):
            flags.add(CLAMPED)
        command = inside
        if self._ramping:
            flags.add(JUMP_RAMPED)
            self._ramping = float(np.max(np.abs(target - command))) > self.profile.first_step.threshold

        self._last, self._last_time = command, float(now)
        return SafetyDecision(command=command.copy(), flags=frozenset(flags))

    # ---- helpers ----------------------------------------------------------------------------------

    def _first_reference(self, measured: np.ndarray | None) -> np.ndarray | None:
        """What the first command is measured against: the measured state; a quadrotor without one is
        assumed to hover (zero velocity). An arm missing any joint its profile says it reports has none."""
        if self.hover is not None:
            return self.hover.copy() if measured is None else np.where(np.isnan(measured), 0.0, measured)
        if measured is None or np.any(np.isnan(measured[self.reported])):
            return None
        return np.where(self.reported, measured, np.nan)

    def _stale(self, now: float, obs_time: float | None) -> str:
        if obs_time is None:
            return "no observation received yet"
        age = now - obs_time
        if abs(age) > self.profile.obs_timeout_s:
            return f"observation is {age:.3f} s old (timeout {self.profile.obs_timeout_s} s)"
        return ""

    def _hold(self, now: float, flag: str, detail: str, extra: set | None = None) -> SafetyDecision:
        flags = frozenset({flag} | (extra or set()))
        if self.hover is None:
            # Arm: publish nothing, the controller keeps the last command; a motor-level quadrotor: nothing,
            # its flight controller's failsafe holds. Re-guard the next one.
            self.reset()
            return SafetyDecision(command=None, held=True, flags=flags, detail=detail)
        # Quadrotor: zero velocity, and the slew limit resumes from it.
        self._ramping = False
        self._last, self._last_time = self.hover.copy(), float(now)
        return SafetyDecision(command=self.hover.copy(), held=True, flags=flags, detail=detail)
