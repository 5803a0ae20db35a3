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
