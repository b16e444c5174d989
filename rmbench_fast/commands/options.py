"""The options that several commands share, and the one mapping of parsed options to a config.

- `add_run_options`: the options of a run (and of a sweep), with the judge options
  (`add_judge_options`) and the bootstrap options (`add_stats_options`);
- `check_stats_options`: --resamples / --seed checks;
- `run_config(args)`: the run options as a RunConfig; `judge_config(args)`: as a JudgeConfig
  (`run --kind generative`), with the options that do not apply to a judge refused.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import TYPE_CHECKING, Any

from rmbench_fast.benchmarks import REWARDBENCH2
from rmbench_fast.benchmarks.rewardbench2.ratings import MAX_NEW_TOKENS as RATINGS_MAX_NEW_TOKENS
from rmbench_fast.errors import UsageError
from rmbench_fast.records import DOMAINS
from rmbench_fast.settings import DEFAULT_OUT, RunConfig, check_limit

if TYPE_CHECKING:
    from rmbench_fast.judge.runner import JudgeConfig

ENGINES = ("vllm",)
JUDGE_MAX_NEW_TOKENS = 4096  # RM-Bench's pairwise verdicts: an explanation, then the boxed verdict


def add_run_options(p: argparse.ArgumentParser, *, sweep: bool = False) -> None:
    """The options of a run (`run`, `profile`, `bench`, the stand-alone judge), or of a `sweep`: its
    MODEL directories instead of --model, and no judge options."""
    if sweep:
        p.add_argument(
            "models",
            nargs="+",
            metavar="MODEL",
            help="model directories (e.g. checkpoints) or hub ids ORG/NAME[@REVISION]",
        )
        p.add_argument(
            "--ray",
            metavar="ADDRESS",
            help="run each checkpoint as a Ray task: local (start a cluster here), auto (join the running one) "
            "or a cluster address; needs the [ray] extra",
        )
        p.add_argument(
            "--gpus-per-model",
            type=int,
            default=1,
            metavar="K",
            help="with --ray: GPUs per checkpoint (default 1)",
        )
    else:
        p.add_argument(
            "--model",
            help="model directory or hub id ORG/NAME[@REVISION] (default: the embedded SmolLM2-135M-Instruct demo)",
        )
    ref = p.add_mutually_exclusive_group()
    ref.add_argument(
        "--ref-model", help="reference model directory or hub id ORG/NAME[@REVISION] (DPO with a reference)"
    )
    ref.add_argument(
        "--ref-free",
        choices=["avg", "sum", "norm"],
        help="reference-free DPO reward: mean, sum or -L2 norm of the answer log-probs (default avg)",
    )
    p.add_argument(
        "--kind",
        choices=["auto", "classifier", "dpo", "generative"],
        default="auto",
        help="default: from config.json; generative: a judge model reached through --judge-endpoint or --judge-engine",
    )
    p.add_argument(
        "--data",
        help="RM-Bench data: total_dataset.json, <domain>_filtered.json, a directory, .jsonl, .parquet, or a hub "
        "dataset id such as THU-KEG/RM-Bench[@REVISION]",
    )
    p.add_argument("--limit", type=int, help="score only the first N records of each domain")
    p.add_argument(
        "--domains", nargs="+", metavar="DOMAIN", help=f"domains to score: {', '.join(DOMAINS)}, safety"
    )
    p.add_argument("--ids", nargs="+", metavar="ID", help="score only these record ids")
    p.add_argument(
        "--chat-template",
        metavar="NAME",
        help="named template for tokenizers without a chat template: tulu (official default), zephyr, llama-2, "
        "mistral, chatml, llama-3",
    )
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="auto: float32 on CPU, bfloat16 on GPU",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (default: cuda if available)")
    p.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "native", "hf"],
        help="native engine or Hugging Face transformers reference (auto: native where supported)",
    )
    p.add_argument("--batch-tokens", type=int, default=None, help="token budget per packed batch (native)")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per batch (hf backend)")
    p.add_argument(
        "--device-map",
        choices=["auto"],
        help="hf backend: spread the model's layers over the visible GPUs with accelerate (the slow path "
        "for architectures the native engine does not cover)",
    )
    out = "rmbench_sweep" if sweep else DEFAULT_OUT
    p.add_argument("--out", default=out, help=f"output directory (default ./{out})")
    p.add_argument(
        "--fp32-scores",
        action="store_true",
        help="classifier: keep fp32 scores instead of rounding to the model dtype (not official)",
    )
    p.add_argument(
        "--trust-remote-code", action="store_true", help="allow executing code from the model directory"
    )
    p.add_argument("--allow-pickle", action="store_true", help="allow loading pickle (.bin/.pt) weights")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    eng = p.add_argument_group("native engine")
    eng.add_argument(
        "--attn",
        default="auto",
        choices=["auto", "cpu", "flash", "flex", "sdpa", "dense"],
        help="attention backend (auto: flash on CUDA, flex for Gemma-2's soft-cap; on the CPU, cpu = the "
        "C++ kernel in fp32 with AVX-512/AVX2 and head size 64/128, else sdpa = torch's kernels)",
    )
    eng.add_argument(
        "--lm-head",
        default="auto",
        choices=["auto", "torch", "fused"],
        help="DPO log-probs: torch (logits in the model dtype, official) or fused (kernel B, fp32 logits); auto = torch",
    )
    eng.add_argument(
        "--ref-mode",
        default="auto",
        choices=["auto", "together", "reference-first"],
        help="with --ref-model: both models on each batch (fused ratio) or the reference's pass first "
        "(one model in memory); auto: together when both fit on the GPU, and never in a sweep",
    )
    eng.add_argument(
        "--cpu-gemm",
        default="auto",
        choices=["auto", "onednn", "torch"],
        help="CPU linears: oneDNN with weights packed once at load (float32/bfloat16), or torch's "
        "F.linear; auto = torch (faster or equal at the measured shapes, bench/results/gemm-cpu.json)",
    )
    eng.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads (default: the machine's physical cores); the CPU scores' last bits follow it",
    )
    store = p.add_argument_group("results store (resume, reuse across runs)")
    store.add_argument(
        "--cache-dir",
        metavar="PATH",
        help="the results store: a directory or a .sqlite file (default ~/.cache/rmbench_fast/results.sqlite)",
    )
    store.add_argument("--no-cache", action="store_true", help="do not read or write the results store")
    p.add_argument(
        "--reward",
        metavar="causal-logit:ID",
        help="score a causal LM by one logit: token ID's logit after the prompt and response (the chat template "
        "with its generation prompt), as Llama-3.1-Nemotron-70B-Reward-HF defines its reward",
    )
    p.add_argument(
        "--max-length",
        type=int,
        default=2048,
        metavar="N",
        help="truncate sequences to N tokens (official: 2048; another value is marked official: false)",
    )
    p.add_argument(
        "--max-prompt-length",
        type=int,
        default=128,
        metavar="N",
        help="DPO: prompts cut to their last N tokens when a pair is too long (official: 128)",
    )
    p.add_argument(
        "--tp",
        type=int,
        default=1,
        metavar="K",
        help="tensor-parallel size under torchrun (torchrun --nproc-per-node N: N/K data-parallel replicas)",
    )
    p.add_argument(
        "--allow-nonfinite",
        action="store_true",
        help="exit 0 even when a score is NaN or inf (it loses every comparison); default: exit 3",
    )
    add_stats_options(p, allow_zero=True)
    if not sweep:
        add_judge_options(p)


def add_stats_options(p: argparse.ArgumentParser, *, allow_zero: bool) -> None:
    """--resamples and --seed (the bootstrap intervals); `allow_zero`: 0 resamples leaves them out."""
    off = "; 0 leaves the intervals out" if allow_zero else ""
    p.add_argument(
        "--resamples",
        type=int,
        default=10000,
        metavar="R",
        help=f"bootstrap resamples for the 95%% intervals (default 10000{off})",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the resampling (default 0)")


def check_stats_options(args: argparse.Namespace, *, allow_zero: bool) -> None:
    """Refuse a bad --resamples or --seed (one line, exit 2)."""
    least = 0 if allow_zero else 1
    if args.resamples < least:
        raise UsageError(f"--resamples must be >= {least}, got {args.resamples}")
    if args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")


def add_judge_options(parser: argparse.ArgumentParser) -> None:
    """The generative judges' options (`run --kind generative`), on every parser that takes the run
    options but `sweep`'s."""
    g = parser.add_argument_group("generative judges (--kind generative)")
    g.add_argument(
        "--judge-endpoint",
        metavar="URL",
        help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1 (vllm serve, SGLang, llama.cpp, a hosted API)",
    )
    g.add_argument("--judge-model", metavar="NAME", help="the model name the server serves")
    g.add_argument(
        "--judge-engine",
        choices=ENGINES,
        help="run the judge in this process instead (vllm.LLM on --model DIR, prefix caching on)",
    )
    g.add_argument(
        "--api-key-env",
        metavar="VAR",
        help="environment variable holding the API key (sent as a Bearer token; never written anywhere)",
    )
    g.add_argument(
        "--judge-template",
        metavar="FILE",
        help="a str.format prompt with {question}, {answer_1}, {answer_2} (default: the RM-Bench README's)",
    )
    g.add_argument(
        "--concurrency",
        type=int,
        default=None,
        metavar="N",
        help="requests in flight (server, default 32); requests per generate call (vllm, default 256)",
    )
    g.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        metavar="N",
        help=f"default {JUDGE_MAX_NEW_TOKENS} (RM-Bench's pairwise verdicts), {RATINGS_MAX_NEW_TOKENS} with "
        "--benchmark rewardbench2 (the official ratings mode's limit)",
    )
    g.add_argument(
        "--judge-temperature", type=float, default=0.0, metavar="T", help="default 0 (greedy decoding)"
    )
    g.add_argument("--judge-top-p", type=float, default=1.0, metavar="P", help="default 1")
    g.add_argument(
        "--judge-seed", type=int, default=None, metavar="S", help="sampling seed sent to the judge"
    )
    g.add_argument(
        "--request-timeout",
        type=float,
        default=600.0,
        metavar="S",
        help="seconds without an answer before a request is retried (default 600)",
    )
    g.add_argument(
        "--judge-retries",
        type=int,
        default=5,
        metavar="N",
        help="retries on 429 / 5xx / timeouts (default 5)",
    )
    g.add_argument(
        "--retry-backoff",
        type=float,
        default=1.0,
        metavar="S",
        help="first retry delay in seconds, doubled each retry (default 1)",
    )
    g.add_argument(
        "--max-model-len", type=int, default=None, metavar="N", help="vllm engine: context length override"
    )
    g.add_argument(
        "--judge-vllm-args",
        metavar="JSON",
        help="vllm engine: extra vllm.LLM keywords as a JSON object, e.g. '{\"kv_cache_memory_bytes\": 4000000000}'",
    )


