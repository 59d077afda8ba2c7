"""The training fast path (WindowSampler.batch): the same windows as `sample`, model-ready, on real zarr."""

import numpy as np
import pytest
import torch

from robopolicy.store import DemoStore, EpisodeWriter, Normalizer, WindowSampler


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "cams.zarr"
    rng = np.random.default_rng(0)
    with EpisodeWriter(path) as w:
        for length in (9, 5, 14, 3):
            w.add_episode({"state": rng.normal(size=(length, 4)),  # float64 on purpose: batches are float32
                           "image_front": rng.integers(0, 256, (length, 12, 10, 3), dtype=np.uint8),
                           "action": rng.uniform(-2, 3, (length, 2)).astype(np.float32)})
    return DemoStore.open(path)


def make_sampler(store) -> tuple[WindowSampler, Normalizer]:
    arrays = store.load()
    stats = {k: store.stats(k) for k in ("state", "action")}
    normalizer = Normalizer.from_store_stats(stats, {"image_front": "image", "state": "gaussian"})
    sampler = WindowSampler(arrays, store.episode_ends, horizon=6, n_obs_steps=2,
                            obs_keys=["image_front", "state"], action_key="action", pad_after=3)
    return sampler, normalizer


def test_batch_is_sample_normalised(store):
    sampler, normalizer = make_sampler(store)
    idx = np.array([0, 3, len(sampler) - 1, 7, 7])
    want = sampler.sample(idx)
    got = sampler.batch(idx, normalizer)
    assert sorted(got) == ["action", "action_is_pad", "image_front", "state"]
    assert got["image_front"].shape == (5, 2, 12, 10, 3) and got["image_front"].dtype == torch.float32
    assert got["state"].shape == (5, 2, 4) and got["action"].shape == (5, 6, 2)
    for key in ("image_front", "state", "action"):
        expected = normalizer.normalize(key, want[key].astype(np.float32))
        np.testing.assert_allclose(got[key].numpy(), expected, rtol=1e-6, atol=1e-6, err_msg=key)
    np.testing.assert_array_equal(got["action_is_pad"].numpy(), want["action_is_pad"])
    assert got["image_front"].min() >= -1 - 1e-6 and got["image_front"].max() <= 1 + 1e-6
    assert got["image_front"].min() < -0.9 and got["image_front"].max() > 0.9  # the full range, not [0, 1]

    raw = sampler.batch(idx)  # no normaliser: images stay uint8, floats become float32
    assert raw["image_front"].dtype == torch.uint8 and raw["state"].dtype == torch.float32
    np.testing.assert_array_equal(raw["image_front"].numpy(), want["image_front"])
    with pytest.raises(IndexError):
        sampler.batch([len(sampler)], normalizer)


def test_channels_first_is_a_view_the_encoder_can_take(store):
    sampler, normalizer = make_sampler(store)
    hwc = sampler.batch([1, 2], normalizer)["image_front"]
    chw = sampler.batch([1, 2], normalizer, channels_first=True)["image_front"]
    assert chw.shape == (2, 2, 3, 12, 10)
    torch.testing.assert_close(chw, hwc.permute(0, 1, 4, 2, 3), rtol=0, atol=0)
    conv = torch.nn.Conv2d(3, 4, 3)
    torch.testing.assert_close(conv(chw.flatten(0, 1)), conv(chw.flatten(0, 1).contiguous()))


def test_reused_buffers_alternate_between_two_sets(store):
    sampler, normalizer = make_sampler(store)
    first = sampler.batch([0, 1], normalizer, reuse_buffers=True)
    kept = {k: v.clone() for k, v in first.items()}
    second = sampler.batch([10, 11], normalizer, reuse_buffers=True)
    torch.testing.assert_close(first["image_front"], kept["image_front"])  # still valid through the next call
    assert second["image_front"].data_ptr() != first["image_front"].data_ptr()
    third = sampler.batch([20, 21], normalizer, reuse_buffers=True)
    assert third["image_front"].data_ptr() == first["image_front"].data_ptr()  # the first set, overwritten
    assert not torch.equal(first["image_front"], kept["image_front"])
    fresh = sampler.batch([20, 21], normalizer)
    torch.testing.assert_close(third["state"], fresh["state"])
    assert fresh["state"].data_ptr() != third["state"].data_ptr()
    smaller = sampler.batch([3], normalizer, reuse_buffers=True)  # another batch size gets its own buffer
    torch.testing.assert_close(smaller["action"], sampler.batch([3], normalizer)["action"])

