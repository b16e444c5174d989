"""The model families, built from `rmbench_fast.engine.layers`.

Data flow: llama (Attention, DecoderLayer, LlamaModel, LlamaForScoring: Llama, Mistral, Qwen2)
-> qwen3 (q/k norms) and gemma2 (soft-caps, sandwich norms) on top of it -> reward_heads (the
custom classifier heads) -> tensor_parallel (one rank's shard of a built model).
"""
