"""Chunk executors for asynchronous inference: which action runs at control tick ``j``.

Time is counted in control ticks. A chunk ``(H, A)`` predicted from the observation sampled at tick
``k`` holds the action for tick ``k`` at index ``To-1`` (DESIGN §5), so tick ``j`` reads index
``To-1 + j - k``. Inference takes time: the chunk *lands* at some later tick ``l``, and the ticks
``k .. l-1`` already ran on the previous plan. Executors are aligned to those measured, elapsed ticks,
never to a latency estimate (deployment notes §0): they skip the elapsed prefix.

- ``naive``: run ``Ta`` actions from the landing tick (fewer if the horizon ends first), then re-plan.
  The node asks for the next chunk ``latency_ticks`` before those run out, so the next one lands
  just in time; it then replaces what is left of the old one. When the next chunk is late (an
  inference spike on a busy computer), the old one keeps running on its predicted horizon, up to
  ``H - To`` ticks past its observation, rather than leaving ticks without an action (which hover a
  quadrotor or stop an arm mid-motion); those ticks are counted in ``overrun_ticks``.
- ``temporal_ensemble`` (ACT): re-plan whenever the worker is free; every chunk that covers tick ``j``
  votes, weighted ``exp(-m * i)`` with ``i = 0`` the oldest (ACT's convention).
- ``rtc`` (real-time chunking, Black et al. 2025; flow policies): runs like ``naive``, and hands each
  request a :class:`ChunkGuide`: the running chunk's actions at the new chunk's ticks, weight 1 on the
  ticks that will run while the new chunk is computed (the measured latency), decaying to 0 where the
  running chunk ends. The flow sampler inpaints the new chunk onto it, so the switch does not jump.

Pure Python and numpy, no ROS, no torch: the ROS policy node drives it, tests drive it with plain integers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EXECUTORS = ("naive", "temporal_ensemble", "rtc")
PREFIX_SCHEDULES = ("ones", "zeros", "linear", "exp")


@dataclass(frozen=True)
class ChunkGuide:
    """What RTC inpaints a new chunk toward: for each index of it, the running chunk's action at the same tick.

    actions (H, A) un-normalised (zero where the running chunk has none; those rows weigh 0), weights (H,),
    and the guidance cap β.
    """

    actions: np.ndarray
    weights: np.ndarray
    max_guidance: float = 5.0


def prefix_weights(start: int, end: int, horizon: int, schedule: str = "exp") -> np.ndarray:
    """RTC's guidance weights (horizon,) float32 over a chunk's indices.

    Indices before `start` (the actions that run while the chunk is computed) get 1: frozen to the running
    chunk. From `start` the weight decays to 0 at `end` (where the running chunk runs out), linearly or
    exponentially; from `end` on it is 0. Linear, (2, 6, 10): [1, 1, .8, .6, .4, .2, 0, 0, 0, 0].
    """
    if schedule not in PREFIX_SCHEDULES:
        raise ValueError(f"unknown prefix schedule '{schedule}'; choose one of {PREFIX_SCHEDULES}")
    start = min(start, end)
    i = np.arange(horizon, dtype=np.float64)
    if schedule == "ones":
        w = np.ones(horizon)
    elif schedule == "zeros":
        w = (i < start).astype(np.float64)
    else:
        w = np.clip((start - 1 - i) / (end - start + 1) + 1, 0, 1)
        if schedule == "exp":
            w = w * np.expm1(w) / (np.e - 1)
    return np.where(i >= end, 0.0, w).astype(np.float32)


@dataclass
class Chunk:
    actions: np.ndarray  # (H, A), un-normalised
    obs_tick: int  # the tick of the newest observation it was predicted from
    first: int  # the first tick it may run (its landing tick)
    last: int  # the last tick it may run
    planned: int = -1  # naive: the last tick of its Ta planned steps (later ones only if the next is late)

    def action(self, tick: int, n_obs_steps: int) -> np.ndarray:
        return self.actions[n_obs_steps - 1 + tick - self.obs_tick]


class NaiveExecutor:
    """Run ``n_action_steps`` actions of each chunk from where it lands; re-plan before it runs out."""

    name = "naive"

    def __init__(self, n_obs_steps: int, n_action_steps: int, horizon: int):
        if not 1 <= n_action_steps <= horizon - n_obs_steps + 1:
            raise ValueError(f"n_action_steps {n_action_steps} must lie in 1..H-To+1 = {horizon - n_obs_steps + 1}")
        self.To, self.Ta, self.H = n_obs_steps, n_action_steps, horizon
        self.reset()

    def reset(self) -> None:
        self.chunk: Chunk | None = None
        self.dropped = 0  # chunks that landed after their whole horizon had passed
        self.overrun_ticks = 0  # ticks run past a chunk's Ta steps because the next one was late

    def horizon_end(self, obs_tick: int) -> int:
        """The last tick a chunk from ``obs_tick`` has an action for."""
        return obs_tick + self.H - self.To

    def add(self, actions: np.ndarray, obs_tick: int, landed: int) -> bool:
        """Adopt a chunk that landed at tick ``landed``. False (and dropped) if it is entirely stale."""
        first, last = _first_tick(obs_tick, landed), self.horizon_end(obs_tick)
        if last < first:
            self.dropped += 1
            return False
        self.chunk = Chunk(np.asarray(actions), obs_tick, first, last, planned=min(first + self.Ta - 1, last))
        return True

    def remaining(self, tick: int) -> int:
        """Planned actions left for ticks ``tick`` onwards (the ``Ta`` steps; not the fallback tail)."""
        return 0 if self.chunk is None else max(self.chunk.planned - max(tick, self.chunk.first) + 1, 0)

    def needs_chunk(self, tick: int, latency_ticks: int) -> bool:
        return self.remaining(tick) <= latency_ticks

    def action(self, tick: int) -> np.ndarray | None:
        c = self.chunk
        if c is None or not c.first <= tick <= c.last:
            return None
        if tick > c.planned:
            self.overrun_ticks += 1
        return c.action(tick, self.To)


class RtcExecutor(NaiveExecutor):
    """``naive`` execution; each new chunk is inpainted onto the running one (:meth:`guide`)."""

    name = "rtc"

    def __init__(self, n_obs_steps: int, n_action_steps: int, horizon: int, max_guidance: float = 5.0,
                 schedule: str = "exp"):
        super().__init__(n_obs_steps, n_action_steps, horizon)
        if max_guidance < 0:
            raise ValueError(f"max_guidance must be >= 0, got {max_guidance}")
        prefix_weights(0, 0, 1, schedule)  # refuse an unknown schedule now, not at the first chunk
        self.max_guidance, self.schedule = float(max_guidance), schedule

    def guide(self, obs_tick: int, delay_ticks: int) -> ChunkGuide | None:
        """The guide for a chunk predicted from the observation of ``obs_tick`` that will land about
        ``delay_ticks`` later; None when no running chunk overlaps it (then it is sampled unguided)."""
        c = self.chunk
        if c is None:
            return None
        # Index i of the new chunk is tick obs_tick - (To-1) + i; the same tick is index i + shift of the old.
        shift = obs_tick - c.obs_tick
        end = self.H - shift  # new indices the old chunk covers: 0 .. end-1
        if shift < 0 or end <= self.To - 1:  # it covers none of the ticks from the observation's on
            return None
        start = self.To - 1 + max(delay_ticks, 0)
        actions = np.zeros_like(c.actions)
        actions[:end] = c.actions[shift:shift + end]
        return ChunkGuide(actions, prefix_weights(start, end, self.H, self.schedule), self.max_guidance)


class TemporalEnsembleExecutor:
    """ACT temporal ensembling over every live chunk; re-plans as often as the worker can."""

    name = "temporal_ensemble"

    def __init__(self, n_obs_steps: int, n_action_steps: int, horizon: int, m: float = 0.01):
        self.To, self.Ta, self.H, self.m = n_obs_steps, n_action_steps, horizon, float(m)
        self.reset()

    def reset(self) -> None:
        self.chunks: list[Chunk] = []  # oldest first
        self.dropped = 0

    def add(self, actions: np.ndarray, obs_tick: int, landed: int) -> bool:
        first, last = _first_tick(obs_tick, landed), obs_tick + self.H - self.To
        if last < first:
            self.dropped += 1
            return False
        self.chunks.append(Chunk(np.asarray(actions), obs_tick, first, last))
        return True

    def remaining(self, tick: int) -> int:
        return max((c.last - tick + 1 for c in self.chunks), default=0) if self.chunks else 0

    def needs_chunk(self, tick: int, latency_ticks: int) -> bool:
        return True

    def action(self, tick: int) -> np.ndarray | None:
        self.chunks = [c for c in self.chunks if c.last >= tick]
        votes = [c.action(tick, self.To) for c in self.chunks if c.first <= tick]
        if not votes:
            return None
        weights = np.exp(-self.m * np.arange(len(votes)))
        return np.tensordot(weights / weights.sum(), np.stack(votes), axes=1)


def _first_tick(obs_tick: int, landed: int) -> int:
    """The first tick a chunk may run: where it landed, but never before its own observation's tick (a
    publisher running late can report a landing tick behind the sampler's)."""
    return max(landed, obs_tick)


def make_executor(name: str, n_obs_steps: int, n_action_steps: int, horizon: int, **kwargs):
    if name == "naive":
        return NaiveExecutor(n_obs_steps, n_action_steps, horizon)
    if name == "temporal_ensemble":
        return TemporalEnsembleExecutor(n_obs_steps, n_action_steps, horizon, **kwargs)
    if name == "rtc":
        return RtcExecutor(n_obs_steps, n_action_steps, horizon, **kwargs)
    raise ValueError(f"unknown executor {name!r}; available: {list(EXECUTORS)}")
