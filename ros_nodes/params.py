"""ROS parameters from a config dataclass: each field is a parameter with the field's default.

Parameters are declared with dynamic typing and cast to the field's type, so ``-p control_rate_hz:=20``
works as well as ``:=20.0`` (rclpy would otherwise refuse an int for a float parameter).
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node

T = TypeVar("T")
_CASTS = {"float": float, "int": int, "str": str, "bool": bool}


def declare_config(node: Node, config_class: type[T], overrides: dict[str, Any] | None = None) -> T:
    """Declare one parameter per field of ``config_class`` on ``node`` and return the filled config."""
    overrides = overrides or {}
    defaults = config_class()
    values = {}
    for f in dataclasses.fields(config_class):
        default = overrides.get(f.name, getattr(defaults, f.name))
        node.declare_parameter(f.name, default, ParameterDescriptor(dynamic_typing=True))
        value = node.get_parameter(f.name).value
        cast = _CASTS[f.type if isinstance(f.type, str) else f.type.__name__]
        if cast is bool and isinstance(value, str):
            value = value.lower() in ("1", "true", "yes")
        try:
            values[f.name] = cast(value)
        except (TypeError, ValueError) as e:
            raise ValueError(f"parameter {f.name!r} must be a {cast.__name__}, got {value!r}") from e
    return config_class(**values)
