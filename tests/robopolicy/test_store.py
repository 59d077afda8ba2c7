"""Demonstration store, windows and normalizer, against real zarr stores on disk."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numcodecs
import numpy as np
import pytest
import torch
import zarr
import zarr.storage

from robopolicy.store import (
    DemoStore,
    EpisodeWriter,
    Normalizer,
    StoreError,
    StoreWarning,
    UnknownKeyError,
    WindowDataset,
    WindowSampler,
    split_episodes,
)
from robopolicy.store import zarr_store

REPO = Path(__file__).resolve().parents[2]

# Shared by the test process and the writer subprocesses, so both know what each episode holds.
EPISODE_SRC = """
import numpy as np

def episode(i, image_hw=8, length=None):
    rng = np.random.default_rng(i)
    T = 5 + i % 4 if length is None else length
    return {
        "state": rng.normal(size=(T, 4)).astype(np.float32),
        "action": rng.uniform(-1, 1, size=(T, 2)).astype(np.float32),
        "image_front": rng.integers(0, 256, size=(T, image_hw, image_hw, 3), dtype=np.uint8),
        "timestamp": np.arange(T) * 0.1,
    }
"""
_ns: dict = {}
exec(EPISODE_SRC, _ns)
episode = _ns["episode"]


def write_store(path, n, zarr_format=3, attrs=None):
    with EpisodeWriter(path, zarr_format=zarr_format, attrs=attrs) as w:
        for i in range(n):
            w.add_episode(episode(i))
    return path


def assert_episode_equal(got, want):
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].dtype == want[k].dtype, k
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


# ---------------------------------------------------------------------------------------------- store


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_roundtrip(tmp_path, zarr_format):
    path = tmp_path / "demos.zarr"
    attrs = {"action_semantics": "ee_delta", "control_rate_hz": 20.0, "expert": "scripted", "seeds": [0, 1]}
    with EpisodeWriter(path, zarr_format=zarr_format, attrs=attrs) as w:
        first = episode(0)
        for t in range(len(first["action"])):  # step by step for the first episode
            w.add_step({k: v[t] for k, v in first.items()})
        assert w.commit() == 0
        assert w.add_episode(episode(1)) == 1
        assert w.add_episode(episode(2)) == 2

    assert (path / ("zarr.json" if zarr_format == 3 else ".zgroup")).is_file()
    store = DemoStore.open(path)
    assert store.zarr_format == zarr_format
    assert store.n_episodes == 3
    np.testing.assert_array_equal(store.episode_ends, [5, 11, 18])
    assert store.episode_ends.dtype == np.int64
    assert store.n_steps == 18
    np.testing.assert_array_equal(store.episode_lengths, [5, 6, 7])
    assert store.episode_slice(1) == slice(5, 11)
    assert store.episode_slice(-1) == slice(11, 18)
    assert store.keys == ["action", "image_front", "state", "timestamp"]
    assert store.action_key == "action"
    assert store.obs_keys == ["image_front", "state"]
    assert store.action_semantics == "ee_delta"
    assert store.control_rate_hz == 20.0
    assert store.attrs["schema_version"] == 1
    assert store.attrs["expert"] == "scripted" and store.attrs["seeds"] == [0, 1]
    for i, ep in enumerate(store.iter_episodes()):
        assert_episode_equal(ep, episode(i))
    assert_episode_equal(store.episode(1, keys=["state"]), {"state": episode(1)["state"]})
    full = store.load()
    np.testing.assert_array_equal(full["state"], np.concatenate([episode(i)["state"] for i in range(3)]))
    sub = store.load(keys=["action"], episodes=[2, 0])
    np.testing.assert_array_equal(sub["action"], np.concatenate([episode(2)["action"], episode(0)["action"]]))
    with pytest.raises(IndexError, match="episode 3 out of range"):
        store.episode(3)
    with pytest.raises(StoreError, match="read-only"):
        store.set_attrs(x=1)


def test_format2_is_plain_zarr_v2(tmp_path):
    path = write_store(tmp_path / "v2.zarr", 2, zarr_format=2)
    meta = json.loads((path / "data" / "state" / ".zarray").read_text())
    assert meta["zarr_format"] == 2 and meta["dtype"] == "<f4" and meta["shape"] == [11, 4]
    assert meta["compressor"]["id"] == "blosc" and meta["compressor"]["cname"] == "zstd"
    ends = json.loads((path / "meta" / "episode_ends" / ".zarray").read_text())
    assert ends["dtype"] == "<i8" and ends["shape"] == [2]
    group = zarr.open_group(str(path), mode="r", zarr_format=2)
    np.testing.assert_array_equal(group["meta/episode_ends"][:], [5, 11])


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_chunking_and_compression(tmp_path, zarr_format):
    path = tmp_path / "c.zarr"
    ep = episode(0, image_hw=32, length=40)
    ep["image_front"][:] = 7  # compressible: a stored chunk must be far smaller than the raw frame
    with EpisodeWriter(path, zarr_format=zarr_format) as w:
        w.add_episode(ep)
    store = DemoStore.open(path)
    img = store.array("image_front")
    assert img.chunks == (1, 32, 32, 3)
    assert img.dtype == np.uint8
    assert [type(c).__name__ for c in img.compressors] == (["Blosc"] if zarr_format == 2 else ["BloscCodec"])
    metadata = ("zarr.json", ".zarray", ".zattrs")
    files = (path / "data" / "image_front").rglob("*")
    chunk_files = [f for f in files if f.is_file() and f.name not in metadata]
    assert len(chunk_files) == 40
    assert max(f.stat().st_size for f in chunk_files) < 32 * 32 * 3 / 10
    state = store.array("state")
    assert state.chunks[0] >= 1024 and state.chunks[1:] == (4,)
    assert len(state.compressors) == 1


def test_zip_export_and_read(tmp_path):
    store = DemoStore.open(write_store(tmp_path / "d.zarr", 3))
    dest = store.export_zip(tmp_path / "d.zarr.zip")
    with pytest.raises(FileExistsError):
        store.export_zip(dest)
    with DemoStore.open(dest) as z:
        assert z.n_episodes == 3
        np.testing.assert_array_equal(z.episode_ends, store.episode_ends)
        for i in range(3):
            assert_episode_equal(z.episode(i), episode(i))
        assert "zip" in z.summary()
    with pytest.raises(StoreError, match="read-only"):
        DemoStore.open(dest, mode="a")


def _write_dp_store(group):
    """What Diffusion Policy's ReplayBuffer leaves on disk: no attributes, Blosc lz4 data, int64 ends."""
    dp = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.NOSHUFFLE)
    import imagecodecs.numcodecs

    rng = np.random.default_rng(0)
    arrays = {
        "state": rng.normal(size=(12, 5)).astype(np.float32),
        "action": rng.normal(size=(12, 2)).astype(np.float32),
        "img": (rng.integers(0, 8, size=(12, 16, 16, 3)) * 32).astype(np.uint8),
    }
    data = group.require_group("data")
    for k in ("state", "action"):
        data.create_array(k, data=arrays[k], chunks=(12, arrays[k].shape[1]), compressors=dp)
    # Images as Jpeg2k, one frame per chunk (imagecodecs_numcodecs in Diffusion Policy).
    jpeg2k = imagecodecs.numcodecs.Jpeg2k(level=50)
    data.create_array("img", data=arrays["img"], chunks=(1, 16, 16, 3), compressors=jpeg2k)
    ends = np.array([4, 12], dtype=np.int64)
    group.require_group("meta").create_array("episode_ends", data=ends, compressors=None)
    return arrays


