"""``robopolicy-policy-node``: run a checkpoint on a robot over ROS 2 (DESIGN §7, §9, §11).

Three threads besides the rclpy executor (which only stores messages and answers services):

    subscriptions ──► ObservationAssembler (latest message per topic)
                               │
    sampler (control rate) ────┴─► history of To observations, tagged with the control tick
                                          │
    inference worker ◄────────────────────┘  predict (H, A) chunk, off every ROS callback, in a process of
          │                                 its own by default (RunnerProcess: the model's thousands of
          │                                 small ops never hold this process's GIL)
          │ chunk, obs tick, landing tick
          ▼
    executor (naive | temporal_ensemble | rtc): the action for tick j, aligned to the ticks that elapsed
          │
    publisher (control rate) ─► SafetyFilter ─► JointTrajectory (arm) | TwistStamped or PX4
                                                TrajectorySetpoint (quadrotor)

Before going live the node refuses a checkpoint the profile cannot serve (missing observation keys,
other action semantics or dimension; the error names them) and runs ``warmup`` inferences, which
also give the first latency estimate (the first one, with its one-off costs, is left out).

Holding (DESIGN §9) is the safety filter's: an arm publishes nothing, a quadrotor publishes zero
velocity. A tick without an action (before the first chunk lands, or when inference falls behind)
holds the same way. ``policy/reset`` (Trigger) starts a new episode: it clears the history, the
executor, the safety filter's memory and in-flight chunks (the e-stop stays latched).

Parameters (``--ros-args -p name:=value``): see :class:`PolicyNodeConfig`.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from std_msgs.msg import String
from std_srvs.srv import Trigger

from hardware.profile import CheckpointMismatchError, check_checkpoint, load_profile
from hardware.safety import SafetyFilter
from ros_nodes import convert
from ros_nodes.observation import ObservationAssembler
from ros_nodes.params import declare_config
from ros_nodes.qos import COMMAND_QOS, STATUS_QOS, for_source
from ros_nodes.spin import spin_node

LATENCY_WINDOW = 2000  # samples kept for the latency percentiles in policy/metrics
# What the node can publish. Crazyswarm2's VelocityWorld is not among them: the unit of its yaw_rate is
# unverified (hardware/profiles/crazyflie.yaml), and a wrong guess is a factor of 57 on a real vehicle.
COMMAND_MESSAGES = ("trajectory_msgs/msg/JointTrajectory", "geometry_msgs/msg/TwistStamped",
                    "px4_msgs/msg/TrajectorySetpoint", "std_msgs/msg/Float32MultiArray")


@dataclass
class PolicyNodeConfig:
    """The node's ROS parameters. Zero / empty means "the checkpoint's or the profile's value"."""

    checkpoint: str = ""
    device: str = "cpu"
    profile: str = ""  # required: a packaged profile name (sim_panda, ur5e, ...) or a profile .yaml path
    control_rate_hz: float = 0.0  # default: the profile's
    executor: str = "naive"  # naive | temporal_ensemble | rtc (flow policies)
    obs_timeout_s: float = 0.0  # default: the profile's
    sampler: str = ""  # diffusion: ddpm | ddim; flow: euler | adaptive ...
    num_inference_steps: int = 0
    precision: str = "fp32"  # diffusion U-Net: fp32 | bf16 (bf16 weights, fp32 accumulation)
    compile: bool = False  # diffusion U-Net: inductor-compiled step; the warm-up then takes 1-2 min
    warmup: int = 2  # inferences before going live
    seed: int = 0  # sampling noise
    torch_threads: int = 0  # 0: leave torch's default
    inference_process: bool = True  # run the model in a worker process: its GIL never stalls the control loop
    ensemble_m: float = 0.01  # temporal_ensemble: weight exp(-m * i), i = 0 the oldest chunk
    rtc_max_guidance: float = 5.0  # rtc: the guidance cap β
    command_topic: str = ""  # default: the profile's command topic
    metrics_period_s: float = 1.0


