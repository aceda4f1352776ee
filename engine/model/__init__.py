"""The learner's Llama/Qwen2 decoder (megatron-core TP layers) and its Hugging Face I/O.

Import from the modules (`engine.model.config`, `engine.model.llama`, `engine.model.hf_io`);
this package file stays empty so that importing the config does not import megatron-core.
"""
