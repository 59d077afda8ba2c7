"""The quadrotor task specs and their registration. Cheap: imports neither MuJoCo nor the env.

| task                                  | action (A=4)        | state | rate   | cap (steps) |
|---------------------------------------|---------------------|-------|--------|-------------|
| ``robopolicy/quadrotor-hover-v0``        | ``velocity_setpoint`` | 13    | 50 Hz  | 500 (10 s)  |
| ``robopolicy/quadrotor-hover-motors-v0`` | ``motor_commands``    | 13    | 100 Hz | 1000 (10 s) |
| ``robopolicy/quadrotor-track-v0``        | ``velocity_setpoint`` | 19    | 50 Hz  | 750 (15 s)  |
| ``robopolicy/quadrotor-track-motors-v0`` | ``motor_commands``    | 19    | 100 Hz | 1500 (15 s) |

Velocity set points are tracked by the onboard cascade at the 500 Hz physics rate, so 50 Hz suits
them (deployment notes: learned policies at the set-point level run at 20-50 Hz). Motor commands
are held for the physics steps between two actions; 100 Hz is RAPTOR's training rate.
"""

from __future__ import annotations

from sim.registry import PREFIX, TaskSpec, list_tasks, register_task

HOVER_TARGET = (0.0, 0.0, 1.0)  # m, world ENU; fixed, so the 13-d hover state says all a policy needs
STATE_DIM = {"hover": 13, "track": 19}
CONTROL_RATE_HZ = {"velocity_setpoint": 50.0, "motor_commands": 100.0}
EPISODE_SECONDS = {"hover": 10.0, "track": 15.0}
# Success: the episode ran to its cap without a crash and the RMS position error, counted from
# SETTLE_SECONDS on (the vehicle starts up to 10 cm off), stayed below the bound.
SUCCESS_RMS = {"hover": 0.05, "track": 0.05}  # m
SETTLE_SECONDS = 1.0
MAX_SPEED = 1.0  # m/s per axis, the velocity_setpoint action's bound
MAX_YAW_RATE = 1.0  # rad/s


def task_name(task: str, action: str) -> str:
    suffix = "-motors" if action == "motor_commands" else ""
    return f"{PREFIX}quadrotor-{task}{suffix}-v0"


def make_spec(task: str, action: str) -> TaskSpec:
    if task not in STATE_DIM:
        raise ValueError(f"unknown quadrotor task {task!r}; choose one of {sorted(STATE_DIM)}")
    if action not in CONTROL_RATE_HZ:
        levels = sorted(CONTROL_RATE_HZ)
        raise ValueError(f"unknown quadrotor action level {action!r}; choose one of {levels}")
    rate = CONTROL_RATE_HZ[action]
    what = {
        "hover": f"hold {HOVER_TARGET} m under random pushes and wind",
        "track": "follow a figure-eight or random-waypoint reference (appended to the state)",
    }[task]
    level = {
        "velocity_setpoint": "velocity set points (vx, vy, vz world ENU m/s, yaw rate rad/s)",
        "motor_commands": "4 normalised motor commands [FR, BR, BL, FL]",
    }[action]
    return TaskSpec(
        name=task_name(task, action),
        action_semantics=action,
        action_dim=4,
        obs_shapes={"state": (STATE_DIM[task],)},
        control_rate_hz=rate,
        max_steps=int(round(EPISODE_SECONDS[task] * rate)),
        description=f"1 kg X-frame quadrotor ({level}), domain-randomised per seed: {what}",
    )


TASKS = tuple((t, a) for t in ("hover", "track") for a in ("velocity_setpoint", "motor_commands"))


def register_quadrotor_tasks() -> list[str]:
    """Register the four quadrotor tasks (idempotent). Returns their canonical names."""
    known = set(list_tasks("quadrotor"))
    names = []
    for task, action in TASKS:
        spec = make_spec(task, action)
        names.append(spec.name)
        if spec.name in known:
            continue
        kwargs = {"task": task, "action": action}
        register_task(
            spec,
            env_entry="sim.quadrotor.env:QuadrotorEnv",
            env_kwargs=kwargs,
            expert_entry="sim.quadrotor.expert:QuadrotorExpert",
            expert_kwargs=kwargs,
        )
    return names
