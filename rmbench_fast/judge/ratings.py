"""RewardBench 2 with a generative judge: one rating request per completion -> metrics.

`run_ratings(cfg, console, subsets=...)` does a whole `run --benchmark rewardbench2 --kind
generative` in the official ratings mode (`benchmarks.rewardbench2.ratings` states the rule):

1. load and validate the prompts (`benchmarks.rewardbench2.data`);
2. one request per completion, a prompt's requests together (the rating template's head and the
   prompt are a shared prefix, so a server's prefix cache reuses them);
3. answers from ``OUT/judge_log.jsonl`` or the results store where they exist, the others sent
   (`runner.judge_requests`: the same resume, store, retries and progress as RM-Bench's judge);
4. ratings parsed, best-of-N credit (`ratings_credit`) and the Ties composite on the ratings,
   intervals as for a scalar model; ``scores.json``, ``judgments.jsonl`` and ``metrics.json``.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from rmbench_fast.benchmarks import REWARDBENCH2
from rmbench_fast.benchmarks.rewardbench2.data import Prompt, load_prompts, select
from rmbench_fast.benchmarks.rewardbench2.metrics import compute_metrics
from rmbench_fast.benchmarks.rewardbench2.ratings import (
    ALL_INVALID_CREDIT,
    INVALID,
    RATINGS_PROMPT,
    RATINGS_PROMPT_TIES,
    RATINGS_SOURCE,
    parse_rating,
    rating_prompt,
    ratings_credit,
)
from rmbench_fast.benchmarks.rewardbench2.report import print_report, score_rows
from rmbench_fast.errors import UsageError
from rmbench_fast.inputs.datafiles import data_files, hash_files
from rmbench_fast.judge.requests import JudgeRequest, JudgeResponse, request_key
from rmbench_fast.judge.runner import JudgeConfig, answer_all, make_judge, usage_meta
from rmbench_fast.results.report import METRICS_FILE, SCORES_FILE, check_out_dir
from rmbench_fast.utils.atomic import write_json_atomic, write_jsonl_atomic

JUDGMENTS_FILE = "judgments.jsonl"
RATING = "rating"  # JudgeRequest.order of a rating request (i = the completion, j unused: -1)
SCORING = (
    f"generative ratings ({RATINGS_SOURCE}): each completion rated 1-10 alone (the last integer 1..10 of "
    "the answer, else -1); best-of-N subsets: credit (0 in W)/|W| over W = the completions at the max valid "
    f"rating, {ALL_INVALID_CREDIT} when none is valid; Ties: the ratings (-1 included) are the scores of "
    "the PR 236 composite; subset = mean credit, overall = mean of the subsets present"
)


def rating_requests(prompts: Sequence[Prompt], judge: str, sampling: dict[str, Any]) -> list[JudgeRequest]:
    """One request per completion, prompt after prompt, completions in order (chosen first)."""
    out: list[JudgeRequest] = []
    for n, p in enumerate(prompts):
        for c, completion in enumerate(p.completions):
            text = rating_prompt(p, completion)
            key = request_key(judge, [{"role": "user", "content": text}], sampling)
            out.append(JudgeRequest(len(out), n, p.id, p.subset, c, -1, RATING, text, key))
    return out


def ratings_matrix(prompts: Sequence[Prompt], ratings: Sequence[int]) -> np.ndarray:
    """[n_prompts, N_max] float64: prompt p's ratings in completion order, NaN past its N."""
    width = max(len(p.completions) for p in prompts)
    out = np.full((len(prompts), width), np.nan)
    k = 0
    for n, p in enumerate(prompts):
        m = len(p.completions)
        out[n, :m] = ratings[k : k + m]
        k += m
    return out


def rating_stats(
    prompts: Sequence[Prompt],
    requests: Sequence[JudgeRequest],
    ratings: Sequence[int],
    answers: Sequence[JudgeResponse],
) -> dict[str, Any]:
    """Parse failures (with the first few raw answers), the rating histogram, and how many
    prompts had no valid rating at all (they get the constant credit)."""
    failures = []
    for r, v, a in zip(requests, ratings, answers, strict=True):
        if v == INVALID and len(failures) < 5:
            item: dict[str, Any] = {"id": r.record_id, "subset": r.domain, "completion": r.i}
            item.update({"error": a.error} if a.error else {"text": a.text[:2000]})
            failures.append(item)
    failed = sum(1 for v in ratings if v == INVALID)
    hist = Counter(ratings)
    k, all_invalid = 0, 0
    for p in prompts:
        m = len(p.completions)
        all_invalid += all(v == INVALID for v in ratings[k : k + m])
        k += m
    return {
        "requests": len(requests),
        "parse_failures": failed,
        "parse_failure_rate": failed / len(requests) if requests else None,
        "prompts_without_a_valid_rating": all_invalid,
        "histogram": {str(v): hist.get(v, 0) for v in (INVALID, *range(1, 11))},
        "failures": failures,
    }


