"""`learner.te: auto | on | off` -> whether the decoder uses Transformer Engine layers (runs on CPU).

    .venv/bin/python -m pytest -q tests/gpu/test_te_resolve.py
"""

import pytest
import torch

from engine.model.llama import DecoderLayer
from engine.model.te import TEDecoderLayer, resolve_te, te_importable, te_layer_class


def test_cpu_keeps_the_megatron_layers():
    cpu = torch.device("cpu")
    assert resolve_te("auto", cpu) is False and resolve_te("off", cpu) is False
    assert te_layer_class(False) is DecoderLayer and te_layer_class(True) is TEDecoderLayer


def test_on_without_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match=r"learner\.te=on but the learner's device is cpu"):
        resolve_te("on", torch.device("cpu"))
    with pytest.raises(ValueError, match=r"learner\.te='yes': expected one of auto, on, off"):
        resolve_te("yes", torch.device("cpu"))


@pytest.mark.skipif(te_importable(), reason="checks the machine without Transformer Engine")
def test_on_cuda_without_te_names_the_missing_package():
    with pytest.raises(ValueError, match="transformer_engine.pytorch cannot be imported"):
        resolve_te("on", torch.device("cuda", 0))
    assert resolve_te("auto", torch.device("cuda", 0)) is False
