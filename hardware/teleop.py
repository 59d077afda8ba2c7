"""Teleoperation input devices without ROS: a terminal keyboard and a Linux gamepad (``/dev/input/js*``).

Both turn raw input into one normalised reading, a :class:`TeleopInput`: ``axes (N_AXES,)`` in
``[-1, 1]`` and the discrete ``events`` seen since the last poll. What an axis means is the caller's
business (``ros_nodes.teleop`` maps axis ``i`` to a quadrotor's ``vx, vy, vz, yaw_rate`` or to an arm's
joint ``i``). Devices read a file descriptor without blocking, so a control loop polls them once per
tick, and tests drive them by writing bytes into a pipe or a pty.

Keyboard. A terminal sends key presses, never releases, and repeats a held key only after a delay
(~250-600 ms). So a press drives its axis for ``hold_s`` (0.6 s by default, longer than the repeat
delay): hold a key to move, let go and the axis returns to 0 within ``hold_s``. Two keymaps:

- :data:`FLIGHT_KEYS` (quadrotor): ``w/s`` forward/back (axis 0), ``a/d`` left/right (1), ``r/f``
  up/down (2), ``q/e`` yaw left/right (3); the arrow keys double ``w/s/a/d``;
- :data:`JOINT_KEYS` (arm): ``1..7`` move joint ``i`` up, ``q w e r t y u`` move it down.

Shared events: space ``gripper`` (toggle), ``x`` ``halt`` (every axis to 0 now), Enter ``record``
(start, or stop and commit), Backspace ``discard``, Esc ``quit`` (a terminal in cbreak mode turns
Ctrl-C into SIGINT; from a pipe it is ``quit`` too).

Gamepad. The Linux joystick API delivers 8-byte ``struct js_event {u32 time_ms; s16 value; u8 type;
u8 number}`` records (``linux/joystick.h``); axes are held until the stick moves again. Axis numbers
follow the xpad driver's Xbox layout: left stick 0/1, right stick 3/4, d-pad 6/7 (down and right
positive), so up and left are negated to give ENU-like "forward, left, up, counter-clockwise".
"""

from __future__ import annotations

import glob
import os
import select
import struct
import termios
import tty
from dataclasses import dataclass
from pathlib import Path

import numpy as np

N_AXES = 7  # enough for a 7-joint arm; a quadrotor uses the first 4

# Events a device can emit (the ROS teleop node acts on them).
GRIPPER, HALT, RECORD, DISCARD, QUIT = "gripper", "halt", "record", "discard", "quit"
EVENTS = (GRIPPER, HALT, RECORD, DISCARD, QUIT)

# key bytes -> (axis, direction)
FLIGHT_KEYS: dict[bytes, tuple[int, float]] = {
    b"w": (0, 1.0), b"s": (0, -1.0), b"a": (1, 1.0), b"d": (1, -1.0),
    b"r": (2, 1.0), b"f": (2, -1.0), b"q": (3, 1.0), b"e": (3, -1.0),
    b"\x1b[A": (0, 1.0), b"\x1b[B": (0, -1.0), b"\x1b[D": (1, 1.0), b"\x1b[C": (1, -1.0),
}
JOINT_KEYS: dict[bytes, tuple[int, float]] = {
    **{str(i + 1).encode(): (i, 1.0) for i in range(N_AXES)},
    **{k.encode(): (i, -1.0) for i, k in enumerate("qwertyu")},
}
EVENT_KEYS: dict[bytes, str] = {
    b" ": GRIPPER, b"x": HALT, b"\r": RECORD, b"\n": RECORD, b"\x7f": DISCARD, b"\x08": DISCARD,
    b"\x03": QUIT, b"\x1b": QUIT,
}
KEYMAPS = {"flight": FLIGHT_KEYS, "joint": JOINT_KEYS}


@dataclass(frozen=True)
class TeleopInput:
    """One poll of a device: ``axes (N_AXES,)`` in ``[-1, 1]`` and the events since the last poll."""

    axes: np.ndarray
    events: tuple[str, ...] = ()


