"""The launch files, checked statically: launch and launch_ros are not installed here, so each
``launch/*.launch.py`` is parsed (never imported) and checked against the code it starts:

- every ``Node`` runs one of our console scripts (``pyproject.toml`` [project.scripts]) by name, with
  no ``package`` (colcon-free: the scripts are found on PATH);
- every parameter it sets, in the launch file or in its YAML (``launch/config/*.yaml``, one section per
  node name), is declared by that node: a field of the config dataclass the node passes to
  ``declare_config``, or a literal ``declare_parameter`` name;
- every robot profile and task named exists, and every ``LaunchConfiguration`` is declared.
"""

from __future__ import annotations

import ast
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest
import yaml

from hardware.profile import list_profiles

ROOT = Path(__file__).resolve().parents[2]
LAUNCH_DIR = ROOT / "launch"
EXPECTED = ["arm_robot", "arm_sim", "quadrotor_px4", "quadrotor_sim", "record"]
ROS_BUILTIN = {"use_sim_time"}  # every rclpy node declares it


@cache
def console_scripts() -> dict[str, str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def _call_name(call: ast.Call) -> str | None:
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None


def _kwargs(call: ast.Call) -> dict[str, ast.expr]:
    return {k.arg: k.value for k in call.keywords if k.arg}


def _constant(node: ast.expr | None):
    return node.value if isinstance(node, ast.Constant) else None


@cache
def declared_parameters(executable: str) -> frozenset[str]:
    """The parameter names the node behind a console script declares, read from its source."""
    module, _, function = console_scripts()[executable].partition(":")
    path = ROOT / (module.replace(".", "/") + ".py")
    tree = ast.parse(path.read_text(), str(path))
    if not any(isinstance(n, ast.FunctionDef) and n.name == function for n in tree.body):
        raise AssertionError(f"{path} has no function {function!r} for console script {executable!r}")
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    names: set[str] = set()
    for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
        name = _call_name(call)
        if name == "declare_parameter" and call.args and isinstance(_constant(call.args[0]), str):
            names.add(call.args[0].value)
        elif name == "declare_config" and len(call.args) >= 2 and isinstance(call.args[1], ast.Name):
            config = classes[call.args[1].id]
            names |= {s.target.id for s in config.body
                      if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)}
    return frozenset(names)


@dataclass
class LaunchedNode:
    executable: str | None
    name: str | None
    line: int
    params: set[str] = field(default_factory=set)  # keys of parameter dicts in the launch file
    values: dict[str, object] = field(default_factory=dict)  # those given as constants
    package: bool = False


@dataclass
class LaunchFile:
    path: Path
    nodes: list[LaunchedNode]
    yaml_files: list[Path]
    arguments: dict[str, tuple[object, list]]  # name -> (default, choices)
    configurations: set[str]  # LaunchConfiguration names used
    has_entry: bool


def parse_launch(path: Path) -> LaunchFile:
    tree = ast.parse(path.read_text(), str(path))
    nodes, arguments, configurations = [], {}, set()
    for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
        name, kw = _call_name(call), _kwargs(call)
        if name == "Node":
            node = LaunchedNode(_constant(kw.get("executable")), _constant(kw.get("name")), call.lineno,
                                package="package" in kw and _constant(kw["package"]) is not None)
            parameters = kw.get("parameters")
            for element in parameters.elts if isinstance(parameters, ast.List) else []:
                if isinstance(element, ast.Dict):
                    for key, value in zip(element.keys, element.values):
                        node.params.add(_constant(key))
                        if _constant(value) is not None:
                            node.values[_constant(key)] = _constant(value)
            nodes.append(node)
        elif name == "DeclareLaunchArgument" and call.args:
            choices = kw.get("choices")
            arguments[_constant(call.args[0])] = (
                _constant(kw.get("default_value")),
                [_constant(c) for c in choices.elts] if isinstance(choices, ast.List) else [])
        elif name == "LaunchConfiguration" and call.args:
            configurations.add(_constant(call.args[0]))
    yaml_files = sorted({LAUNCH_DIR / "config" / n.value for n in ast.walk(tree)
                         if isinstance(_constant(n), str) and n.value.endswith((".yaml", ".yml"))})
    has_entry = any(isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description"
                    for n in tree.body)
    return LaunchFile(path, nodes, yaml_files, arguments, configurations, has_entry)


