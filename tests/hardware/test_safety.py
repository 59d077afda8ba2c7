"""The safety filter, tick by tick with explicit times: clamp, rate limit, first-step guard, NaN and stale
holds (an arm publishes nothing, a quadrotor hovers), the latched e-stop and the heartbeat dead-man."""

import numpy as np
import pytest

from hardware import SafetyFilter, list_profiles, load_profile, profile_from_dict
from hardware.safety import (CLAMPED, ESTOPPED, HEARTBEAT_LOST, HELD_STALE, JUMP_RAMPED, JUMP_REFUSED,
                             NAN_REJECTED, NO_STATE, RATE_LIMITED)

UR5E_HOME = np.array([0.0, -1.57, 1.57, -1.57, -1.57, 0.0, 0.0])
PANDA_HOME = np.array([0.0, 0.2, 0.0, -2.6, 0.0, 2.9, 0.8, -1.0])


def ur5e_filter(t: float = 0.0) -> SafetyFilter:
    f = SafetyFilter(load_profile("ur5e"))
    f.heartbeat(t)
    return f


def test_clamp_to_position_limits():
    f = SafetyFilter(load_profile("sim_panda"))
    measured = PANDA_HOME.copy()
    measured[0] = 2.89  # joint 1 close to its 2.8973 stop
    action = measured.copy()
    action[0] = 5.0
    d = f.step(action, now=0.0, obs_time=0.0, measured=measured)
    assert d.flags == {CLAMPED} and not d.held
    assert d.command[0] == pytest.approx(2.8973)
    np.testing.assert_array_equal(d.command[1:], PANDA_HOME[1:])


def test_measured_state_past_a_stop_is_not_passed_through():
    f = SafetyFilter(load_profile("sim_panda"))
    measured = PANDA_HOME.copy()
    measured[3] = 0.1  # joint 4's upper stop is -0.0698: a miscalibrated or compliant joint
    action = measured.copy()
    action[3] = -0.3  # inside the limits, but one rate-limited step from 0.1 would still be past the stop
    d = f.step(action, now=0.0, obs_time=0.0, measured=measured)
    assert d.command[3] == pytest.approx(-0.0698) and d.flags == {CLAMPED, RATE_LIMITED}


def test_rate_limit_is_exactly_max_rate_times_dt():
    f = ur5e_filter()
    d = f.step(UR5E_HOME, now=0.0, obs_time=0.0, measured=UR5E_HOME)
    np.testing.assert_array_equal(d.command, UR5E_HOME)
    assert d.flags == set()
    vmax = load_profile("ur5e").max_rate

    dt = 0.04  # under the 0.1 s control period
    d = f.step(UR5E_HOME + 1.0, now=dt, obs_time=dt, measured=UR5E_HOME)
    assert RATE_LIMITED in d.flags and CLAMPED in d.flags  # the gripper's 1.0 is past its 0.8 stop too
    np.testing.assert_allclose(d.command - UR5E_HOME, vmax * dt, rtol=1e-12)

    previous = d.command
    f.heartbeat(dt + 2.0)
    d = f.step(UR5E_HOME - 1.0, now=dt + 2.0, obs_time=dt + 2.0, measured=UR5E_HOME)
    # A late tick may not bank the waiting time: at most one control period's worth of motion.
    np.testing.assert_allclose(d.command[:6], previous[:6] - vmax[:6] * 0.1, rtol=1e-12)
    assert d.command[6] == 0.0  # gripper lower stop

    previous = d.command
    d = f.step(UR5E_HOME + 1.0, now=dt + 1.5, obs_time=dt + 1.5, measured=UR5E_HOME)  # time ran backwards
    np.testing.assert_array_equal(d.command, previous)

    # Small moves pass untouched.
    d = f.step(previous + 0.01, now=dt + 1.6, obs_time=dt + 1.6, measured=UR5E_HOME)
    limits = load_profile("ur5e").action_limits
    np.testing.assert_allclose(d.command, np.clip(previous + 0.01, limits[:, 0], limits[:, 1]), rtol=1e-12)
    assert RATE_LIMITED not in d.flags


