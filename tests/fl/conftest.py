"""Run the learning tests on one torch thread.

The models are small, so a second intra-op thread saves little. On a busy 2-core
machine the two threads contend with other jobs, which made the suite about twice
as slow in one measurement.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def single_torch_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
