"""The floor's cost model: FLOPs counted on the real U-Net, whichever backward it runs."""

import pytest

from bench import floor


def test_training_step_costs_three_forwards():
    """A convolution's or linear layer's backward is two GEMMs the size of its forward (input and weight
    gradients), so a training step must count about 3x the forward's FLOPs; an op the counter misses (our
    oneDNN weight-gradient GEMM did once) shows up as less."""
    costs = floor.unet_costs(batch_sizes=(1, 8))
    assert costs["params"] == 63_554_434 and costs["weight_bytes_bf16"] * 2 == costs["weight_bytes_fp32"]
    assert costs["train_flops_b8"] == pytest.approx(3 * costs["forward_flops_b8"], rel=0.01)
    assert costs["forward_flops_b8"] == pytest.approx(8 * costs["forward_flops_b1"], rel=0.01)