def test_first_step_guard_refuses_on_ur5e():
    f = ur5e_filter()
    far = UR5E_HOME.copy()
    far[1] += 0.9  # threshold 0.8 rad
    d = f.step(far, now=0.0, obs_time=0.0, measured=UR5E_HOME)
    assert d.command is None and d.held and d.flags == {JUMP_REFUSED}
    assert "0.900" in d.detail
    d = f.step(far, now=0.1, obs_time=0.1, measured=UR5E_HOME)  # still refused: the state did not move
    assert d.flags == {JUMP_REFUSED}
    near = UR5E_HOME.copy()
    near[1] += 0.5
    d = f.step(near, now=0.2, obs_time=0.2, measured=UR5E_HOME)
    assert not d.held and d.flags == {RATE_LIMITED}
    assert d.command[1] == pytest.approx(UR5E_HOME[1] + np.pi * 0.1, abs=1e-4)  # one period from measured


def test_first_step_guard_ramps_on_sim_panda():
    profile = load_profile("sim_panda")
    f = SafetyFilter(profile)
    target = PANDA_HOME.copy()
    target[0] += 1.0  # threshold 0.5 rad
    slow = profile.max_rate[0] * profile.first_step.ramp_scale * 0.05
    d = f.step(target, now=0.0, obs_time=0.0, measured=PANDA_HOME)
    assert d.flags == {JUMP_RAMPED, RATE_LIMITED}
    assert d.command[0] == pytest.approx(PANDA_HOME[0] + slow)
    t, position, ramped = 0.0, d.command[0], 1
    while JUMP_RAMPED in d.flags:
        t += 0.05
        d = f.step(target, now=t, obs_time=t, measured=PANDA_HOME)
        step = d.command[0] - position
        position = d.command[0]
        ramped += JUMP_RAMPED in d.flags
        assert step == pytest.approx(slow if JUMP_RAMPED in d.flags else profile.max_rate[0] * 0.05)
    # The ramp ran until the remaining gap was within the threshold, then full speed took over.
    assert ramped == int(np.ceil(0.5 / slow))
    assert target[0] - position < 0.5


def test_arm_without_measured_state_holds():
    f = ur5e_filter()
    d = f.step(UR5E_HOME, now=0.0, obs_time=0.0, measured=None)
    assert d.command is None and d.flags == {NO_STATE}
    partial = UR5E_HOME.copy()
    partial[4] = np.nan  # one joint missing from joint_states: it could not be guarded
    d = f.step(UR5E_HOME, now=0.0, obs_time=0.0, measured=partial)
    assert d.command is None and d.flags == {NO_STATE}
    # sim_panda's gripper is an intent the robot does not report: the filter ignores its measured value.
    panda = SafetyFilter(load_profile("sim_panda"))
    measured = PANDA_HOME.copy()
    measured[-1] = np.nan
    d = panda.step(np.append(PANDA_HOME[:-1], 1.0), now=0.0, obs_time=0.0, measured=measured)
    assert d.flags == set() and d.command[-1] == 1.0  # open -> close in one step, only clamped


def test_nan_is_rejected_and_held():
    f = ur5e_filter()
    f.step(UR5E_HOME, now=0.0, obs_time=0.0, measured=UR5E_HOME)
    bad = UR5E_HOME.copy()
    bad[3] = np.nan
    d = f.step(bad, now=0.1, obs_time=0.1, measured=UR5E_HOME)
    assert d.command is None and d.held and d.flags == {NAN_REJECTED} and "[3]" in d.detail
    bad[3] = np.inf
    assert f.step(bad, now=0.2, obs_time=0.2, measured=UR5E_HOME).flags == {NAN_REJECTED}
    # After a hold the next command is guarded against the measured state again.
    far = UR5E_HOME + np.array([0, 0, 0, 1.0, 0, 0, 0])
    assert f.step(far, now=0.3, obs_time=0.3, measured=UR5E_HOME).flags == {JUMP_REFUSED}

    quad = SafetyFilter(load_profile("sim_quadrotor"))
    d = quad.step([0.5, np.nan, 0, 0], now=0.0, obs_time=0.0)
    np.testing.assert_array_equal(d.command, np.zeros(4))  # hover, not silence
    assert d.held and d.flags == {NAN_REJECTED}


def test_stale_observations_arm_publishes_nothing():
    f = ur5e_filter(t=0.2)
    timeout = load_profile("ur5e").obs_timeout_s
    assert f.step(UR5E_HOME, now=0.0, obs_time=None, measured=UR5E_HOME).flags == {HELD_STALE}
    d = f.step(UR5E_HOME, now=0.3, obs_time=0.3 - timeout, measured=UR5E_HOME)  # at the timeout: fresh
    assert not d.held
    d = f.step(UR5E_HOME, now=0.4, obs_time=0.4 - timeout - 0.01, measured=UR5E_HOME)
    assert d.command is None and d.held and d.flags == {HELD_STALE} and "0.210 s old" in d.detail
    d = f.step(UR5E_HOME, now=0.45, obs_time=0.45 + timeout + 0.01, measured=UR5E_HOME)  # from the future
    assert d.command is None and d.flags == {HELD_STALE}


