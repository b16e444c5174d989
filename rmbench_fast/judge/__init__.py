"""Generative judges: pairwise verdicts on RM-Bench, ratings on RewardBench 2; through an
OpenAI-compatible server or vLLM.

Modules, in data-flow order:

- `prompt`: the RM-Bench README's pairwise template, custom templates, the verdict parser;
- `requests`: the 18 requests of a record in prefix order, request keys, responses;
- `client`: the OpenAI-compatible HTTP client (concurrency, retries, timeouts);
- `engine_vllm`: vLLM in-process (`vllm.LLM`, prefix caching on);
- `log`: the append-only response log that makes runs resumable;
- `scoring`: pair scores, M[i][j], hard / normal / easy, judge statistics;
- `runner`: one whole generative run (its options are in `rmbench_fast.commands`).
- `ratings`: RewardBench 2's official ratings mode (one request per completion) on the same
  transport, log and store (`run --benchmark rewardbench2 --kind generative`).

The scoring rule is stated in `scoring` and in every run's metrics.json (`meta.scoring`).
"""
