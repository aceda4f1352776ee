"""GPU tests: those marked `gpu` skip cleanly when CUDA is absent (this directory only; the CPU
smoke test of the GPU check lives here too and always runs).

    pytest -m gpu tests/gpu -q          # on a CUDA node (launch/gpu_check.sh runs exactly this)
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def _skip_gpu_tests_without_cuda(request):
    if request.node.get_closest_marker("gpu") is not None and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (torch.cuda.is_available() is False)")
