"""Suite-wide settings: tests run on a shared 2-core machine, where tiny models are far faster on one thread."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
