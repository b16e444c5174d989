"""Command-line face of the generative judges.

`add_judge_args(parser)` adds the judge options to a ``run`` parser; `run_judge(args, console)`
does a whole ``run --kind generative`` with the parsed options (the run options it reads:
--model, --data, --limit, --domains, --ids, --out, --dtype, --no-progress, --resamples,
--seed). Errors are `RMBenchError`s: the caller prints one line and exits 2.

`python -m rmbench_fast.judge` is the same run as a stand-alone command (the project's run
options plus the judge options), usable before ``--kind generative`` is wired into the main CLI,
and from an environment that has vLLM but not the built package (the judge needs no C++ core).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from ..errors import RMBenchError, UsageError
from .runner import JudgeConfig, run_generative

ENGINES = ("vllm",)


def add_judge_args(parser: argparse.ArgumentParser) -> None:
    """The judge options (idempotent: a parser that already has them is left as it is)."""
    if "--judge-endpoint" in parser._option_string_actions:  # noqa: SLF001
        return
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
    g.add_argument("--max-new-tokens", type=int, default=4096, metavar="N", help="default 4096")
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


def _reject(args: argparse.Namespace, name: str, option: str, default: Any = None) -> None:
    if getattr(args, name, default) not in (default, None, False):
        raise UsageError(f"{option} does not apply to --kind generative")


def judge_config(args: argparse.Namespace) -> JudgeConfig:
    """The run's JudgeConfig from parsed options, with contradictions rejected (one line)."""
    for name, option in (
        ("ref_model", "--ref-model"),
        ("ref_free", "--ref-free"),
        ("chat_template", "--chat-template"),
        ("fp32_scores", "--fp32-scores"),
        ("batch_tokens", "--batch-tokens"),
    ):
        _reject(args, name, option)
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
        out=getattr(args, "out", None) or "rmbench_out",
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
        max_new_tokens=getattr(args, "max_new_tokens", 4096),
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


def run_judge(args: argparse.Namespace, console: Any) -> int:
    """`run --kind generative`: the whole run (outputs written, tables printed); returns 0.
    Raises RMBenchError (one line, exit 2) for bad options, data, endpoints or models."""
    run_generative(judge_config(args), console)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """`python -m rmbench_fast.judge`: the main CLI's run options plus the judge options."""
    from ..cli import _add_run_args

    p = argparse.ArgumentParser(
        prog="python -m rmbench_fast.judge",
        description="RM-Bench with a generative pairwise judge (run --kind generative).",
    )
    _add_run_args(p)
    add_judge_args(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point; exit 2 with one line on bad input, 130 on Ctrl-C."""
    from rich.console import Console

    args = build_parser().parse_args(argv)
    try:
        return run_judge(args, Console(stderr=False))
    except RMBenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
