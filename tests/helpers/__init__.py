"""Shared test helpers, imported as `tests.helpers.<module>` (the repository root is on sys.path
under pytest's default import mode, since tests/ is a package).

- paths: the repository root, bench/, the embedded sample, the shared RM-Bench data
- require: RMBF_REQUIRE (`required`, `missing`, `absent`), used by tests/conftest.py
- tiny: tiny random models (Llama, Qwen2/3, Mistral, Gemma-2, custom heads) and HF references
- smol_variants: SmolLM2-tokenizer stand-ins and their perturbed / classifier variants
- official: the official RM-Bench / reward-bench oracle (from the rewardbench wheel)
- rb2_official: the official RewardBench 2 scoring functions and classifier flow
- rb2_sample: a hand-written RewardBench 2 sample
- varlen_ref: a reference varlen_attn with FlashAttention's contract
- triton_env: the Triton-interpreter set-up of the kernel tests
"""
