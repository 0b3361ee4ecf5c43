"""Fixtures shared by test modules."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`): tiny matmuls gain
    nothing from a second thread, and on a 2-vCPU machine a second OpenMP thread spin-waits whenever another
    process holds a core (each op stalled by ~16 ms, see benchmarks/bench_generation.py); bitwise comparisons
    of two runs also need it, since 2-thread CPU reductions may differ run to run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