def test_stale_observations_quadrotor_hovers():
    profile = load_profile("sim_quadrotor")
    f = SafetyFilter(profile)
    d = f.step([0.3, 0.0, 0.2, 0.1], now=0.0, obs_time=0.0, measured=np.zeros(4))
    np.testing.assert_allclose(d.command, [0.3, 0.0, 0.2, 0.1])
    d = f.step([0.3, 0.0, 0.2, 0.1], now=1.0, obs_time=0.5, measured=np.zeros(4))
    assert d.held and d.flags == {HELD_STALE}
    np.testing.assert_array_equal(d.command, np.zeros(4))
    # Once fresh again the set point slews up from hover.
    d = f.step([1.0, 0.0, 0.0, 0.0], now=1.02, obs_time=1.02, measured=np.zeros(4))
    assert d.command[0] == pytest.approx(profile.max_rate[0] * 0.02) and RATE_LIMITED in d.flags


def test_estop_latches_until_reset_and_reset_needs_fresh_observations():
    f = ur5e_filter()
    f.step(UR5E_HOME, now=0.0, obs_time=0.0, measured=UR5E_HOME)
    f.estop("operator pressed the button")
    assert f.estopped
    for i in range(1, 20):  # fresh observations and heartbeats do not clear it
        t = 0.1 * i
        f.heartbeat(t)
        d = f.step(UR5E_HOME, now=t, obs_time=t, measured=UR5E_HOME)
        assert d.command is None and d.flags == {ESTOPPED} and d.detail == "operator pressed the button"
    ok, message = f.reset_estop(now=5.0, obs_time=4.0)
    assert not ok and "stays latched" in message and "1.000 s old" in message and f.estopped
    assert f.step(UR5E_HOME, now=5.0, obs_time=5.0, measured=UR5E_HOME).flags == {ESTOPPED}
    ok, message = f.reset_estop(now=5.0, obs_time=5.0)
    assert ok and not f.estopped
    f.heartbeat(5.0)
    far = UR5E_HOME + np.array([1.0, 0, 0, 0, 0, 0, 0])
    assert f.step(far, now=5.1, obs_time=5.1, measured=UR5E_HOME).flags == {JUMP_REFUSED}  # guarded afresh
    d = f.step(UR5E_HOME, now=5.2, obs_time=5.2, measured=UR5E_HOME)
    np.testing.assert_array_equal(d.command, UR5E_HOME)

    quad = SafetyFilter(load_profile("px4"))
    quad.heartbeat(0.0)
    quad.estop()
    d = quad.step([1.0, 0, 0, 0], now=0.0, obs_time=0.0)
    assert d.flags == {ESTOPPED}
    np.testing.assert_array_equal(d.command, np.zeros(4))


def test_heartbeat_dead_man():
    f = SafetyFilter(load_profile("ur5e"))  # timeout 0.5 s
    d = f.step(UR5E_HOME, now=0.0, obs_time=0.0, measured=UR5E_HOME)
    assert d.command is None and d.flags == {HEARTBEAT_LOST} and "no heartbeat received" in d.detail
    f.heartbeat(0.0)
    assert f.step(UR5E_HOME, now=0.5, obs_time=0.5, measured=UR5E_HOME).command is not None  # 0.5 s: alive
    d = f.step(UR5E_HOME, now=0.6, obs_time=0.6, measured=UR5E_HOME)
    assert d.command is None and d.flags == {HEARTBEAT_LOST}
    f.heartbeat(0.65)
    assert f.step(UR5E_HOME, now=0.7, obs_time=0.7, measured=UR5E_HOME).command is not None

    crazyflie = SafetyFilter(load_profile("crazyflie"))
    d = crazyflie.step([0.2, 0, 0, 0], now=0.0, obs_time=0.0)
    assert d.flags == {HEARTBEAT_LOST}
    np.testing.assert_array_equal(d.command, np.zeros(4))  # hover while the dead-man is released

    sim = SafetyFilter(load_profile("sim_panda"))  # no heartbeat configured: none needed
    assert sim.step(PANDA_HOME, now=100.0, obs_time=100.0, measured=PANDA_HOME).command is not None


