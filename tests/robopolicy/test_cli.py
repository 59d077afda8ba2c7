"""The `robopolicy` command as a user runs it: separate processes, real zarr, real MuJoCo."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np

from robopolicy.store import DemoStore

ENV = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "osmesa"), "OMP_NUM_THREADS": "2"}
SUMMARY = re.compile(r"^success_rate=(\d\.\d{3}) ci95=\[(\d\.\d{3}),(\d\.\d{3})\] episodes=(\d+) sampler=(\S+) nfe=(\d+)$")


def robopolicy(*args, timeout=600, check=True):
    proc = subprocess.run([sys.executable, "-m", "robopolicy.cli", "--quiet", *map(str, args)], env=ENV,
                          capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_demo_smoke_collects_trains_evaluates_and_reports(tmp_path):
    out = tmp_path / "demo"
    proc = robopolicy("demo", "--out", out, "--demos", 4, "--steps", 20, "--eval-episodes", 2, "--workers", 2)
    last = proc.stdout.strip().splitlines()[-1]
    match = SUMMARY.match(last)
    assert match, last
    assert match.group(4) == "2" and match.group(5) == "ddim-10" and match.group(6) == "10"
    report = (out / "report.md").read_text()
    assert "success rate" in report and "![loss curve](loss.png)" in report
    assert (out / "loss.png").stat().st_size > 10_000
    assert (out / "videos" / "grid.mp4").stat().st_size > 10_000
    per_episode = json.loads((out / "eval.json").read_text())["per_episode"]
    assert [e["seed"] for e in per_episode] == [1000, 1001]
    assert DemoStore.open(out / "demos.zarr").n_episodes == 4
    info = robopolicy("info", out / "run").stdout
    assert "parameters     4,368,644" in info and "metaworld" in info


def test_collect_killed_mid_run_keeps_every_committed_episode(tmp_path):
    store = tmp_path / "demos.zarr"
    proc = subprocess.Popen([sys.executable, "-m", "robopolicy.cli", "--quiet", "collect", "--task",
                             "metaworld-push-v3", "--episodes", "500", "--out", str(store)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            time.sleep(0.3)
            try:
                if DemoStore.open(store).n_episodes >= 3:
                    break
            except Exception:  # not created yet
                continue
        time.sleep(0.137)  # land somewhere inside a later episode
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    reopened = DemoStore.open(store)
    n = reopened.n_episodes
    assert 3 <= n < 500
    lengths = reopened.episode_lengths
    assert np.all(lengths > 0) and lengths.sum() == reopened.n_steps
    for i in range(n):  # every committed episode is whole: the expert succeeded within it
        episode = reopened.episode(i)
        assert len(episode["state"]) == len(episode["action"]) == lengths[i]
    # Appending afterwards works and keeps what was there.
    robopolicy("collect", "--task", "metaworld-push-v3", "--episodes", 2, "--out", store, "--seed", 700)
    assert DemoStore.open(store).n_episodes == n + 2


def test_eval_refuses_a_checkpoint_for_another_action_space(tmp_path):
    from tests.robopolicy.toy_store import write_reach_store

    store = write_reach_store(tmp_path / "reach.zarr", episodes=3)
    robopolicy("train", "--store", store, "--out", tmp_path / "run", "--steps", 1, "--batch-size", 4)
    proc = robopolicy("eval", "--checkpoint", tmp_path / "run", "--task", "metaworld-push-v3", "--episodes", 1,
                      check=False)
    assert proc.returncode != 0
    assert "2-d" in proc.stderr and "4-d" in proc.stderr
    proc = robopolicy("eval", "--checkpoint", tmp_path / "run", "--task", "metaworld-pushh-v3", "--episodes", 1,
                      check=False)
    assert proc.returncode != 0 and "metaworld-push-v3" in proc.stderr  # suggests the closest name


def test_paper_config_trains_and_info_prints_its_parameter_count(tmp_path):
    from tests.robopolicy.toy_store import write_reach_store

    store = write_reach_store(tmp_path / "reach.zarr", episodes=3)
    robopolicy("train", "--store", store, "--config", "paper", "--out", tmp_path / "paper", "--steps", 1,
               "--batch-size", 4)
    info = robopolicy("info", tmp_path / "paper").stdout
    assert "parameters     65,324,546" in info, info  # dims 256/512/1024, t-emb 256; obs 4 x To 2, action 2
    assert "ddpm-100" in info
