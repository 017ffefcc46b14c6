import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# model folders' file hashes (models/identity.py) cached in a folder of the test session, not the user's
os.environ.setdefault("STILLMOTION_CACHE_DIR", tempfile.mkdtemp(prefix="stillmotion-test-cache-"))

import pytest  # noqa: E402
import torch  # noqa: E402

from stillmotion.models.loading import load_stable_diffusion  # noqa: E402
from stillmotion.models.tiny import make_tiny_model  # noqa: E402

# The tests' models are tiny: a second intra-op thread buys nothing, and on a 2-core machine shared with
# the Prefect servers and CLI subprocesses the tests start, OpenMP's spinning threads made the in-process
# model tests up to 7x slower (the toy edits' fixture: 603 s with torch's 2 threads, 84 s with 1).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny SD + BLIP written once per test session by `make_tiny_model`."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def sd(tiny_model_dir):
    torch.manual_seed(0)
    return load_stable_diffusion(str(tiny_model_dir), device="cpu", dtype="fp32")
