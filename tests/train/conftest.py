from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # small tensors: one intra-op thread is faster, and much faster on busy cores; it also
    # matches the training subprocesses and Dask workers these tests compare against
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
