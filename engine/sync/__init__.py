"""Weight sync from the learner to the sampler.

weights.py  WeightSync: the sampler's weight version, the push every `s` steps, the parity policy
            (batch check / probe), eval swaps, and the sampler's part of a checkpoint
buckets.py  cutting the HF-named tensor stream into buckets of whole layers

The HF-name/packing table is `engine/model/specs.py`; the TP gather and PP broadcast are
`engine/model/hf_io.iter_hf_weights`; the transports (shared-memory files, in-process, CUDA IPC)
are `engine/sampler/transport.py` and `engine/sampler/gpu_transport.py`.
"""