def _check(cfg: JudgeConfig) -> None:
    given = {"--domains (use --subsets)": cfg.domains, "--ids": cfg.ids, "--judge-template": cfg.template}
    bad = [k for k, v in given.items() if v]
    if bad:
        raise UsageError(
            f"--benchmark {REWARDBENCH2} --kind generative takes no {', '.join(bad)} "
            "(the official ratings prompts are fixed)"
        )
    if cfg.data is None:
        raise UsageError(
            f"--benchmark {REWARDBENCH2} needs --data: the allenai/reward-bench-2 export (.parquet, .json or .jsonl)"
        )


def run_ratings(
    cfg: JudgeConfig, console: Any, *, subsets: Sequence[str] | None = None, tables: bool = True
) -> dict[str, Any]:
    """A whole RewardBench 2 judge run; writes OUT/{scores.json, judgments.jsonl, metrics.json}
    and returns metrics.json's content."""
    t_start = time.perf_counter()
    _check(cfg)
    path = Path(str(cfg.data))
    files = data_files(path)
    prompts = select(load_prompts(path), subsets=subsets, limit=cfg.limit)
    if not prompts:
        raise UsageError(f"no prompts left to score in {path} after --subsets/--limit")
    out_dir = Path(cfg.out)
    check_out_dir(out_dir)  # before any request: an unwritable --out is said now, in one line
    judge = make_judge(cfg, console.print)
    identity = judge.identity
    if isinstance(getattr(judge, "model_dir", None), Path):
        cfg.model, cfg.dtype = str(judge.model_dir), judge.dtype  # type: ignore[attr-defined]
    sampling = cfg.sampling()
    requests = rating_requests(prompts, identity, sampling)
    answers, info = answer_all(cfg, judge, requests, out_dir, console)
    info["per_record"] = None  # a prompt has N requests, one per completion
    ratings = [INVALID if a.error else parse_rating(a.text) for a in answers]
    scores = ratings_matrix(prompts, ratings)
    result = compute_metrics(prompts, scores, resamples=cfg.resamples, seed=cfg.seed, credit=ratings_credit)
    credits = result.pop("credits")
    stats = rating_stats(prompts, requests, ratings, answers)
    sent_s = info["seconds"]
    result["meta"] = {
        "benchmark": REWARDBENCH2,
        "model": cfg.judge_model if cfg.engine == "server" else cfg.model,
        "kind": "generative",
        "judge": {"engine": cfg.engine, "identity": identity, **(info.pop("judge_meta") or {})},
        "scoring": SCORING,
        "template": {
            "name": "rewardbench2-ratings",
            "sha256": hashlib.sha256((RATINGS_PROMPT + RATINGS_PROMPT_TIES).encode()).hexdigest(),
            "source": RATINGS_SOURCE,
        },
        "sampling": {**sampling, "greedy": cfg.temperature == 0},
        "data": {
            "path": str(path),
            "files": [str(f) for f in files],
            "sha256": hash_files(files),
            "n_prompts": len(prompts),
            "n_completions": len(requests),
        },
        "settings": {k: v for k, v in asdict(cfg).items() if k != "progress"},
        "requests": info,
        "judgments": stats,
        "parse_failure_rate": stats["parse_failure_rate"],
        **usage_meta(answers, info),
        "seconds": {"total": time.perf_counter() - t_start, "judging": sent_s},
    }
    judgments = [
        {
            "index": r.index,
            "id": r.record_id,
            "subset": r.domain,
            "completion": r.i,
            "correct": r.i < prompts[r.record].num_correct,
            "rating": v,
            "text": a.text,
            "finish_reason": a.finish_reason,
            "prompt_tokens": a.prompt_tokens,
            "completion_tokens": a.completion_tokens,
            "retries": a.retries,
            "error": a.error,
        }
        for r, v, a in zip(requests, ratings, answers)
    ]
    write_json_atomic(out_dir / SCORES_FILE, score_rows(prompts, scores, credits))
    write_jsonl_atomic(out_dir / JUDGMENTS_FILE, judgments)
    write_json_atomic(out_dir / METRICS_FILE, result)
    if tables:
        print_report(result, console)
    console.print(
        f"{len(prompts)} prompts, {len(requests)} rating requests ({info['from_log']} from the log, "
        f"{info['from_store']} from the results store, {info['sent']} sent) in {sent_s:.1f} s; parse failures "
        f"{100 * (stats['parse_failure_rate'] or 0):.1f}%; wrote {out_dir / SCORES_FILE}, "
        f"{out_dir / JUDGMENTS_FILE} and {out_dir / METRICS_FILE}"
    )
    return result