@pytest.mark.parametrize("container", ["directory", "zip"])
def test_diffusion_policy_store(tmp_path, container):
    if container == "directory":
        path = tmp_path / "pusht_cchi_v7_replay.zarr"
        arrays = _write_dp_store(zarr.open_group(str(path), mode="w", zarr_format=2))
    else:
        path = tmp_path / "replay.zarr.zip"
        zip_store = zarr.storage.ZipStore(path, mode="w")
        arrays = _write_dp_store(zarr.open_group(zip_store, mode="w", zarr_format=2))
        zip_store.close()
    with DemoStore.open(path) as store:
        assert store.zarr_format == 2
        assert store.attrs == {}
        assert store.action_key == "action"
        assert store.obs_keys == ["img", "state"]
        assert store.action_semantics == "unknown"
        assert store.control_rate_hz is None
        np.testing.assert_array_equal(store.episode_lengths, [4, 8])
        ep = store.episode(1)
        np.testing.assert_array_equal(ep["state"], arrays["state"][4:])
        np.testing.assert_array_equal(ep["action"], arrays["action"][4:])
        assert ep["img"].shape == (8, 16, 16, 3) and ep["img"].dtype == np.uint8
        assert np.abs(ep["img"].astype(int) - arrays["img"][4:]).mean() < 4  # Jpeg2k level 50 is lossy
        text = store.summary()
        assert "lz4" in text and "imagecodecs_jpeg2k" in text


