"""Chunk executors: alignment to the ticks that elapsed during inference, ensembling, names."""

import numpy as np
import pytest

from robopolicy.runtime.executors import (
    NaiveExecutor,
    TemporalEnsembleExecutor,
    make_executor,
    prefix_weights,
)


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


def test_unknown_executors_and_schedules_are_refused_by_name():
    with pytest.raises(ValueError, match=r"unknown executor 'fast'.*naive"):
        make_executor("fast", 2, 8, 16)
    with pytest.raises(ValueError, match="unknown prefix schedule 'cosine'"):
        make_executor("rtc", 2, 8, 16, schedule="cosine")


def test_rtc_prefix_weights_match_the_papers_examples():
    np.testing.assert_allclose(prefix_weights(2, 6, 10, "linear"), [1, 1, .8, .6, .4, .2, 0, 0, 0, 0], atol=1e-6)
    exp = prefix_weights(2, 6, 10, "exp")
    assert exp[:2].tolist() == [1, 1] and np.all(exp[6:] == 0) and np.all(np.diff(exp[1:7]) < 0)
    assert np.all(exp[2:6] < prefix_weights(2, 6, 10, "linear")[2:6])  # exp decays faster
    assert not prefix_weights(0, 0, 10).any()  # d = 0, nothing overlaps: vanilla sampling
    np.testing.assert_array_equal(prefix_weights(3, 6, 8, "zeros"), [1, 1, 1, 0, 0, 0, 0, 0])


def test_rtc_guide_holds_the_running_chunk_at_the_new_chunks_ticks():
    ex = make_executor("rtc", 2, 8, 16, max_guidance=3.0)
    assert ex.guide(0, 2) is None  # nothing running yet: the first chunk is sampled unguided
    ex.add(chunk(0), obs_tick=0, landed=2)
    guide = ex.guide(6, 2)  # next request from tick 6's observation, expected to land 2 ticks later
    # index i of the new chunk is tick 6 - 1 + i; the running chunk covers ticks up to 0 + 16 - 2 = 14
    end = 16 - 6
    np.testing.assert_array_equal(guide.actions[:end, 0], 5 + np.arange(end))
    assert not guide.actions[end:].any() and guide.max_guidance == 3.0
    # frozen: index To-1 = tick 6 and the 2 ticks of latency after it (and the past tick 5); 0 from index 10
    np.testing.assert_array_equal(guide.weights[:3], 1)
    assert 0 < guide.weights[3] < 1 and not guide.weights[end:].any()
    assert ex.guide(14, 2).weights[1] == 1  # its last tick, 14, is index To-1 of the new one
    assert ex.guide(15, 2) is None  # the running chunk has no action from tick 15 on


def test_rtc_executes_like_naive():
    rtc, naive = make_executor("rtc", 2, 8, 16), NaiveExecutor(2, 8, 16)
    for ex in (rtc, naive):
        ex.add(chunk(0), obs_tick=0, landed=2)
        ex.add(chunk(7), obs_tick=7, landed=9)
    assert [rtc.action(t)[0] for t in range(9, 20)] == [naive.action(t)[0] for t in range(9, 20)]
