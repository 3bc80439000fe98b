import os

import pytest
import torch

# the whole-step program binds the fused kernels when imported: before any test wraps one to count calls
import hybridlm.ops.decode_program  # noqa: F401, E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
