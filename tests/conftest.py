import os

# a hub lookup otherwise retries for tens of seconds before failing offline
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _two_threads():
    import torch

    torch.set_num_threads(2)
    yield


@pytest.fixture
def one_thread():
    """Tiny models are overhead-bound: one thread is as fast on an idle CPU and far faster on a shared one (two
    OpenMP threads spin-waiting for each other on a busy 2-core machine run ~10x slower), and keeps timings steady.
    Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
