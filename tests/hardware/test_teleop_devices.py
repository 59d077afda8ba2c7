"""Teleop input devices without ROS: key bytes through a real pty and a pipe, joystick events through a
pipe."""

import os
import pty
import termios

import numpy as np
import pytest

from hardware.teleop import (DISCARD, GRIPPER, HALT, JS_EVENT, JS_EVENT_AXIS, JS_EVENT_BUTTON, JS_EVENT_INIT,
                             N_AXES, QUIT, RECORD, GamepadDevice, KeyboardDevice, find_gamepad, open_device)


def axes(**values: float) -> np.ndarray:
    out = np.zeros(N_AXES)
    for k, v in values.items():
        out[int(k[1:])] = v
    return out


@pytest.fixture
def pipe():
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass


def test_keyboard_through_a_pty_holds_keys_then_releases_and_restores_the_terminal():
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    try:
        kb = KeyboardDevice(slave, keymap="flight", hold_s=0.5)
        assert not termios.tcgetattr(slave)[3] & termios.ICANON  # keys arrive without Enter
        os.write(master, b"w")
        np.testing.assert_array_equal(kb.poll(10.0).axes, axes(a0=1.0))
        np.testing.assert_array_equal(kb.poll(10.4).axes, axes(a0=1.0))  # still held within hold_s
        np.testing.assert_array_equal(kb.poll(10.6).axes, axes())  # released
        os.write(master, b"dqf")
        np.testing.assert_array_equal(kb.poll(11.0).axes, axes(a1=-1.0, a2=-1.0, a3=1.0))
        os.write(master, b"x")
        reading = kb.poll(11.1)
        assert reading.events == (HALT,)
        np.testing.assert_array_equal(reading.axes, axes())
        kb.close()
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)


def test_keyboard_arrows_split_across_reads_and_unknown_escapes(pipe):
    r, w = pipe
    kb = KeyboardDevice(r, keymap="flight")
    os.write(w, b"\x1b[")  # the rest of the arrow has not arrived yet: not an Esc
    reading = kb.poll(0.0)
    assert reading.events == ()
    np.testing.assert_array_equal(reading.axes, axes())
    os.write(w, b"D")  # left arrow = 'a'
    np.testing.assert_array_equal(kb.poll(0.1).axes, axes(a1=1.0))
    os.write(w, b"\x1bOP\x1b[1;5A")  # F1, Ctrl-Up: ignored, and not mistaken for Esc
    reading = kb.poll(0.2)
    assert reading.events == ()
    os.write(w, b"\x1b")  # a lone Esc quits
    assert kb.poll(0.3).events == (QUIT,)


def test_keyboard_joint_keymap_and_events(pipe):
    r, w = pipe
    kb = KeyboardDevice(r, keymap="joint", hold_s=1.0)
    os.write(w, b"3u \n\x7f")
    reading = kb.poll(0.0)
    np.testing.assert_array_equal(reading.axes, axes(a2=1.0, a6=-1.0))
    assert reading.events == (GRIPPER, RECORD, DISCARD)
    os.write(w, b"e")  # joint 3 down overrides its up
    np.testing.assert_array_equal(kb.poll(0.5).axes, axes(a2=-1.0, a6=-1.0))


def test_keyboard_rejects_bad_arguments(pipe):
    with pytest.raises(ValueError, match="keymap must be one of"):
        KeyboardDevice(pipe[0], keymap="piano")
    with pytest.raises(ValueError, match="outside 0..6"):
        KeyboardDevice(pipe[0], keymap={b"z": (9, 1.0)})
    with pytest.raises(OSError, match="cannot open keyboard input '/nonexistent/tty'"):
        KeyboardDevice.open("/nonexistent/tty")
    with pytest.raises(ValueError, match="'keyboard' or 'gamepad'"):
        open_device("theremin")


def js(value: int, kind: int, number: int) -> bytes:
    return JS_EVENT.pack(1234, value, kind, number)


def test_gamepad_axes_dead_zone_triggers_and_buttons(pipe):
    r, w = pipe
    pad = GamepadDevice(r, deadzone=0.1)
    # The driver's initial state burst: not presses.
    os.write(w, js(0, JS_EVENT_BUTTON | JS_EVENT_INIT, 0) + js(-32767, JS_EVENT_AXIS | JS_EVENT_INIT, 2)
             + js(-32767, JS_EVENT_AXIS | JS_EVENT_INIT, 5))
    reading = pad.poll(0.0)
    assert reading.events == ()
    np.testing.assert_array_equal(reading.axes, axes())
    # Left stick fully up (-32767 on axis 1) -> forward; right stick a little left (within the dead zone).
    os.write(w, js(-32767, JS_EVENT_AXIS, 1) + js(-int(0.05 * 32767), JS_EVENT_AXIS, 3))
    np.testing.assert_allclose(pad.poll(0.1).axes, axes(a0=1.0), atol=1e-9)
    # Past the dead zone the output is rescaled: 0.55 -> (0.55 - 0.1) / 0.9 = 0.5; right stick down: -0.5.
    os.write(w, js(int(round(0.55 * 32767)), JS_EVENT_AXIS, 4))
    np.testing.assert_allclose(pad.poll(0.2).axes[2], -0.5, atol=1e-4)
    # Triggers: right pulls axis 6 up, left pushes it down.
    os.write(w, js(32767, JS_EVENT_AXIS, 5))
    assert pad.poll(0.3).axes[6] == pytest.approx(1.0)
    os.write(w, js(-32767, JS_EVENT_AXIS, 5) + js(32767, JS_EVENT_AXIS, 2))
    assert pad.poll(0.4).axes[6] == pytest.approx(-1.0)
    # A press is an event, a release is not; B halts until a stick moves again.
    os.write(w, js(1, JS_EVENT_BUTTON, 0) + js(0, JS_EVENT_BUTTON, 0) + js(1, JS_EVENT_BUTTON, 7)
             + js(1, JS_EVENT_BUTTON, 6) + js(1, JS_EVENT_BUTTON, 1))
    reading = pad.poll(0.5)
    assert reading.events == (GRIPPER, RECORD, DISCARD, HALT)
    np.testing.assert_array_equal(reading.axes, axes())
    # An event split across reads waits for its second half.
    event = js(32767, JS_EVENT_AXIS, 0)  # left stick right -> axis 1 = -1
    os.write(w, event[:5])
    np.testing.assert_array_equal(pad.poll(0.6).axes, axes())
    os.write(w, event[5:])
    assert pad.poll(0.7).axes[1] == pytest.approx(-1.0)


def test_gamepad_open_without_a_device_says_so():
    if find_gamepad() is not None:
        pytest.skip("this machine has a joystick device")
    with pytest.raises(FileNotFoundError, match="no gamepad"):
        GamepadDevice.open()
