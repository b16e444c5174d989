"""Tests of rmbench_fast/judge/ (without a real vLLM; tests/test_judge_vllm.py has one).

- test_judge_engine: the in-process vLLM engine's parts that need no vLLM
- test_judge_fake_server: generative runs against a tiny fake OpenAI-compatible server
- test_judge_prompt: the judge prompt and the verdict parser
- test_judge_scoring: generative scoring: request order, pair scores, metrics.json
"""