def test_append_to_diffusion_policy_store(tmp_path):
    path = tmp_path / "dp.zarr"
    arrays = _write_dp_store(zarr.open_group(str(path), mode="w", zarr_format=2))
    new = {k: v[:3] for k, v in arrays.items()}
    with EpisodeWriter(path) as w:  # format 3 requested, but an existing store keeps its format
        w.add_episode(new)
    store = DemoStore.open(path)
    assert store.zarr_format == 2 and store.attrs == {}  # no attributes forced onto a foreign store
    np.testing.assert_array_equal(store.episode_ends, [4, 12, 15])
    np.testing.assert_array_equal(store.episode(2)["state"], arrays["state"][:3])


def _add_tail(path, rows):
    """Append `rows` junk steps to every data array without touching episode_ends (a killed writer)."""
    group = zarr.open_group(str(path), mode="r+")
    for k in group["data"].array_keys():
        arr = group["data"][k]
        n = arr.shape[0]
        arr.resize((n + rows, *arr.shape[1:]))
        arr[n:] = 99


def test_uncommitted_tail_ignored_then_truncated(tmp_path):
    path = write_store(tmp_path / "t.zarr", 2)
    _add_tail(path, 3)
    listed = r"data/action \+3, data/image_front \+3, data/state \+3, data/timestamp \+3"
    with pytest.warns(StoreWarning, match=rf"steps past the last committed episode, ignored \({listed}\)"):
        store = DemoStore.open(path)
    assert store.n_steps == 11 and store.array("state").shape[0] == 14
    assert len(store.load()["state"]) == 11
    committed = np.concatenate([episode(0)["state"], episode(1)["state"]])
    np.testing.assert_array_equal(store.stats("state")["max"], committed.max(0))

    with pytest.warns(StoreWarning, match=r"truncating uncommitted steps \(data/action \+3,"):
        w = EpisodeWriter(path)
    assert DemoStore.open(path).array("state").shape[0] == 11
    w.add_episode(episode(2))
    w.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        store = DemoStore.open(path)
    assert store.n_episodes == 3
    for i in range(3):
        assert_episode_equal(store.episode(i), episode(i))


def test_short_array_is_corrupt(tmp_path):
    path = tmp_path / "short.zarr"
    with EpisodeWriter(path) as w:
        w.add_episode(episode(0, length=100))
    zarr.open_group(str(path), mode="r+")["data/state"].resize((90, 4))
    corrupt = "array data/state has 90 steps but meta/episode_ends says 100: the store is corrupt"
    with pytest.raises(StoreError, match=corrupt):
        DemoStore.open(path)