class TeleopDevice:
    """Base: non-blocking reads from a file descriptor. Subclasses turn bytes into axes and events."""

    def __init__(self, fd: int, owns_fd: bool = False):
        self.fd, self._owns_fd = fd, owns_fd
        self._buf = b""

    def _read(self) -> bytes:
        """Everything available on the fd now, without blocking (b"" if nothing)."""
        chunks = []
        while select.select([self.fd], [], [], 0)[0]:
            try:
                data = os.read(self.fd, 4096)
            except (BlockingIOError, InterruptedError):
                break
            if not data:  # the writer closed the pipe: nothing more will come
                break
            chunks.append(data)
        return b"".join(chunks)

    def poll(self, now: float) -> TeleopInput:
        raise NotImplementedError

    def close(self) -> None:
        if self._owns_fd:
            os.close(self.fd)
            self._owns_fd = False

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class KeyboardDevice(TeleopDevice):
    """Keys from a terminal (or any byte stream) to axes; see the module docstring for the keymaps.

    Args:
        fd: where keys come from (default stdin). A terminal is put in cbreak mode until :meth:`close`;
            a pipe is read as is.
        keymap: ``"flight"``, ``"joint"`` or a ``{key bytes: (axis, direction)}`` mapping.
        hold_s: how long one press drives its axis.
    """

    def __init__(self, fd: int | None = None, keymap: str | dict[bytes, tuple[int, float]] = "flight",
                 hold_s: float = 0.6, owns_fd: bool = False):
        super().__init__(0 if fd is None else fd, owns_fd)
        if isinstance(keymap, str):
            if keymap not in KEYMAPS:
                raise ValueError(f"keyboard keymap must be one of {list(KEYMAPS)} or a mapping, "
                                 f"got {keymap!r}")
            keymap = KEYMAPS[keymap]
        bad = {k: v for k, v in keymap.items() if not 0 <= v[0] < N_AXES}
        if bad:
            raise ValueError(f"keymap entries {bad} name axes outside 0..{N_AXES - 1}")
        if not hold_s > 0:
            raise ValueError(f"hold_s must be positive, got {hold_s}")
        self.keymap, self.hold_s = dict(keymap), float(hold_s)
        self._direction = np.zeros(N_AXES)
        self._until = np.full(N_AXES, -np.inf)  # each axis is driven until this time
        self._saved_tty = None
        if os.isatty(self.fd):
            self._saved_tty = termios.tcgetattr(self.fd)
            tty.setcbreak(self.fd)  # keys arrive one by one; Ctrl-C stays SIGINT, output stays cooked

    @classmethod
    def open(cls, path: str | os.PathLike, **kw) -> KeyboardDevice:
        """Keys from a terminal device by path (e.g. another terminal's ``/dev/pts/3``)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as e:
            raise OSError(f"cannot open keyboard input {str(path)!r}: {e.strerror}") from e
        return cls(fd, owns_fd=True, **kw)

    def feed(self, data: bytes, now: float) -> list[str]:
        """Apply key bytes received at ``now``; returns their events. (``poll`` calls this.)"""
        self._buf += data
        events = []
        while (key := self._next_key()) is not None:
            self._buf = self._buf[len(key):]
            if key in EVENT_KEYS:
                if EVENT_KEYS[key] == HALT:
                    self._until[:] = -np.inf
                events.append(EVENT_KEYS[key])
            elif key in self.keymap:
                axis, direction = self.keymap[key]
                self._direction[axis] = direction
                self._until[axis] = now + self.hold_s
        return events

    def _next_key(self) -> bytes | None:
        """The first whole key in the buffer: one byte or an escape sequence; None if it is incomplete."""
        buf = self._buf
        if not buf.startswith(b"\x1b"):
            return buf[:1] or None
        if len(buf) == 1:
            return None  # Esc, or the start of an arrow whose rest is on its way; poll decides
        if buf[1:2] in (b"[", b"O"):
            # CSI / SS3 sequences (arrows, F-keys) end at the first byte in 0x40..0x7E
            end = next((i for i in range(2, len(buf)) if 0x40 <= buf[i] <= 0x7E), None)
            return None if end is None else buf[: end + 1]
        return b"\x1b"  # Esc followed by another key

    def poll(self, now: float) -> TeleopInput:
        events = self.feed(self._read(), now)
        # A lone Esc with nothing behind it is the Esc key, not the start of an arrow.
        if self._buf == b"\x1b":
            self._buf = b""
            events.append(QUIT)
        axes = np.where(now < self._until, self._direction, 0.0)
        return TeleopInput(axes=axes, events=tuple(events))

    def close(self) -> None:
        if self._saved_tty is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved_tty)
            self._saved_tty = None
        super().close()


# struct js_event (linux/joystick.h): __u32 time (ms), __s16 value, __u8 type, __u8 number
JS_EVENT = struct.Struct("<IhBB")
JS_EVENT_BUTTON, JS_EVENT_AXIS, JS_EVENT_INIT = 0x01, 0x02, 0x80
JS_MAX = 32767.0

# Xbox layout under the xpad driver: our axis <- (joystick axis, sign). Sticks report down/right positive.
GAMEPAD_AXES: dict[int, tuple[int, float]] = {
    0: (1, -1.0),  # left stick up: forward / joint 1 up
    1: (0, -1.0),  # left stick left: left / joint 2
    2: (4, -1.0),  # right stick up: climb / joint 3
    3: (3, -1.0),  # right stick left: yaw counter-clockwise / joint 4
    4: (7, -1.0),  # d-pad up: joint 5
    5: (6, -1.0),  # d-pad left: joint 6
}
TRIGGERS = (5, 2)  # axis 6 (joint 7) = right trigger - left trigger; each rests at -1 and reads +1 pressed
GAMEPAD_BUTTONS: dict[int, str] = {0: GRIPPER, 1: HALT, 7: RECORD, 6: DISCARD}  # A, B, Start, Back


class GamepadDevice(TeleopDevice):
    """A gamepad through the Linux joystick API. ``deadzone``: stick values below it read as 0."""

    def __init__(self, fd: int, deadzone: float = 0.1, owns_fd: bool = False):
        super().__init__(fd, owns_fd)
        if not 0 <= deadzone < 1:
            raise ValueError(f"deadzone must be in [0, 1), got {deadzone}")
        self.deadzone = float(deadzone)
        self._raw: dict[int, float] = {}  # joystick axis -> last value in [-1, 1]
        self._halted = False

    @classmethod
    def open(cls, path: str | os.PathLike | None = None, **kw) -> GamepadDevice:
        """Open ``path`` or the first ``/dev/input/js*``. Raises :class:`FileNotFoundError` if none."""
        if path is None:
            path = find_gamepad()
            if path is None:
                raise FileNotFoundError("no gamepad: /dev/input/js* does not exist (is it plugged in, "
                                        "and is the joydev module loaded?)")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as e:
            raise OSError(f"cannot open gamepad {str(path)!r}: {e.strerror}") from e
        return cls(fd, owns_fd=True, **kw)

    def feed(self, data: bytes) -> list[str]:
        """Apply raw ``js_event`` bytes; returns the button events."""
        self._buf += data
        n = len(self._buf) // JS_EVENT.size * JS_EVENT.size
        events = []
        for _, value, kind, number in JS_EVENT.iter_unpack(self._buf[:n]):
            if kind & JS_EVENT_AXIS:
                self._raw[number] = value / JS_MAX
                self._halted = False
            elif kind & JS_EVENT_BUTTON and value == 1 and not kind & JS_EVENT_INIT:
                event = GAMEPAD_BUTTONS.get(number)
                if event == HALT:
                    self._halted = True
                if event is not None:
                    events.append(event)
        self._buf = self._buf[n:]
        return events

    def axes(self) -> np.ndarray:
        out = np.zeros(N_AXES)
        if self._halted:
            return out
        for axis, (js_axis, sign) in GAMEPAD_AXES.items():
            out[axis] = sign * self._raw.get(js_axis, 0.0)
        pull, push = ((self._raw.get(t, -1.0) + 1.0) / 2.0 for t in TRIGGERS)
        out[6] = pull - push
        # Rescale past the dead zone so the output still spans [-1, 1] without a jump at its edge.
        mag = np.clip((np.abs(out) - self.deadzone) / (1.0 - self.deadzone), 0.0, 1.0)
        return np.sign(out) * mag

    def poll(self, now: float) -> TeleopInput:
        events = self.feed(self._read())
        return TeleopInput(axes=self.axes(), events=tuple(events))


def find_gamepad() -> str | None:
    """The first joystick device, or None where there is none (a headless machine)."""
    paths = sorted(glob.glob("/dev/input/js*"))
    return paths[0] if paths else None


def open_device(kind: str, path: str = "", keymap: str = "flight", hold_s: float = 0.6) -> TeleopDevice:
    """``kind`` ``keyboard`` (stdin, or the terminal at ``path``) or ``gamepad`` (``path``, or the first)."""
    if kind == "keyboard":
        if path:
            return KeyboardDevice.open(Path(path), keymap=keymap, hold_s=hold_s)
        return KeyboardDevice(keymap=keymap, hold_s=hold_s)
    if kind == "gamepad":
        return GamepadDevice.open(path or None)
    raise ValueError(f"teleop device must be 'keyboard' or 'gamepad', got {kind!r}")
