import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a whole test module (`pytestmark = pytest.mark.usefixtures("one_thread")`):
    tiny models gain nothing from a second thread, and when other processes share the cores two
    OpenMP threads per process wait on each other (benchmarks/serve.py measured 5-10x slower steps
    under load; the server tests also run a model in a background thread)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