def test_not_a_store(tmp_path):
    with pytest.raises(StoreError, match="no such file"):
        DemoStore.open(tmp_path / "missing.zarr")
    (tmp_path / "plain.txt").write_text("hello")
    with pytest.raises(StoreError, match="plain file"):
        DemoStore.open(tmp_path / "plain.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="without zarr.json or .zgroup"):
        DemoStore.open(tmp_path / "empty")
    zarr.open_group(str(tmp_path / "nodata.zarr"), mode="w").require_group("meta")
    with pytest.raises(StoreError, match="no 'data' group"):
        DemoStore.open(tmp_path / "nodata.zarr")
    zarr.open_group(str(tmp_path / "noends.zarr"), mode="w").require_group("data")
    with pytest.raises(StoreError, match="no meta/episode_ends"):
        DemoStore.open(tmp_path / "noends.zarr")
    g = zarr.open_group(str(tmp_path / "decreasing.zarr"), mode="w")
    g.require_group("data")
    g.require_group("meta").create_array("episode_ends", data=np.array([5, 3], dtype=np.int64))
    with pytest.raises(StoreError, match=r"decreases at episode 1 \(5 -> 3\)"):
        DemoStore.open(tmp_path / "decreasing.zarr")


def test_missing_key_lists_keys(tmp_path):
    store = DemoStore.open(write_store(tmp_path / "k.zarr", 1))
    available = r"\['action', 'image_front', 'state', 'timestamp'\]"
    with pytest.raises(StoreError, match=rf"no array data/nope; available: {available}"):
        store.array("nope")


def test_check_finite_names_episode_and_step(tmp_path):
    path = write_store(tmp_path / "nan.zarr", 3)
    DemoStore.open(path).check_finite()  # clean
    group = zarr.open_group(str(path), mode="r+")
    group["data/action"][5 + 3, 1] = np.nan  # episode 1 starts at row 5
    group["data/state"][12, 0] = np.inf  # episode 2 starts at row 11
    store = DemoStore.open(path)
    with pytest.raises(StoreError, match=r"data/action holds nan at episode 1, step 3 \(row 8\)"):
        store.check_finite()
    with pytest.raises(StoreError, match=r"data/state holds inf at episode 2, step 1 \(row 12\)"):
        store.check_finite(["state", "image_front"])


def test_episode_mismatch_refused(tmp_path):
    path = tmp_path / "m.zarr"
    with EpisodeWriter(path) as w:
        w.add_episode(episode(0))
        extra = {**episode(1), "depth_front": np.zeros((6, 4, 4), np.float32)}
        with pytest.raises(StoreError, match=r"extra: \['depth_front'\]"):
            w.add_episode(extra)
        missing = {k: v for k, v in episode(1).items() if k != "timestamp"}
        with pytest.raises(StoreError, match=r"missing: \['timestamp'\]"):
            w.add_episode(missing)
        wrong_shape = {**episode(1), "state": np.zeros((6, 5), np.float32)}
        shapes = r"data/state holds steps of shape \(4,\) float32, .*\(5,\) float32"
        with pytest.raises(StoreError, match=shapes):
            w.add_episode(wrong_shape)
        wrong_dtype = {**episode(1), "action": episode(1)["action"].astype(np.float64)}
        with pytest.raises(StoreError, match=r"data/action .* float64"):
            w.add_episode(wrong_dtype)
        with pytest.raises(StoreError, match="empty episode"):
            w.commit()
        w.add_step({"state": np.zeros(4, np.float32), "action": np.zeros(2, np.float32)})
        with pytest.raises(StoreError, match=r"step 1 has keys \['state'\]"):
            w.add_step({"state": np.zeros(4, np.float32)})
        w.discard()
        assert w.n_buffered == 0
        w.add_episode(episode(1))
    store = DemoStore.open(path)
    assert store.n_episodes == 2  # the refused episodes left nothing behind
    assert store.array("state").shape[0] == store.n_steps == 11


def test_writer_attrs(tmp_path):
    path = write_store(tmp_path / "a.zarr", 1, attrs={"action_semantics": "joint_pos"})
    with pytest.raises(StoreError, match="action_semantics='joint_pos'.*'ee_delta'"):
        EpisodeWriter(path, attrs={"action_semantics": "ee_delta"})
    with EpisodeWriter(path, attrs={"teleop": "spacemouse"}) as w:
        w.set_attrs(camera_intrinsics={"front": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]})
    attrs = DemoStore.open(path).attrs
    assert attrs["teleop"] == "spacemouse" and attrs["action_semantics"] == "joint_pos"
    assert attrs["camera_intrinsics"]["front"][1] == [0, 1, 0]
    with EpisodeWriter(tmp_path / "b.zarr", attrs={"obs_keys": ["joint_state"]}) as w:
        with pytest.raises(StoreError, match=r"root attributes name \['joint_state'\]"):
            w.add_episode(episode(0))
        w.set_attrs(obs_keys=["state"])  # the refused episode left no arrays behind, so this one fits
        w.add_episode(episode(0))
    assert DemoStore.open(tmp_path / "b.zarr").obs_keys == ["state"]
    (tmp_path / "made_by_hand").mkdir()  # an empty directory becomes a store
    with EpisodeWriter(tmp_path / "made_by_hand", zarr_format=2) as w:
        w.add_episode(episode(0))
    assert DemoStore.open(tmp_path / "made_by_hand").zarr_format == 2


def test_stats_in_blocks_and_summary(tmp_path, monkeypatch):
    path = write_store(tmp_path / "s.zarr", 4, attrs={"expert": "scripted"})
    monkeypatch.setattr(zarr_store, "_READ_BLOCK_BYTES", 1)  # one time chunk per block
    monkeypatch.setattr(zarr_store, "_CHUNK_BYTES", 16 * 3)  # 3 steps of state per chunk
    path2 = write_store(tmp_path / "s2.zarr", 4)
    for p in (path, path2):
        store = DemoStore.open(p)
        state = np.concatenate([episode(i)["state"] for i in range(4)]).astype(np.float64)
        st = store.stats("state")
        want_stats = {"min": state.min(0), "max": state.max(0), "mean": state.mean(0), "std": state.std(0)}
        for name, want in want_stats.items():
            assert st[name].dtype == np.float32 and st[name].shape == (4,)
            np.testing.assert_allclose(st[name], want, rtol=1e-5, atol=1e-6, err_msg=name)
        ts = store.stats("timestamp")
        assert ts["max"].shape == () and ts["max"] == pytest.approx(0.7)
    assert DemoStore.open(path2).array("state").chunks[0] == 3
    text = DemoStore.open(path).summary()
    assert str(path) in text and "zarr format 3" in text
    assert "episodes  4, steps 26" in text
    assert "data/image_front" in text and "(26, 8, 8, 3)" in text and "chunks (1, 8, 8, 3)" in text
    assert "blosc(" in text and "cname=zstd" in text
    assert "expert: scripted" in text
    line = next(l for l in text.splitlines() if l.strip().startswith("data/action") and "min" in l)
    assert f"{DemoStore.open(path).stats('action')['min'][0]:.3f}" in line