def run_config(args: argparse.Namespace) -> RunConfig:
    """The parsed run options as the pipeline's RunConfig (the one mapping of the run options)."""
    check_limit(args.limit)
    return RunConfig(
        model=getattr(args, "model", None),
        ref_model=args.ref_model,
        ref_free=args.ref_free,
        kind=args.kind,
        data=args.data,
        limit=args.limit,
        domains=args.domains,
        ids=args.ids,
        chat_template=args.chat_template,
        dtype=args.dtype,
        device=args.device,
        backend=args.backend,
        batch_tokens=args.batch_tokens,
        batch_size=args.batch_size,
        out=args.out,
        fp32_scores=args.fp32_scores,
        trust_remote_code=args.trust_remote_code,
        allow_pickle=args.allow_pickle,
        progress=not args.no_progress,
        resamples=args.resamples,
        seed=args.seed,
        attn=args.attn,
        lm_head=args.lm_head,
        ref_mode=args.ref_mode,
        cache_dir=args.cache_dir,
        no_cache=args.no_cache,
        allow_nonfinite=args.allow_nonfinite,
        device_map=args.device_map,
        tp=getattr(args, "tp", 1),
        cpu_gemm=args.cpu_gemm,
        threads=args.threads,
        max_length=args.max_length,
        max_prompt_length=args.max_prompt_length,
        reward=args.reward,
    )


