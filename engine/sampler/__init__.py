"""The sampler: a vLLM engine wrapper that generates with log-probs and takes new weights in place.

`vllm_engine.py` holds `VLLMSampler` (generate / push_weights / version / close);
`transport.py` holds the weight transports it pushes through (in-process, shared-memory files in
buckets of whole layers); `gpu_transport.py` the GPU-only CUDA IPC one (untested without a GPU).
"""

from engine.sampler.transport import (
    InProcessTransport,
    PushStats,
    SharedMemoryFileTransport,
    WeightTransport,
    WorkerWeightReloadExtension,
)
from engine.sampler.vllm_engine import LOGPROBS_MODE, Sample, VLLMSampler

__all__ = [
    "LOGPROBS_MODE",
    "InProcessTransport",
    "PushStats",
    "Sample",
    "SharedMemoryFileTransport",
    "VLLMSampler",
    "WeightTransport",
    "WorkerWeightReloadExtension",
]
