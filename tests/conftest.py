import os

import pytest
import torch

# the whole-step program binds the fused kernels when imported: before any test wraps one to count calls
import hybridlm.ops.decode_program_kernels  # noqa: F401, E402

# two torch threads, one each where `make test` runs two test processes side by side (pytest-xdist)
_PROCESSES = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _PROCESSES)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
