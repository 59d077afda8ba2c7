"""The data-path benchmark in its quick mode: it runs, writes JSON, and batching beats per-sample access."""


def test_quick_data_path_benchmark_runs_and_beats_the_per_sample_reference(tmp_path):
    from bench.data_path import main

    result = main(["--quick", "--out", str(tmp_path / "data_path.json")])
    rates = result["windows_per_s"]
    assert (tmp_path / "data_path.json").is_file() and not (tmp_path / "data_path.md").exists()
    assert result["load_average_before"] and result["machine"]["cores"]
    # Batched gathering beats the reference's per-sample __getitem__ re-implemented beside it, whatever the load.
    assert rates["image_fast"] > 3 * rates["image_reference_getitem"]
    assert rates["lowdim_fast"] > 3 * rates["lowdim_reference_getitem"]