def test_drop_episodes(tmp_path):
    path = write_store(tmp_path / "d.zarr", 5, attrs={"expert": "x"})
    with pytest.raises(StoreError, match="read-only"):
        DemoStore.open(path).drop_episodes([0])
    store = DemoStore.open(path, mode="a")
    store.drop_episodes([1, -1])
    for s in (store, DemoStore.open(path)):
        assert s.n_episodes == 3
        for got, i in zip(range(3), [0, 2, 3], strict=True):
            assert_episode_equal(s.episode(got), episode(i))
        assert s.attrs["expert"] == "x"
        assert s.array("image_front").chunks[0] == 1 and s.array("state").compressors[0].cname.value == "zstd"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.zarr"]  # no temporary or backup left
    with pytest.raises(IndexError, match=r"episodes \[7\] out of range"):
        store.drop_episodes([7])
    with EpisodeWriter(path) as w:  # still appendable
        assert w.add_episode(episode(9)) == 3


def test_merge(tmp_path):
    a = write_store(tmp_path / "a.zarr", 2, attrs={"action_semantics": "ee_delta"})
    with EpisodeWriter(tmp_path / "b.zarr", zarr_format=2) as w:
        for i in (5, 6, 7):
            w.add_episode(episode(i))
    store = DemoStore.open(a, mode="a")
    store.merge(tmp_path / "b.zarr")
    store = DemoStore.open(a)
    assert store.n_episodes == 5
    np.testing.assert_array_equal(store.episode_lengths, [5, 6, 6, 7, 8])
    for got, i in zip(range(5), [0, 1, 5, 6, 7], strict=True):
        assert_episode_equal(store.episode(got), episode(i))
    assert store.attrs["merged_from"] == [{"path": str(tmp_path / "b.zarr"), "episodes": 3}]

    # Into a fresh, empty store: arrays are created from the other store's layout.
    with EpisodeWriter(tmp_path / "empty.zarr"):
        pass
    empty = DemoStore.open(tmp_path / "empty.zarr", mode="a")
    empty.merge(a)
    assert DemoStore.open(tmp_path / "empty.zarr").n_episodes == 5

    with EpisodeWriter(tmp_path / "other.zarr") as w:
        w.add_episode({k: v for k, v in episode(0).items() if k != "image_front"})
    with pytest.raises(StoreError, match=r"missing: \['image_front'\]"):
        DemoStore.open(a, mode="a").merge(tmp_path / "other.zarr")
    with EpisodeWriter(tmp_path / "sem.zarr", attrs={"action_semantics": "joint_pos"}) as w:
        w.add_episode(episode(0))
    with pytest.raises(StoreError, match="action_semantics is 'ee_delta'"):
        DemoStore.open(a, mode="a").merge(tmp_path / "sem.zarr")
    assert DemoStore.open(a).n_episodes == 5


# ---------------------------------------------------------------------------------------------- SIGKILL


_CHILD_HANG = EPISODE_SRC + """
import os, sys, time
import zarr.storage._local as local
from robopolicy.store import EpisodeWriter
path, marker, n, fmt, point = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
w = EpisodeWriter(path, zarr_format=fmt)
for i in range(n):
    w.add_episode(episode(i))

# Every file zarr writes goes through local._put (an atomic replace). Hang at the chosen write of the
# next commit, so the parent kills us exactly there; the hung write never happens.
real_put = local._put
def put(file, value, exclusive=False):
    key = os.path.relpath(file, path).replace(os.sep, "/")
    is_meta = key.rsplit("/", 1)[-1] in ("zarr.json", ".zarray", ".zattrs")
    if {
        "data_chunk": key.startswith("data/") and not is_meta,  # first array resized, its rows not written
        "ends_chunk": key.startswith("meta/episode_ends/") and not is_meta,  # all rows written
        "ends_meta": key.startswith("meta/episode_ends/") and is_meta,  # new episode_ends entry written
    }[point]:
        open(marker, "w").close()
        time.sleep(600)
    return real_put(file, value, exclusive=exclusive)

local._put = put
w.add_episode(episode(n))
"""

_CHILD_LOOP = EPISODE_SRC + """
import os, sys
from robopolicy.store import EpisodeWriter
path, marker = sys.argv[1], sys.argv[2]
w = EpisodeWriter(path)
i = 0
while True:  # commit forever; the parent kills us somewhere inside a commit
    w.add_episode(episode(i, image_hw=48, length=20))
    i += 1
    with open(marker + ".tmp", "w") as f:
        f.write(str(i))
    os.replace(marker + ".tmp", marker)
"""


