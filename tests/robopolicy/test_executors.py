"""Chunk executors: alignment to the ticks that elapsed during inference, ensembling, names."""

import numpy as np
import pytest

from robopolicy.runtime.executors import NaiveExecutor, TemporalEnsembleExecutor, make_executor


def chunk(obs_tick, H=16, A=2):
    """Action value = the tick it is meant for, so alignment is visible in the numbers: index To-1 = obs_tick."""
    ticks = obs_tick - 1 + np.arange(H)
    return np.repeat(ticks[:, None], A, axis=1).astype(float)


def test_naive_skips_the_ticks_that_elapsed_and_runs_ta_steps():
    ex = NaiveExecutor(n_obs_steps=2, n_action_steps=8, horizon=16)
    assert ex.action(0) is None and ex.needs_chunk(0, latency_ticks=0)
    assert ex.add(chunk(10), obs_tick=10, landed=13)  # 3 ticks of inference
    assert ex.action(12) is None  # before it landed
    assert [ex.action(t)[0] for t in range(13, 21)] == list(range(13, 21))  # aligned: tick t runs action t
    assert ex.remaining(13) == 8 and ex.remaining(21) == 0 and ex.overrun_ticks == 0
    assert not ex.needs_chunk(17, latency_ticks=3) and ex.needs_chunk(18, latency_ticks=3)


def test_naive_runs_the_horizon_tail_while_the_next_chunk_is_late():
    ex = NaiveExecutor(n_obs_steps=2, n_action_steps=8, horizon=16)
    ex.add(chunk(10), obs_tick=10, landed=13)  # planned: ticks 13..20; horizon ends at 10 + 16 - 2 = 24
    assert [ex.action(t)[0] for t in range(21, 25)] == [21, 22, 23, 24]  # still aligned, past Ta
    assert ex.overrun_ticks == 4 and ex.action(25) is None  # nothing beyond the predicted horizon
    ex.add(chunk(22), obs_tick=22, landed=25)  # the late chunk replaces it
    assert ex.action(25)[0] == 25 and ex.overrun_ticks == 4


def test_naive_caps_at_the_horizon_and_drops_a_chunk_that_is_all_stale():
    ex = NaiveExecutor(2, 8, 16)
    assert ex.add(chunk(0), 0, landed=10)
    assert ex.chunk.planned == 14 and ex.chunk.last == 14  # capped at the horizon's last tick: obs tick + H - To
    assert not ex.add(chunk(0), 0, landed=15) and ex.dropped == 1


def test_a_chunk_never_runs_before_its_own_observation_tick():
    """A late publisher may report a landing tick behind the sampler's tick: those ticks get no action
    (never the chunk's past rows, nor an index below zero)."""
    for ex in (NaiveExecutor(2, 2, 4), TemporalEnsembleExecutor(2, 2, 4)):
        assert ex.add(chunk(10, H=4), obs_tick=10, landed=3)
        assert ex.action(9) is None and ex.action(10)[0] == 10 and ex.action(12)[0] == 12
        assert ex.action(13) is None


def test_temporal_ensemble_averages_overlapping_chunks_oldest_weighted_most():
    ex = TemporalEnsembleExecutor(2, 8, 16, m=0.5)
    ex.add(chunk(0), 0, landed=1)
    ex.add(chunk(0) + 1.0, 0, landed=2)  # a newer opinion, one higher
    assert ex.action(1)[0] == 1.0  # only the first has landed for tick 1
    w = np.exp(-0.5 * np.arange(2))
    assert ex.action(2)[0] == pytest.approx(2.0 + w[1] / w.sum())
    assert ex.action(15) is None  # beyond both horizons
    assert ex.needs_chunk(3, 100)


def test_unknown_and_planned_executors_are_refused_by_name():
    with pytest.raises(ValueError, match=r"unknown executor 'fast'.*naive"):
        make_executor("fast", 2, 8, 16)
    with pytest.raises(ValueError, match="'rtc' is not implemented yet"):
        make_executor("rtc", 2, 8, 16)