def test_reset_keeps_the_estop_and_regards_the_next_command():
    f = ur5e_filter()
    f.step(UR5E_HOME, now=0.0, obs_time=0.0, measured=UR5E_HOME)
    f.reset()
    far = UR5E_HOME + np.array([0, 0, 0, 0, 0, 1.0, 0])
    assert f.step(far, now=0.1, obs_time=0.1, measured=UR5E_HOME).flags == {JUMP_REFUSED}
    f.estop()
    f.reset()
    assert f.estopped


def test_bad_shapes_and_semantics_raise():
    f = ur5e_filter()
    with pytest.raises(ValueError, match=r"shape \(7,\)"):
        f.step(np.zeros(6), now=0.0, obs_time=0.0, measured=UR5E_HOME)
    with pytest.raises(ValueError, match="measured state"):
        f.step(UR5E_HOME, now=0.0, obs_time=0.0, measured=np.zeros(3))
    raw = {"name": "osc", "kind": "arm", "action_semantics": "ee_delta", "control_rate_hz": 20,
           "hold": "stop",
           "obs_timeout_s": 0.2, "first_step": {"threshold": 0.1},
           "command": {"topic": "cmd", "msg_type": "geometry_msgs/msg/PoseStamped"},
           "actions": [{"name": f"a{i}", "lower": -1, "upper": 1, "max_rate": 1} for i in range(7)],
           "feedback": [{"field": "unmeasured", "size": 7}],
           "observations": {"state": [{"topic": "ee", "msg_type": "geometry_msgs/msg/PoseStamped",
                                       "field": "pose"}]}}
    with pytest.raises(ValueError, match="not 'ee_delta'"):
        SafetyFilter(profile_from_dict(raw))


@pytest.mark.parametrize("name", list_profiles())
def test_property_output_never_exceeds_limits(name):
    """Random commands (huge, NaN), jittery and backward time, stale observations and e-stops: every published
    command lies within the limits and moves no more than max_rate * dt from the one before (or, first, from
    the measured state); an arm never publishes while held."""
    profile = load_profile(name)
    f = SafetyFilter(profile)
    rng = np.random.default_rng(0)
    lo, hi = profile.action_limits[:, 0], profile.action_limits[:, 1]
    span = hi - lo
    period = 1.0 / profile.control_rate_hz
    t, last, last_t, published = 0.0, None, None, 0
    for i in range(600):
        t += rng.choice([period, 0.3 * period, 3 * period, -0.5 * period], p=[0.7, 0.1, 0.1, 0.1])
        if rng.random() < 0.97:
            f.heartbeat(t)
        if last is None:
            measured = lo + rng.random(len(lo)) * span
        else:  # the robot tracks the last command closely
            measured = np.clip(last + rng.normal(0, 0.01, len(lo)), lo, hi)
        if rng.random() < 0.5:
            action = lo + (rng.random(len(lo)) * 3 - 1) * span  # a third of them outside the limits
        else:
            action = measured + rng.normal(0.0, 0.3, len(lo))  # near the robot, so first steps pass the guard
        if rng.random() < 0.05:
            action[rng.integers(len(lo))] = np.nan
        if rng.random() < 0.01:
            f.estop()
        if f.estopped and rng.random() < 0.1 and f.reset_estop(t, t)[0]:
            last = None  # the next command is guarded against the measured state again
        age = rng.choice([0.0, 0.5, 2.0], p=[0.6, 0.3, 0.1]) * profile.obs_timeout_s
        obs_time = t - age
        d = f.step(action, now=t, obs_time=obs_time, measured=measured)
        if d.command is None:
            assert profile.hold in ("stop", "failsafe") and d.held  # silent holds
            last = None
            continue
        assert np.all(d.command >= lo) and np.all(d.command <= hi)
        if d.held:
            np.testing.assert_array_equal(d.command, np.zeros(len(lo)))
        else:
            reference, dt = (measured, period) if last is None else (last, min(max(t - last_t, 0.0), period))
            bound = profile.max_rate * dt
            # a first command is limited against what the robot reports (a motor command has no feedback)
            known = np.isfinite(reference) & (f.reported if last is None else True)
            assert np.all(np.abs(d.command - reference)[known] <= bound[known] * (1 + 1e-9) + 1e-12), i
            published += 1
        last, last_t = d.command, t
    assert published > 100  # the run exercised the filter, not only its holds