def _run_until(code, args, done, timeout=60.0):
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + timeout
    try:
        while not done():
            if proc.poll() is not None:
                pytest.fail(f"writer exited early ({proc.returncode}): {proc.stderr.read().decode()}")
            if time.monotonic() > deadline:
                pytest.fail("writer did not reach the kill point in time")
            time.sleep(0.01)
        return proc
    except BaseException:
        proc.kill()
        proc.wait()
        raise


def _kill(proc):
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL


@pytest.mark.parametrize(
    ("point", "zarr_format"), [("data_chunk", 3), ("ends_chunk", 2), ("ends_chunk", 3), ("ends_meta", 2)]
)
def test_sigkill_inside_a_commit(tmp_path, point, zarr_format):
    path, marker, n = tmp_path / "k.zarr", tmp_path / "marker", 3
    proc = _run_until(_CHILD_HANG, [path, marker, n, zarr_format, point], marker.exists)
    _kill(proc)

    with pytest.warns(StoreWarning, match="past the last committed episode"):
        store = DemoStore.open(path)
    assert store.n_episodes == n
    assert store.array("state").shape[0] == store.n_steps + len(episode(n)["state"])  # the tail is there
    tails = {k: store.array(k).shape[0] - store.n_steps for k in store.keys}
    assert tails == {k: 0 if point == "data_chunk" and k != "state" else 8 for k in store.keys}
    for i in range(n):
        assert_episode_equal(store.episode(i), episode(i))

    with pytest.warns(StoreWarning, match="truncating"):
        w = EpisodeWriter(path)
    assert w.add_episode(episode(10)) == n
    w.close()
    store = DemoStore.open(path)
    np.testing.assert_array_equal(store.episode_lengths, [5, 6, 7, 7])
    for i, want in enumerate([0, 1, 2, 10]):
        assert_episode_equal(store.episode(i), episode(want))


def test_sigkill_at_a_random_point_of_a_commit(tmp_path):
    path, marker = tmp_path / "r.zarr", tmp_path / "count"
    proc = _run_until(_CHILD_LOOP, [path, marker], lambda: marker.exists() and int(marker.read_text()) >= 3)
    time.sleep(random.uniform(0.0, 0.05))
    _kill(proc)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StoreWarning)  # a tail, if the kill landed after the data rows
        store = DemoStore.open(path)
    n = store.n_episodes
    assert n >= 3
    for i in range(n):
        assert_episode_equal(store.episode(i), episode(i, image_hw=48, length=20))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StoreWarning)
        w = EpisodeWriter(path)
    w.add_episode(episode(n, image_hw=48, length=20))
    w.close()
    store = DemoStore.open(path)
    assert store.n_episodes == n + 1
    assert_episode_equal(store.episode(n), episode(n, image_hw=48, length=20))


# ---------------------------------------------------------------------------------------------- windows


def _reference_windows(lengths, H, pad_before, pad_after):
    """Diffusion Policy's create_indices, one window at a time, as (rows, is_pad) lists."""
    pad_before, pad_after = min(pad_before, H - 1), min(pad_after, H - 1)
    rows, pads, start = [], [], 0
    for L in lengths:
        first, last = -pad_before, L - H + pad_after
        if L == 0:
            continue  # an empty episode has no frame to repeat
        if last < first:
            last = first  # an episode shorter than the window still yields one
        for s in range(first, last + 1):
            rows.append([start + min(max(s + j, 0), L - 1) for j in range(H)])
            pads.append([not 0 <= s + j < L for j in range(H)])
        start += L
    return np.array(rows).reshape(-1, H), np.array(pads).reshape(-1, H)


def _arrays(lengths, A=2):
    n = sum(lengths)
    return {
        "state": np.arange(n, dtype=np.float64)[:, None] * [1.0, -1.0],
        "image": np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 4, 4, 3)).copy(),
        "action": np.arange(n * A, dtype=np.float32).reshape(n, A),
    }


@pytest.mark.parametrize(
    ("lengths", "H", "To", "pad_before", "pad_after"),
    [
        ([10, 7, 12], 4, 2, None, None),
        ([10, 7, 12], 4, 2, 1, 3),
        ([20, 16], 16, 2, 1, 7),  # Diffusion Policy's PushT setting: pad_before To-1, pad_after Ta-1
        ([3, 1, 9, 0, 2], 8, 2, 5, 20),  # episodes shorter than H, an empty one, pads clipped to H-1
    ],
)
def test_windows_match_diffusion_policy(lengths, H, To, pad_before, pad_after):
    ends = np.cumsum(lengths)
    sampler = WindowSampler(
        _arrays(lengths), ends, horizon=H, n_obs_steps=To, obs_keys=["state"], action_key="action",
        pad_before=pad_before, pad_after=pad_after,
    )
    pb = To - 1 if pad_before is None else min(pad_before, H - 1)
    pa = H - 1 if pad_after is None else min(pad_after, H - 1)
    want_rows, want_pad = _reference_windows(lengths, H, pb, pa)
    np.testing.assert_array_equal(sampler.indices, want_rows)
    np.testing.assert_array_equal(sampler.is_pad, want_pad)
    expected = sum(max(L - H + pb + pa + 1, 1) if L > 0 else 0 for L in lengths)
    assert len(sampler) == expected
    assert set(np.unique(sampler.window_episode)) == {i for i, L in enumerate(lengths) if L > 0}


