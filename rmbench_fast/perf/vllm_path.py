"""The vLLM path of `python -m rmbench_fast bench --paths ... vllm --vllm-python PATH`.

Run as a script by the vLLM environment's Python (vLLM pins its own torch and transformers,
so it lives in its own environment); it imports only vLLM and the standard library, never
rmbench_fast:

    VLLM_PYTHON rmbench_fast/perf/vllm_path.py SPEC.json OUT.json

SPEC.json (written by rmbench_fast.perf.bench.vllm): {"kind": "dpo" | "classifier", "models": [dirs],
"dtype", "prompts": [[token ids], ...], "label_start": [...] (DPO), "engine_args": {...}}.
The sequences are rmbench_fast's own tokenization, so every path scores the same tokens.

Scored the way a vLLM user would:
- DPO: `LLM.generate` with `SamplingParams(max_tokens=1, prompt_logprobs=0)`: vLLM returns
  log p(token_t | tokens_<t) for every prompt token; the answer tokens' log-probs
  (t >= label_start) go back, and the caller reduces them (avg / sum / norm, or Σ − Σ_ref with a
  reference model, which is loaded after the policy in the same process). Prefix caching is off
  here: a cached token gets no prompt log-prob.
- classifier: `LLM(runner="pooling").classify`, vLLM's pooling runner, which pools the last
  token and applies the model's activation (a sigmoid for one label: monotone, so rankings
  compare with the raw logits). The caller cuts each sequence after its pooled token, so the
  last token is the one the official pipeline pools.

OUT.json: {"vllm_version", "models": [{"model", "load_s", "score_s", "logprobs" | "scores",
"engine_args"}], "peak_rss_mib", "torch_threads"}. Load (engine start-up, weights, KV cache)
and scoring are timed apart.
"""

from __future__ import annotations

import gc
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

CPU_KV_CACHE_BYTES = 1 << 30


def engine_kwargs(spec: dict[str, Any], model: str, cuda: bool) -> dict[str, Any]:
    """The `vllm.LLM` keywords: the run's dtype, a context long enough for the longest sequence,
    and on a CPU eager mode and a 1 GiB KV cache (vLLM otherwise compiles for minutes and
    reserves most of the node's memory); `engine_args` overrides any of them."""
    longest = max((len(p) for p in spec["prompts"]), default=1)
    kw: dict[str, Any] = {
        "model": model,
        "dtype": spec.get("dtype", "auto"),
        "seed": 0,
        "max_model_len": max(longest + 1, 16),
    }
    if spec["kind"] == "dpo":
        kw["enable_prefix_caching"] = False
    else:
        kw["runner"] = "pooling"
    if not cuda:
        kw["enforce_eager"] = True
        kw["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
    kw.update(spec.get("engine_args") or {})
    return kw


def score_dpo(llm: Any, spec: dict[str, Any]) -> list[list[float]]:
    """Per sequence, the log-probs of its answer tokens (positions >= label_start)."""
    from vllm import SamplingParams  # optional dependency: vllm
    from vllm.inputs import TokensPrompt  # optional dependency: vllm

    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
    prompts = [TokensPrompt(prompt_token_ids=ids) for ids in spec["prompts"]]
    outs = llm.generate(prompts, params, use_tqdm=False)
    result = []
    for ids, start, out in zip(spec["prompts"], spec["label_start"], outs):
        plp = out.prompt_logprobs
        result.append([float(plp[t][ids[t]].logprob) for t in range(start, len(ids))])
    return result


def score_classifier(llm: Any, spec: dict[str, Any]) -> list[float]:
    """Per sequence, vLLM's classify output (the activation of the last token's logit)."""
    from vllm.inputs import TokensPrompt  # optional dependency: vllm

    prompts = [TokensPrompt(prompt_token_ids=ids) for ids in spec["prompts"]]
    outs = llm.classify(prompts, use_tqdm=False)
    return [float(o.outputs.probs[0]) for o in outs]


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main(argv: list[str]) -> int:
    """SPEC.json OUT.json -> 0; OUT.json has the results, or {"error": ...} and exit 1."""
    if len(argv) != 3:
        print("usage: vllm_path.py SPEC.json OUT.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[1]).read_text())
    out_path = Path(argv[2])
    try:
        import torch  # start-up cost: torch
        import vllm  # optional dependency: vllm
    except ImportError as exc:
        out_path.write_text(json.dumps({"error": f"vLLM is not importable in {sys.executable}: {exc}"}))
        return 1
    cuda = bool(torch.cuda.is_available())
    doc: dict[str, Any] = {"vllm_version": getattr(vllm, "__version__", None), "models": [], "cuda": cuda}
    for model in spec["models"]:
        kw = engine_kwargs(spec, model, cuda)
        t0 = time.perf_counter()
        llm = vllm.LLM(**kw)
        load_s = time.perf_counter() - t0
        t1, c1 = time.perf_counter(), _cpu_s()
        values = score_dpo(llm, spec) if spec["kind"] == "dpo" else score_classifier(llm, spec)
        score_s, cpu_s = time.perf_counter() - t1, _cpu_s() - c1
        row: dict[str, Any] = {
            "model": model,
            "load_s": load_s,
            "score_s": score_s,
            "cpu_s": cpu_s,  # this process's CPU time: the engine's too when it runs in-process
            "engine_args": kw,
        }
        row["logprobs" if spec["kind"] == "dpo" else "scores"] = values
        try:
            cache = llm.llm_engine.vllm_config.cache_config
            row["prefix_caching"] = bool(cache.enable_prefix_caching)
        except AttributeError:
            row["prefix_caching"] = None
        doc["models"].append(row)
        del llm
        gc.collect()
    doc["torch_threads"] = torch.get_num_threads()
    doc["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # with vLLM's engine in worker processes: the largest of them (ru_maxrss of the children)
    doc["peak_rss_children_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    out_path.write_text(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