def problems(path: Path) -> list[str]:
    """Everything wrong with one launch file and its YAML, as messages naming file, node and entry."""
    launch = parse_launch(path)
    out = []
    if not launch.has_entry:
        out.append(f"{path.name}: no generate_launch_description()")
    scripts = console_scripts()
    by_name: dict[str, LaunchedNode] = {}
    profiles, tasks = [], []
    for node in launch.nodes:
        at = f"{path.name}:{node.line}"
        if node.executable not in scripts or not str(node.executable).startswith("robopolicy-"):
            out.append(f"{at}: executable {node.executable!r} is not one of our console scripts "
                       f"{sorted(s for s in scripts if s.startswith('robopolicy-'))}")
            continue
        if node.package:
            out.append(f"{at}: {node.executable} is a console script on PATH; give no package")
        if node.name is None:
            out.append(f"{at}: {node.executable} needs a constant name= (its YAML section)")
        else:
            by_name[node.name] = node
        unknown = node.params - declared_parameters(node.executable) - ROS_BUILTIN
        if unknown:
            out.append(f"{at}: {node.executable} declares no parameters {sorted(unknown)}")
        profiles += [node.values[k] for k in ("profile",) if k in node.values]
        tasks += [node.values[k] for k in ("task",) if k in node.values]
    for config in launch.yaml_files:
        if not config.is_file():
            out.append(f"{path.name}: names {config.relative_to(ROOT)}, which does not exist")
            continue
        for section, body in (yaml.safe_load(config.read_text()) or {}).items():
            node = by_name.get(section)
            if node is None:
                out.append(f"{config.name}: section {section!r} matches no node of {path.name} "
                           f"(nodes: {sorted(by_name)})")
                continue
            params = (body or {}).get("ros__parameters", {})
            unknown = set(params) - declared_parameters(node.executable) - ROS_BUILTIN
            if unknown:
                out.append(f"{config.name}: {section} ({node.executable}) declares no parameters "
                           f"{sorted(unknown)}")
            profiles += [params["profile"]] if "profile" in params else []
            tasks += [params["task"]] if "task" in params else []
    for argument, values in (("profile", profiles), ("task", tasks)):
        if argument in launch.arguments:
            default, choices = launch.arguments[argument]
            values += [v for v in (default, *choices) if v is not None]
    for profile in profiles:
        if profile not in list_profiles():
            out.append(f"{path.name}: unknown robot profile {profile!r}; known: {list_profiles()}")
    for task in tasks:
        import sim

        try:
            sim.task_spec(task)
        except Exception as e:  # sim's UnknownTaskError names the known tasks
            out.append(f"{path.name}: unknown task {task!r}: {str(e)[:200]}")
    undeclared = launch.configurations - set(launch.arguments)
    if undeclared:
        out.append(f"{path.name}: LaunchConfiguration {sorted(undeclared)} without a DeclareLaunchArgument")
    return out


def test_every_launch_file_is_there():
    assert sorted(p.name.removesuffix(".launch.py") for p in LAUNCH_DIR.glob("*.launch.py")) == EXPECTED


@pytest.mark.parametrize("name", EXPECTED)
def test_launch_file_matches_the_nodes_it_starts(name):
    path = LAUNCH_DIR / f"{name}.launch.py"
    launch = parse_launch(path)
    assert launch.nodes, f"{path.name} starts no node"
    assert problems(path) == []


def test_launch_files_start_what_their_names_say():
    executables = {p: sorted(n.executable for n in parse_launch(LAUNCH_DIR / f"{p}.launch.py").nodes)
                   for p in EXPECTED}
    assert executables == {
        "arm_robot": ["robopolicy-policy-node"],
        "arm_sim": ["robopolicy-policy-node", "robopolicy-sim-bridge"],
        "quadrotor_px4": ["robopolicy-policy-node"],
        "quadrotor_sim": ["robopolicy-policy-node", "robopolicy-sim-bridge"],
        "record": ["robopolicy-recorder", "robopolicy-sim-bridge", "robopolicy-teleop"],
    }
    robot = parse_launch(LAUNCH_DIR / "arm_robot.launch.py").path.read_text()
    assert '("joint_trajectory", ["/", controller, "/joint_trajectory"])' in robot  # onto ros2_control's JTC
    controller = parse_launch(LAUNCH_DIR / "arm_robot.launch.py").arguments["controller"]
    assert controller[0] == "joint_trajectory_controller"


def test_declared_parameters_follow_the_config_dataclasses():
    from ros_nodes.recorder import RecorderConfig
    from ros_nodes.teleop import TeleopConfig

    assert declared_parameters("robopolicy-recorder") == set(RecorderConfig.__dataclass_fields__)
    assert declared_parameters("robopolicy-teleop") == set(TeleopConfig.__dataclass_fields__)
    # DESIGN §11's parameters are there
    assert {"store", "profile", "rate_hz"} <= declared_parameters("robopolicy-recorder")
    assert {"checkpoint", "device", "profile", "control_rate_hz", "executor", "obs_timeout_s"} <= \
        declared_parameters("robopolicy-policy-node")
    assert {"task", "profile", "seed"} <= declared_parameters("robopolicy-sim-bridge")


def test_the_checker_catches_mistakes(tmp_path, monkeypatch):
    monkeypatch.setattr(f"{__name__}.LAUNCH_DIR", tmp_path)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "bad.yaml").write_text(
        "recorder:\n  ros__parameters:\n    store: x.zarr\n    rate: 10\n"
        "ghost:\n  ros__parameters:\n    profile: sim_panda\n")
    bad = tmp_path / "bad.launch.py"
    bad.write_text(
        'from launch_ros.actions import Node\n'
        'CONFIG = "bad.yaml"\n'
        'def generate_launch_description():\n'
        '    return [Node(executable="robopolicy-recorder", name="recorder", parameters=[CONFIG, '
        '{"profile": "ur10", "store": LaunchConfiguration("store")}]),\n'
        '            Node(package="robopolicy", executable="ros2-bag", name="bag")]\n')
    found = "\n".join(problems(bad))
    assert "declares no parameters ['rate']" in found  # a YAML typo
    assert "section 'ghost' matches no node" in found
    assert "unknown robot profile 'ur10'" in found
    assert "executable 'ros2-bag' is not one of our console scripts" in found
    assert "LaunchConfiguration ['store'] without a DeclareLaunchArgument" in found