def _reject(args: argparse.Namespace, name: str, option: str, default: Any = None) -> None:
    if getattr(args, name, default) not in (default, None, False):
        raise UsageError(f"{option} does not apply to --kind generative")


def judge_config(args: argparse.Namespace) -> JudgeConfig:
    """The run's JudgeConfig from parsed options, with contradictions rejected (one line)."""
    from rmbench_fast.judge.runner import (
        JudgeConfig,  # start-up cost: the judge runner and its report imports
    )

    for name, option in (
        ("ref_model", "--ref-model"),
        ("ref_free", "--ref-free"),
        ("chat_template", "--chat-template"),
        ("fp32_scores", "--fp32-scores"),
        ("batch_tokens", "--batch-tokens"),
    ):
        _reject(args, name, option)
    check_limit(getattr(args, "limit", None))
    if getattr(args, "backend", "auto") not in ("auto", None):
        raise UsageError("--backend does not apply to --kind generative")
    engine = "vllm" if getattr(args, "judge_engine", None) == "vllm" else "server"
    endpoint, judge_model = getattr(args, "judge_endpoint", None), getattr(args, "judge_model", None)
    if engine == "vllm":
        if endpoint:
            raise UsageError("give --judge-endpoint or --judge-engine vllm, not both")
    else:
        if not endpoint or not judge_model:
            raise UsageError(
                "--kind generative needs --judge-endpoint URL --judge-model NAME (an OpenAI-compatible server), "
                "or --judge-engine vllm [--model DIR]"
            )
        if getattr(args, "model", None):
            raise UsageError(
                "--model names the model directory for --judge-engine vllm; with a server use --judge-model"
            )
    key_env = getattr(args, "api_key_env", None)
    if key_env and not os.environ.get(key_env):
        raise UsageError(f"--api-key-env {key_env}: that environment variable is not set (or empty)")
    checks = (
        ("max_new_tokens", "--max-new-tokens", 1),
        ("concurrency", "--concurrency", 1),
        ("judge_retries", "--judge-retries", 0),
        ("max_model_len", "--max-model-len", 1),
    )
    for name, option, least in checks:
        value = getattr(args, name, None)
        if value is not None and value < least:
            raise UsageError(f"{option} must be >= {least}, got {value}")
    timeout = getattr(args, "request_timeout", 600.0)
    if timeout <= 0:
        raise UsageError(f"--request-timeout must be > 0, got {timeout}")
    if getattr(args, "retry_backoff", 1.0) < 0:
        raise UsageError("--retry-backoff must be >= 0")
    if getattr(args, "judge_temperature", 0.0) < 0:
        raise UsageError("--judge-temperature must be >= 0")
    engine_args = _json_object(getattr(args, "judge_vllm_args", None), "--judge-vllm-args")
    if engine_args and engine != "vllm":
        raise UsageError("--judge-vllm-args applies to --judge-engine vllm only")
    resamples, seed = getattr(args, "resamples", 10000), getattr(args, "seed", 0)
    if resamples < 0 or seed < 0:
        raise UsageError("--resamples and --seed must be >= 0")
    return JudgeConfig(
        data=getattr(args, "data", None),
        limit=getattr(args, "limit", None),
        domains=getattr(args, "domains", None),
        ids=getattr(args, "ids", None),
        out=getattr(args, "out", None) or DEFAULT_OUT,
        progress=not getattr(args, "no_progress", False),
        resamples=resamples,
        seed=seed,
        engine=engine,
        endpoint=endpoint,
        judge_model=judge_model,
        model=getattr(args, "model", None),
        dtype=getattr(args, "dtype", "auto") or "auto",
        api_key_env=key_env,
        template=getattr(args, "judge_template", None),
        concurrency=getattr(args, "concurrency", None),
        max_new_tokens=_max_new_tokens(args),
        temperature=getattr(args, "judge_temperature", 0.0),
        top_p=getattr(args, "judge_top_p", 1.0),
        judge_seed=getattr(args, "judge_seed", None),
        request_timeout=timeout,
        retries=getattr(args, "judge_retries", 5),
        retry_backoff=getattr(args, "retry_backoff", 1.0),
        max_model_len=getattr(args, "max_model_len", None),
        engine_args=engine_args,
        cache_dir=getattr(args, "cache_dir", None),
        no_cache=bool(getattr(args, "no_cache", False)),
    )


def _max_new_tokens(args: argparse.Namespace) -> int:
    """--max-new-tokens, else the benchmark's default: 4096 for RM-Bench's pairwise verdicts (a
    long explanation before the boxed verdict), 1024 for RewardBench 2's ratings (as the official
    ratings mode sends)."""
    given = getattr(args, "max_new_tokens", None)
    if given is not None:
        return int(given)
    if getattr(args, "benchmark", None) == REWARDBENCH2:
        return RATINGS_MAX_NEW_TOKENS
    return JUDGE_MAX_NEW_TOKENS


def _json_object(text: str | None, option: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise UsageError(f"{option}: not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise UsageError(f"{option}: expected a JSON object, got {type(obj).__name__}")
    return obj