def test_window_padding_values_and_shapes():
    lengths = [6, 3]
    arrays = _arrays(lengths)
    sampler = WindowSampler(
        arrays, np.cumsum(lengths), horizon=4, n_obs_steps=2, obs_keys=["state", "image"], action_key="action"
    )
    # Episode 0 (L=6): starts -1..5 -> 7 windows; episode 1 (L=3, shorter than H): starts -1..2 -> 4.
    assert len(sampler) == 7 + 4
    batch = sampler.sample(np.arange(len(sampler)))
    assert batch["state"].shape == (11, 2, 2) and batch["state"].dtype == np.float32  # only To frames
    assert batch["image"].shape == (11, 2, 4, 4, 3) and batch["image"].dtype == np.uint8
    assert batch["action"].shape == (11, 4, 2) and batch["action"].dtype == np.float32
    assert batch["action_is_pad"].shape == (11, 4) and batch["action_is_pad"].dtype == bool
    # First window: the step before the episode repeats its first frame.
    np.testing.assert_array_equal(batch["state"][0, :, 0], [0, 0])
    np.testing.assert_array_equal(batch["action"][0], arrays["action"][[0, 0, 1, 2]])
    np.testing.assert_array_equal(batch["action_is_pad"][0], [True, False, False, False])
    # Last window of episode 0 starts at its last step: the rest repeats frame 5, not episode 1's frames.
    np.testing.assert_array_equal(batch["action"][6], arrays["action"][[5, 5, 5, 5]])
    np.testing.assert_array_equal(batch["action_is_pad"][6], [False, True, True, True])
    np.testing.assert_array_equal(batch["image"][6, :, 0, 0, 0], [5, 5])
    # Episode 1 (rows 6..8) padded on both sides within one window.
    np.testing.assert_array_equal(batch["state"][7, :, 0], [6, 6])
    np.testing.assert_array_equal(batch["action"][7, :, 0], arrays["action"][[6, 6, 7, 8], 0])
    np.testing.assert_array_equal(batch["action_is_pad"][7], [True, False, False, False])


def test_windows_episode_subset_and_split():
    train, val = split_episodes(10, 3, seed=0)
    assert len(val) == 3 and len(train) == 7
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(range(10))
    t2, v2 = split_episodes(10, 3, seed=0)
    np.testing.assert_array_equal(v2, val)
    assert any(not np.array_equal(split_episodes(10, 3, seed=s)[1], val) for s in range(1, 5))
    assert len(split_episodes(10, 0, seed=0)[1]) == 0
    with pytest.raises(ValueError, match="leaves no training episode"):
        split_episodes(3, 3, seed=0)

    lengths = [5, 6, 7, 8, 9, 10, 5, 6, 7, 8]
    ends = np.cumsum(lengths)
    common = dict(horizon=4, n_obs_steps=2, obs_keys=["state"], action_key="action")
    tr = WindowSampler(_arrays(lengths), ends, episodes=train, **common)
    va = WindowSampler(_arrays(lengths), ends, episodes=val, **common)
    assert set(tr.window_episode) == set(train) and set(va.window_episode) == set(val)
    starts = np.concatenate([[0], ends[:-1]])
    for s in (tr, va):  # every window stays inside its own episode
        assert (s.indices >= starts[s.window_episode][:, None]).all()
        assert (s.indices < ends[s.window_episode][:, None]).all()
    assert len(tr) + len(va) == len(WindowSampler(_arrays(lengths), ends, **common))