class PolicyNode(Node):
    def __init__(self, **overrides):
        super().__init__("policy_node")
        self.cfg = cfg = declare_config(self, PolicyNodeConfig, overrides)
        if not cfg.checkpoint:
            raise ValueError("parameter 'checkpoint' is required (a checkpoint directory or a run directory)")
        if not cfg.profile:
            raise ValueError("parameter 'profile' is required (a robot profile name or .yaml path)")

        # ---- compatibility first: refuse before loading any weights ----------------------------------
        from robopolicy.train.checkpoint_config import read_config, resolve_checkpoint  # json only: instant

        ckpt_config = read_config(cfg.checkpoint)
        profile = load_profile(cfg.profile)
        if cfg.obs_timeout_s > 0:
            profile = dataclasses.replace(profile, obs_timeout_s=float(cfg.obs_timeout_s))
        match = check_checkpoint(profile, ckpt_config)  # raises CheckpointMismatchError naming the keys
        if profile.command.msg_type not in COMMAND_MESSAGES:
            raise ValueError(f"profile {profile.name!r} commands with {profile.command.msg_type}; this node "
                             f"publishes {sorted(COMMAND_MESSAGES)}")
        keepalive = profile.command.keepalive
        for msg_type in {profile.command.msg_type, *(s.msg_type for srcs in match.observations.values()
                                                    for s in srcs), *([keepalive["msg_type"]] if keepalive else [])}:
            convert.message_class(msg_type)  # a package that is not installed (px4_msgs) is named now
        if cfg.executor == "rtc" and ckpt_config.get("policy") != "flow":
            raise ValueError(f"executor 'rtc' inpaints with a flow policy's velocity field; this checkpoint is "
                             f"'{ckpt_config.get('policy')}' (use naive or temporal_ensemble)")
        for w in match.warnings:
            self.get_logger().warning(w)
        self.profile = profile
        self.rate_hz = float(cfg.control_rate_hz) if cfg.control_rate_hz > 0 else profile.control_rate_hz
        self.period = 1.0 / self.rate_hz

        from robopolicy.runtime.executors import make_executor

        self.runner = self._load_runner(resolve_checkpoint(cfg.checkpoint))
        pc = self.runner.config
        self.To, self.Ta, self.H = pc.n_obs_steps, pc.n_action_steps, pc.horizon
        kwargs = {"temporal_ensemble": {"m": cfg.ensemble_m},
                  "rtc": {"max_guidance": cfg.rtc_max_guidance}}.get(cfg.executor, {})
        self.chunker = make_executor(cfg.executor, self.To, self.Ta, self.H, **kwargs)
        self.assembler = ObservationAssembler(profile, self.runner.obs_shapes, sources=match.observations)
        self.safety = SafetyFilter(profile)
        self.silent_hold = profile.hold != "hover"  # an arm, or a motor-level quadrotor: holds by silence

        # ---- shared state (guarded by self.lock) -----------------------------------------------------
        self.lock = threading.Lock()
        self.wake = threading.Condition(self.lock)
        self.history: collections.deque = collections.deque(maxlen=self.To)  # (tick, obs, stamp)
        self.tick = 0
        self.generation = 0  # bumped by policy/reset: in-flight chunks of older generations are dropped
        self.latest_obs_stamp: float | None = None
        self.live = False
        self.stop_event = threading.Event()
        self.reset_runner = threading.Event()
        self.m = collections.Counter()  # counters for policy/metrics
        self.inference_s: collections.deque = collections.deque(maxlen=LATENCY_WINDOW)
        self.e2e_s: collections.deque = collections.deque(maxlen=LATENCY_WINDOW)
        self.pending_e2e: dict[int, float] = {}  # chunk id -> its observation's stamp, until its first command
        self.chunk_id = 0
        self.state, self.state_detail = "starting", ""

        # ---- ROS interfaces ---------------------------------------------------------------------------
        for topic, msg_class, qos in self.assembler.subscriptions:
            self.create_subscription(msg_class, topic, lambda msg, t=topic: self._on_message(t, msg),
                                     for_source(qos))
        topic = cfg.command_topic or profile.command.topic
        self.command_pub = self.create_publisher(convert.message_class(profile.command.msg_type), topic,
                                                 COMMAND_QOS)
        if keepalive:  # PX4's OffboardControlMode: streamed whatever the policy does, until the node stops
            flags = {k: bool(v) for k, v in keepalive.items() if k not in ("topic", "msg_type", "rate_hz")}
            keepalive_pub = self.create_publisher(convert.message_class(keepalive["msg_type"]), keepalive["topic"],
                                                  COMMAND_QOS)
            self.create_timer(1.0 / keepalive["rate_hz"],
                              lambda: keepalive_pub.publish(convert.offboard_control_mode(self.now(), **flags)))
        self.status_pub = self.create_publisher(String, "policy/status", STATUS_QOS)
        self.metrics_pub = self.create_publisher(String, "policy/metrics", 10)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_service(Trigger, "policy/estop", self._on_estop)
        self.create_service(Trigger, "policy/reset_estop", self._on_reset_estop)
        self.create_service(Trigger, "policy/reset", self._on_reset)
        if profile.heartbeat_topic:
            from std_msgs.msg import Empty

            self.create_subscription(Empty, profile.heartbeat_topic, self._on_heartbeat, COMMAND_QOS)
        self.create_timer(cfg.metrics_period_s, self._publish_metrics)

        self._set_state("warming_up")
        self._warmup()
        self.threads = [threading.Thread(target=self._guarded, args=(fn,), name=name, daemon=True) for name, fn in
                        (("sampler", self._sampler_loop), ("inference", self._inference_loop),
                         ("publisher", self._publisher_loop))]
        self.t0 = time.monotonic()
        for t in self.threads:
            t.start()
        self.live = True
        self._set_state("waiting_for_observations")
        self.get_logger().info(
            f"live: {ckpt_config.get('policy')} checkpoint {cfg.checkpoint} on profile {profile.name!r} at "
            f"{self.rate_hz:g} Hz, executor {cfg.executor}, sampler {self.runner.sampler}, "
            f"To={self.To} H={self.H} Ta={self.Ta}, commands on {topic!r}")

    def _load_runner(self, checkpoint):
        """A PolicyRunner, in a worker process unless `inference_process` is false (then torch loads here)."""
        cfg = self.cfg
        from robopolicy.runtime.process import RunnerProcess, RunnerSpec

        spec = RunnerSpec(str(checkpoint), cfg.device, cfg.sampler or None, cfg.num_inference_steps or None,
                          cfg.seed, precision=cfg.precision, compile=cfg.compile, torch_threads=cfg.torch_threads)
        if cfg.inference_process:
            runner = RunnerProcess(spec)
            self.get_logger().info(f"inference in worker process {runner.pid}")
            return runner
        import torch

        from robopolicy.runtime.runner import PolicyRunner

        if spec.torch_threads > 0:
            torch.set_num_threads(spec.torch_threads)
        return PolicyRunner.from_checkpoint(spec.checkpoint, spec.device, spec.sampler,
                                            spec.num_inference_steps, spec.seed, precision=spec.precision,
                                            compile=spec.compile)

    def _guarded(self, loop) -> None:
        """Run a thread's loop; a publish that fails because Ctrl-C shut the context down ends it quietly."""
        try:
            loop()
        except Exception:
            if self.context.ok() and not self.stop_event.is_set():
                raise

    # ---- time ---------------------------------------------------------------------------------------

    def now(self) -> float:
        """The node's clock in seconds (wall time, or /clock with use_sim_time): the stamps' time base."""
        return self.get_clock().now().nanoseconds * 1e-9

    def _sleep_until_tick(self, tick: int, offset: float = 0.0) -> None:
        delay = self.t0 + tick * self.period + offset - time.monotonic()
        if delay > 0:
            self.stop_event.wait(delay)

    def _current_tick(self) -> int:
        return int((time.monotonic() - self.t0) / self.period)

    # ---- warm-up -------------------------------------------------------------------------------------

    def _warmup(self) -> None:
        """Run the model on zeros of the right shapes: first-call costs (allocation, kernels) happen now."""
        obs = {k: np.zeros(s, dtype=np.uint8 if k.startswith("image_") else np.float32)
               for k, s in self.runner.obs_shapes.items()}
        for i in range(max(self.cfg.warmup, 0)):
            start = time.perf_counter()
            try:
                self.runner.predict_from([obs])
            except Exception:
                pass  # zeros may be outside the normaliser's range; the timing is what counts
            if i > 0:
                self.inference_s.append(time.perf_counter() - start)
        self.runner.reset(self.cfg.seed)

    # ---- callbacks (executor threads: store and return) ------------------------------------------------

    def _on_message(self, topic: str, msg) -> None:
        self.assembler.update(topic, msg, self.now())

    def _on_heartbeat(self, _msg) -> None:
        with self.lock:
            self.safety.heartbeat(self.now())

    def _on_estop(self, request, response):
        with self.lock:  # the safety filter is shared with the publisher thread
            self.safety.estop("e-stop requested on policy/estop")
        self.m["estops"] += 1
        self._set_state("estopped", "policy/estop")
        self.get_logger().warning("e-stop latched")
        response.success, response.message = True, "e-stop latched; holding until policy/reset_estop"
        return response

    def _on_reset_estop(self, request, response):
        with self.lock:
            ok, message = self.safety.reset_estop(self.now(), self.latest_obs_stamp)
            if ok:
                self._reset_episode()
        if ok:
            self._set_state("live", message)
        response.success, response.message = ok, message
        return response

    def _on_reset(self, request, response):
        with self.lock:
            self._reset_episode()
            self.generation += 1
        self.reset_runner.set()
        self.assembler.clear()
        self.m["resets"] += 1
        response.success, response.message = True, "history, chunks and safety memory cleared"
        return response

    def _reset_episode(self) -> None:
        """(lock held) Forget the plan and the history: what comes next starts like a first step."""
        self.history.clear()
        self.chunker.reset()
        self.safety.reset()
        self.pending_e2e.clear()

    # ---- thread 1: the observation sampler ----------------------------------------------------------------

    def _sampler_loop(self) -> None:
        tick = 0
        while not self.stop_event.is_set():
            tick = max(tick + 1, self._current_tick())
            self._sleep_until_tick(tick)
            if not self.assembler.ready():
                self.m["frames_not_ready"] += 1
                continue
            try:
                obs, stamp = self.assembler.assemble()
            except Exception as e:  # a malformed message: skip this frame, say why
                self.m["frames_dropped"] += 1
                self.get_logger().error(f"observation dropped: {e}", throttle_duration_sec=2.0)
                continue
            with self.lock:
                self.latest_obs_stamp = stamp
                if abs(self.now() - stamp) > self.profile.obs_timeout_s:
                    self.m["frames_stale"] += 1
                    continue  # a stale frame never enters the history
                self.history.append((tick, obs, stamp))
                self.m["frames"] += 1
                self.wake.notify_all()

    # ---- thread 2: inference ------------------------------------------------------------------------------

    def _latency_ticks(self) -> int:
        """Ticks an inference is expected to take: the worst of the recent ones, rounded up."""
        recent = list(self.inference_s)[-5:]
        return int(math.ceil(max(recent, default=self.period) / self.period))

    def _inference_loop(self) -> None:
        while not self.stop_event.is_set():
            with self.lock:
                ready = (self.history and not self.safety.estopped
                         and self.chunker.needs_chunk(self._current_tick(), self._latency_ticks()))
                if not ready:
                    self.wake.wait(timeout=self.period / 2)
                    continue
                frames = list(self.history)
                generation = self.generation
                # RTC: the running chunk at the new one's ticks, frozen over the ticks it will take to compute
                guide = (self.chunker.guide(frames[-1][0], self._latency_ticks())
                         if self.cfg.executor == "rtc" else None)
            obs_tick, obs_stamp = frames[-1][0], frames[-1][2]
            start = time.perf_counter()
            try:
                if self.reset_runner.is_set():  # policy/reset: recurrent state and noise seed, on this thread
                    self.reset_runner.clear()
                    self.runner.reset(self.cfg.seed)
                chunk = self.runner.predict_from([f[1] for f in frames], guide)
            except Exception as e:
                self.m["inference_errors"] += 1
                self.get_logger().error(f"inference failed: {e}", throttle_duration_sec=2.0)
                self.stop_event.wait(self.period)
                continue
            elapsed = time.perf_counter() - start
            with self.lock:
                if generation != self.generation:
                    self.m["chunks_discarded"] += 1
                    continue
                self.inference_s.append(elapsed)
                landed = self.tick + 1  # the publisher's next tick is the first it can run
                if self.chunker.add(chunk, obs_tick, landed):
                    self.chunk_id += 1
                    self.pending_e2e = {self.chunk_id: obs_stamp}
                    self.m["chunks"] += 1
                    self.m["guided_chunks"] += guide is not None
                    self.m["skipped_steps"] += landed - obs_tick
                else:
                    self.m["chunks_stale"] += 1

    # ---- thread 3: the publisher --------------------------------------------------------------------------

    def _publisher_loop(self) -> None:
        tick = 0
        while not self.stop_event.is_set():
            tick = max(tick + 1, self._current_tick())
            # Publish a fraction into the tick, after the sampler: the action of tick j goes out in tick j.
            self._sleep_until_tick(tick, 0.5 * self.period)
            with self.lock:
                self.tick = tick
                action = self.chunker.action(tick)
                obs_time = self.latest_obs_stamp
                chunk_id = self.chunk_id
                depth = self.chunker.remaining(tick)
            measured = self.assembler.measured()
            now = self.now()
            if action is None:
                self.m["starved_ticks"] += 1
                if self.silent_hold:
                    self._note_decision(None, held=True, flags=("no_action",))
                    continue
                action = np.zeros(self.profile.action_dim)  # hover while the first chunk is computed
            with self.lock:
                decision = self.safety.step(action, now=now, obs_time=obs_time, measured=measured)
            if decision.command is not None:
                self._publish_command(decision.command, now)
                self.m["commands"] += 1
                with self.lock:
                    obs_stamp = self.pending_e2e.pop(chunk_id, None)
                if obs_stamp is not None and not decision.held:
                    self.e2e_s.append(self.now() - obs_stamp)
            self.m["queue_depth"] = depth
            self._note_decision(decision.command, decision.held, tuple(decision.flags), decision.detail)

    def _publish_command(self, command: np.ndarray, now: float) -> None:
        msg_type = self.profile.command.msg_type
        if msg_type == "trajectory_msgs/msg/JointTrajectory":
            msg = convert.joint_trajectory(self.profile.joint_names, command[None], self.period, now)
        elif msg_type == "px4_msgs/msg/TrajectorySetpoint":
            msg = convert.trajectory_setpoint(command, now)  # ENU -> NED
        elif msg_type == "std_msgs/msg/Float32MultiArray":
            msg = convert.float32_array(command)  # motor commands
        else:
            msg = convert.twist_stamped(command, now, frame="world")
        self.command_pub.publish(msg)

    def _note_decision(self, command, held: bool, flags: tuple, detail: str = "") -> None:
        if held:
            self.m["held_ticks"] += 1
            for f in flags:
                self.m[f"held_{f}"] += 1
        if self.safety.estopped:
            state = "estopped"
        elif held:
            state = "held"
        else:
            state = "live"
        if state != self.state:
            self._set_state(state, detail or ",".join(flags))

    # ---- status, metrics, diagnostics ---------------------------------------------------------------------

    def _set_state(self, state: str, detail: str = "") -> None:
        self.state, self.state_detail = state, detail
        msg = {"state": state, "detail": detail, "checkpoint": self.cfg.checkpoint, "profile": self.profile.name,
               "executor": self.cfg.executor, "control_rate_hz": self.rate_hz, "time": self.now()}
        self.status_pub.publish(String(data=json.dumps(msg)))

    def metrics(self) -> dict:
        def pct(values, q):
            return float(np.percentile(values, q)) if values else None

        inf, e2e = list(self.inference_s), list(self.e2e_s)
        return {
            "state": self.state, "tick": self.tick, "counters": dict(self.m),
            "inference_ms": {"last": inf[-1] * 1e3 if inf else None, "p50": _ms(pct(inf, 50)),
                             "p95": _ms(pct(inf, 95)), "max": _ms(max(inf, default=None))},
            "e2e_latency_ms": {"p50": _ms(pct(e2e, 50)), "p90": _ms(pct(e2e, 90)), "p99": _ms(pct(e2e, 99)),
                               "n": len(e2e)},
            "e2e_latency_samples_ms": [round(x * 1e3, 2) for x in e2e[-200:]],
            "latency_ticks": self._latency_ticks(), "executor_dropped": self.chunker.dropped,
            "executor_overrun_ticks": getattr(self.chunker, "overrun_ticks", 0),
        }

    def _publish_metrics(self) -> None:
        if not self.live:
            return
        m = self.metrics()
        self.metrics_pub.publish(String(data=json.dumps(m)))
        level = {"estopped": DiagnosticStatus.ERROR, "held": DiagnosticStatus.WARN}.get(m["state"],
                                                                                         DiagnosticStatus.OK)
        values = [KeyValue(key="state", value=m["state"]), KeyValue(key="detail", value=self.state_detail),
                  KeyValue(key="inference_p95_ms", value=str(m["inference_ms"]["p95"])),
                  KeyValue(key="queue_depth", value=str(m["counters"].get("queue_depth", 0))),
                  KeyValue(key="frames_stale", value=str(m["counters"].get("frames_stale", 0))),
                  KeyValue(key="starved_ticks", value=str(m["counters"].get("starved_ticks", 0)))]
        status = DiagnosticStatus(level=level, name=f"{self.get_name()}: policy", hardware_id=self.profile.name,
                                  message=m["state"], values=values)
        self.diag_pub.publish(DiagnosticArray(header=convert.header(self.now()), status=[status]))

    def shutdown(self) -> None:
        self.stop_event.set()
        with self.lock:
            self.wake.notify_all()
        for t in getattr(self, "threads", []):
            t.join(timeout=2.0)
        if hasattr(getattr(self, "runner", None), "close"):
            self.runner.close()


def _ms(seconds):
    return None if seconds is None else round(seconds * 1e3, 3)


def main() -> int:
    # Its callbacks only store messages and flip flags (the work is on its own threads): one executor thread.
    return spin_node(PolicyNode, "robopolicy-policy-node",
                     refusals=(CheckpointMismatchError, ValueError, FileNotFoundError), threads=1)


if __name__ == "__main__":
    sys.exit(main())
