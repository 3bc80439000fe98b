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


def pytest_collection_modifyitems(items):
    """The README's commands first: the longest test (4-5 minutes from a cold numba cache, most of
    it compiling as a user's first runs would) then overlaps the rest of the suite in the other test
    process instead of running last in one of them (`make test` keeps files in collection order)."""
    items.sort(key=lambda item: item.path.name != "test_readme.py")