def test_window_dataset_batches():
    lengths = [6, 9]
    sampler = WindowSampler(
        _arrays(lengths), np.cumsum(lengths), horizon=4, n_obs_steps=2, obs_keys=["state", "image"],
        action_key="action",
    )
    ds = WindowDataset(sampler)
    item = ds[3]
    assert item["state"].shape == (2, 2) and item["state"].dtype == torch.float32
    assert item["image"].dtype == torch.uint8 and item["action_is_pad"].dtype == torch.bool
    np.testing.assert_array_equal(item["action"].numpy(), sampler.sample([3])["action"][0])
    with pytest.raises(IndexError):
        ds[len(ds)]
    batches = list(ds.batches(4, shuffle=True, seed=1, drop_last=False))
    assert len(ds) == 17 and [len(b["action"]) for b in batches] == [4, 4, 4, 4, 1]
    seen = torch.cat([b["action"][:, 0, 0] for b in batches])
    first_actions = torch.from_numpy(sampler.sample(np.arange(len(ds)))["action"][:, 0, 0])
    assert sorted(seen.tolist()) == sorted(first_actions.tolist())  # every window exactly once
    assert len(list(ds.batches(4, drop_last=True))) == len(ds) // 4


# ---------------------------------------------------------------------------------------------- normalizer


def _stats():
    return {
        "action": {"min": np.array([-2.0, 0.0, 3.0]), "max": np.array([2.0, 10.0, 3.00001]),
                   "mean": np.zeros(3), "std": np.ones(3)},
        "state": {"min": np.zeros(2), "max": np.ones(2), "mean": np.array([1.0, -2.0]),
                  "std": np.array([2.0, 0.0])},
    }


def test_normalizer_minmax_gaussian_image():
    n = Normalizer.from_store_stats(_stats(), modes={"state": "gaussian", "image_front": "image"})
    assert n.keys == ["action", "image_front", "state"] and n.mode("action") == "minmax"
    x = np.array([[-2.0, 0.0, 3.0], [2.0, 10.0, 3.00001], [0.0, 5.0, 3.0]], dtype=np.float32)
    y = n.normalize("action", x)
    # Dimension 2 has range 1e-5 < 1e-4: shifted so its minimum maps to 0, not stretched over [-1, 1].
    np.testing.assert_allclose(y, [[-1, -1, 0], [1, 1, 1e-5], [0, 0, 0]], atol=1e-6)
    np.testing.assert_allclose(n.unnormalize("action", y), x, atol=1e-6)
    s = n.normalize("state", np.array([3.0, -2.0]))
    np.testing.assert_allclose(s, [1.0, 0.0])  # std 0 is floored, not divided by
    img = np.array([[[0, 255, 51]]], dtype=np.uint8)
    np.testing.assert_allclose(n.normalize("image_front", img), [[[-1.0, 1.0, -0.6]]], atol=1e-6)
    assert n.normalize("image_front", img).dtype == np.float32

    t = torch.tensor(x).reshape(1, 3, 3)
    yt = n.normalize("action", t)
    assert isinstance(yt, torch.Tensor) and yt.dtype == torch.float32
    np.testing.assert_allclose(yt.numpy().reshape(3, 3), y, atol=1e-6)
    torch.testing.assert_close(n.unnormalize("action", yt), t, atol=1e-6, rtol=0)
    scale = n._cache[("action", t.device, torch.float32)][0]
    n.normalize("action", t)
    assert n._cache[("action", t.device, torch.float32)][0] is scale  # cached, not rebuilt per call
    with pytest.raises(ValueError, match=r"'action' expects \(\.\.\., 3\)"):
        n.normalize("action", np.zeros((2, 4)))


def test_normalizer_json_roundtrip_and_unknown_key():
    n = Normalizer.from_store_stats(_stats(), modes={"state": "gaussian", "image_front": "image"})
    d = json.loads(json.dumps(n.to_dict()))
    m = Normalizer.from_dict(d)
    assert m.keys == n.keys and m.mode("state") == "gaussian"
    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    np.testing.assert_array_equal(m.normalize("action", x), n.normalize("action", x))
    np.testing.assert_array_equal(m.stats("action")["max"], np.float32([2.0, 10.0, 3.00001]))
    known = r"\['action', 'image_front', 'state'\]"
    with pytest.raises(UnknownKeyError, match=rf"no key 'velocity'; known keys: {known}") as e:
        n.normalize("velocity", x)
    assert isinstance(e.value, KeyError)
    with pytest.raises(ValueError, match="needs statistics"):
        Normalizer.from_store_stats({}, modes={"state": "gaussian"})
    with pytest.raises(ValueError, match="unknown mode 'zscore'"):
        Normalizer.from_store_stats(_stats(), modes={"state": "zscore"})


def test_normalizer_from_store(tmp_path):
    store = DemoStore.open(write_store(tmp_path / "n.zarr", 3))
    n = Normalizer.from_store_stats({k: store.stats(k) for k in ("action", "state")})
    y = n.normalize("action", store.load(["action"])["action"])
    assert y.min() == pytest.approx(-1.0, abs=1e-6) and y.max() == pytest.approx(1.0, abs=1e-6)
