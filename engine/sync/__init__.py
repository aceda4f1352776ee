"""Weight sync from the learner to the sampler: cutting the HF-named stream into buckets of whole
layers (`buckets.py`). The HF-name/packing table is `engine/model/specs.py`; the TP gather and PP
broadcast are `engine/model/hf_io.iter_hf_weights`; the transports are `engine/sampler/transport.py`."""

from engine.sync.buckets import BucketStats, layer_buckets, layer_key

__all__ = ["BucketStats", "layer_buckets", "layer_key"]
