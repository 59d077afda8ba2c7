"""The comparison grid's resume logic (bench/grid.py) and the trainer's wall-clock budget it relies on.

Real parts throughout: a real zarr store (the toy reaching store for the trainer; the Meta-World push expert
for the grid, whose cells are evaluated in the real simulator), real training, real checkpoints on disk.
"""

import json
import time

import pytest

from bench import grid
from robopolicy.train.checkpoint import read_config
from robopolicy.train.trainer import train
from tests.robopolicy.toy_store import write_reach_store

TINY = dict(down_dims=(16, 32), step_embed_dim=16, horizon=8, n_action_steps=4)


def test_train_stops_at_max_seconds_with_a_resumable_checkpoint(tmp_path):
    store = write_reach_store(tmp_path / "reach.zarr", episodes=6)
    run = tmp_path / "run"
    overrides = {"steps": 10**6, "batch_size": 8, "val_episodes": 1, "warmup_steps": 1}
    t0 = time.perf_counter()
    summary = train(store, str(run), "diffusion", "cpu", overrides, TINY, progress=False, max_seconds=1.0)
    assert summary["stopped_by"] == "time"
    assert 0 < summary["steps"] < 10**6
    assert summary["train_seconds"] >= 1.0
    assert time.perf_counter() - t0 < 60  # stopped by the clock, not by a million steps
    assert read_config(run / "latest")["step"] == summary["steps"]  # the checkpoint holds the last step

    # A run stopped by its budget resumes on the same schedule, like one stopped at a step.
    resumed = train(store, str(run), "diffusion", "cpu", overrides, progress=False, stop_at=summary["steps"] + 2)
    assert (resumed["steps"], resumed["stopped_by"]) == (summary["steps"] + 2, "stop_at")

    with pytest.raises(ValueError, match="max_seconds"):
        train(store, str(tmp_path / "other"), "diffusion", "cpu", overrides, progress=False, max_seconds=0)


def test_grid_cell_trains_once_skips_when_done_and_fills_in_only_missing_settings(tmp_path):
    task = "robopolicy/metaworld-push-v3"
    store, collect = grid.ensure_store(task, tmp_path, demos=3)
    assert collect["episodes_run"] == 3 and store.exists()
    assert grid.ensure_store(task, tmp_path, demos=3)[1] == collect  # collected once
    cell = grid.Cell("diffusion", "diffusion", "cpu", (("ddim", 2), ("ddim", 3)))
    run = dict(task=task, cell=cell, out=tmp_path, store=store, minutes=0.04, episodes=1, workers=1, lock=None,
               latency_repeats=3)

    result, done = grid.run_cell(**run)
    assert done == "trained"
    assert result["train"]["steps"] > 0 and result["train"]["stopped_by"] in ("time", "steps")
    assert result["train"]["seconds"] < 0.04 * 60 + 30
    assert {k: (e["sampler"], e["nfe"], e["episodes"]) for k, e in result["evals"].items()} == {
        "ddim-2": ("ddim-2", 2, 1), "ddim-3": ("ddim-3", 3, 1)}
    assert all(e["latency"]["median_ms"] > 0 for e in result["evals"].values())
    path = grid.cell_path(tmp_path, task, "diffusion", 0.04)
    assert json.loads(path.read_text()) == result
    weights = grid.run_dir(tmp_path, task, "diffusion", 0.04) / "latest" / "model.safetensors"
    written = weights.stat().st_mtime_ns

    again, done = grid.run_cell(**run)
    assert (done, again) == ("skipped", result)

    # A setting missing from the result (a run interrupted between evaluations) is evaluated, without training.
    del result["evals"]["ddim-3"]
    path.write_text(json.dumps(result))
    again, done = grid.run_cell(**run)
    assert done == "evaluated"
    assert sorted(again["evals"]) == ["ddim-2", "ddim-3"] and again["train"] == result["train"]
    assert weights.stat().st_mtime_ns == written

    # The table lists every setting of the cell, and the family cells not run yet; a study cell (a preset
    # changed) only where it ran, with a note naming what it changes.
    grid.write_report(tmp_path, tmp_path, [task], ["diffusion", "flow", "diffusion-bf16"], {})
    table = (tmp_path / "grid.md").read_text()
    assert "| diffusion | ddim-2 |" in table and "| diffusion | ddim-3 |" in table
    assert "| flow | — | not run yet |" in table
    assert "| diffusion-bf16 |" not in table
    assert "`diffusion-bf16` is `diffusion` (cpu) with mixed_precision=bf16; a study, run on no task yet." in table
    assert json.loads((tmp_path / "grid.json").read_text())["cells"][0]["evals"].keys() == {"ddim-2", "ddim-3"}
