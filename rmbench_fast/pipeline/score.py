"""Step 4, the scores: the run's ScoreSettings, the scorer for --backend, the results store, and
a reference model's sums (together with the policy, or in their own pass shared by a sweep)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rmbench_fast.errors import ModelError, UsageError
from rmbench_fast.pipeline.data import load_data
from rmbench_fast.pipeline.memo import EvalCache
from rmbench_fast.pipeline.models import (
    ModelChoice,
    causal_logit_token,
    choose_models,
    data_shard,
    resolve_hub_models,
)
from rmbench_fast.pipeline.tokens import Tokenized, tokenize_run, tokenizer_fingerprint
from rmbench_fast.records import TokSeq
from rmbench_fast.settings import RunConfig, ScoreSettings


def score_settings(
    cfg: RunConfig, kind: str, ref_free: str | None, device: str, dtype: str, pad_id: int | None
) -> ScoreSettings:
    """The run's options, as the scorers take them (a causal-logit run scores like a classifier
    whose head is one row of the LM head)."""
    logit = causal_logit_token(cfg) if kind == "causal-logit" else None
    kind = "classifier" if kind == "causal-logit" else kind
    budget = {} if cfg.batch_tokens is None else {"batch_tokens": cfg.batch_tokens}
    return ScoreSettings(
        kind=kind,  # type: ignore[arg-type]
        ref_free_mode=ref_free or "avg",
        dtype=dtype,
        device=device,
        batch_size=cfg.batch_size,
        fp32_scores=cfg.fp32_scores,
        allow_pickle=cfg.allow_pickle,
        trust_remote_code=cfg.trust_remote_code,
        pad_token_id=pad_id,
        attn_impl=cfg.attn,
        lm_head=cfg.lm_head,
        device_map=cfg.device_map,
        causal_logit_token=logit,
        tp_size=cfg.tp,
        cpu_gemm=cfg.cpu_gemm,
        **budget,
    )


def _make_scorer(
    cfg: RunConfig,
    model: ModelChoice,
    settings: ScoreSettings,
    log: Callable[[str], None],
    *,
    with_ref: bool,
) -> tuple[str, Any]:
    """The scorer for --backend: native where it supports the model(s) (auto), else hf."""
    ref_dir = Path(cfg.ref_model) if (with_ref and cfg.ref_model) else None
    ref_info = model.ref_info if with_ref else None
    if cfg.device_map is not None and cfg.backend == "native":
        raise UsageError(
            "--device-map spreads a model with the hf backend; it does not apply to --backend native"
        )
    if cfg.backend in ("auto", "native") and cfg.device_map is None:
        # start-up cost: the engine
        from rmbench_fast.engine.scorer import NativeScorer, native_supports

        want_head = "classifier" if model.kind == "classifier" else "causal"
        reason = native_supports(model.info.config, want_head) or (
            native_supports(ref_info.config, "causal") if ref_info else None
        )
        if reason is None:
            scorer = NativeScorer(model.model_dir, settings, ref_model_dir=ref_dir, log=log)
            scorer.shard = data_shard()
            return "native", scorer
        if cfg.backend == "native":
            raise ModelError(
                f"the native engine does not support this model: {reason}", file=str(model.model_dir)
            )
        log(f"native engine: {reason}; falling back to the hf backend")
    head = model.info.native_head
    if head is not None and model.info.needs_remote_code and not cfg.trust_remote_code:
        raise ModelError(
            f"model directory {model.model_dir} needs remote code on the hf backend ({head.reason}); "
            "the native engine runs it without (--backend native), or pass --trust-remote-code",
            file=str(model.model_dir),
        )
    if data_shard() is not None:
        raise UsageError(
            "data parallelism under torchrun runs the native engine; the hf backend is one process"
        )
    from rmbench_fast.backends.hf import HFScorer  # start-up cost: torch (backends.hf)

    return "hf", HFScorer(model.model_dir, settings, ref_model_dir=ref_dir)


def _ref_sums_cacheable(cfg: RunConfig, model: ModelChoice) -> bool:
    """DPO with a reference model that the native engine runs for both models."""
    if not cfg.ref_model or model.ref_info is None or cfg.backend == "hf" or cfg.device_map is not None:
        return False
    from rmbench_fast.engine.scorer import native_supports  # start-up cost: the engine

    return native_supports(model.info.config) is None and native_supports(model.ref_info.config) is None


@dataclass
class ReferenceSums:
    """A reference model's per-sequence Σ log π_ref, the batches they came from, its stats."""

    sums: np.ndarray  # [n_records, 6] float64
    schedule: Any  # engine.scheduler.Schedule
    stats: dict[str, Any]


def _native_sums(
    cfg: RunConfig,
    model_dir: Path,
    seqs: list[list[TokSeq]],
    settings: ScoreSettings,
    log: Callable[[str], None],
    progress: Callable[[int], None] | None = None,
    replay: Any = None,
    store: Store | None = None,
) -> ReferenceSums:
    """Per-sequence Σ log π over the answer tokens with the native engine; the model is freed
    on return. `replay`: score exactly these batches (another pass's schedule); `store`: the
    results store (stored batches are not recomputed)."""
    from rmbench_fast.engine.scorer import NativeScorer  # start-up cost: the engine
    from rmbench_fast.scoring.rewards import SUM  # start-up cost: torch

    log(f"reference model {model_dir}: Σ log π_ref over {len(seqs)} records")
    scorer = NativeScorer(model_dir, settings.with_kind_dpo_sum(), log=log)
    scorer.shard = data_shard()
    batch_cache = store.batch_cache(scorer, [model_dir], seqs) if store is not None else None
    stats = scorer.score_stats(seqs, progress=progress, replay=replay, cache=batch_cache)
    scorer.stats["store"] = batch_cache.summary() if batch_cache is not None else None
    return ReferenceSums(np.ascontiguousarray(stats[..., SUM]), scorer.schedule, scorer.stats)


@dataclass
class Store:
    """The run's results store and the fingerprints its scopes need (see rmbench_fast.store.resume)."""

    store: Any  # rmbench_fast.store.db.ResultStore
    tokenizer: str
    kind: str

    def batch_cache(self, scorer: Any, model_dirs: list[Path], seqs: list[list[TokSeq]]) -> Any:
        # start-up cost: sqlite and the store
        from rmbench_fast.store.resume import StoreBatchCache, scope_parts

        vs = scorer.value_settings()
        scopes = []
        for d in model_dirs:
            parts = scope_parts(self.store, d, tokenizer=self.tokenizer, kind=self.kind, **vs)
            scopes.append(self.store.scope(parts, label=str(d)))
        return StoreBatchCache(self.store, scopes, seqs, vs["share_prefix"])


def open_run_store(cfg: RunConfig, model: ModelChoice, toks: Tokenized) -> Store | None:
    """The results store for a native run, or None (--no-cache, or the hf backend)."""
    if cfg.no_cache or cfg.backend == "hf" or cfg.device_map is not None:
        return None
    from rmbench_fast.store.db import open_store  # start-up cost: sqlite and the store

    tok = f"{tokenizer_fingerprint(model.model_dir)}:{cfg.chat_template}:{toks.add_eos}:{toks.pad_id}"
    kind = cfg.reward if model.kind == "causal-logit" else model.kind  # the token id is part of it
    return Store(open_store(cfg.cache_dir), tok, str(kind))


def _both_fit(model: ModelChoice, cfg: RunConfig) -> bool:
    """Whether the policy and the reference fit on the device together (CUDA: their weight
    bytes and a 25% margin against the free memory)."""
    if not model.device.startswith("cuda"):
        return False

    from rmbench_fast.engine.config import EngineConfig  # start-up cost: the engine
    from rmbench_fast.engine.loader import model_class  # start-up cost: the engine

    def n_params(d: Path) -> int:
        cfg = EngineConfig.from_model_dir(d, head_hint="causal")
        with torch.device("meta"):  # shapes only, no memory
            return sum(p.numel() for p in model_class(cfg)(cfg).parameters())

    free, _ = torch.cuda.mem_get_info(torch.device(model.device))
    bytes_per = 4 if model.dtype == "float32" else 2
    need = sum(n_params(d) * bytes_per for d in (model.model_dir, Path(cfg.ref_model or "")))
    return need * 1.25 < free


def reference_mode(cfg: RunConfig, model: ModelChoice, sweep: bool) -> str:
    """ "together" (both models on each batch, kernel A's fused ratio) or "reference-first" (the
    reference's sums in their own pass, one model in memory at a time, shared by a sweep).

    auto: together when both models fit on a CUDA device and this is not a sweep; otherwise
    reference-first. Both give bit-identical scores.
    """
    if cfg.ref_mode not in ("auto", "together", "reference-first"):
        raise UsageError(f"unknown --ref-mode {cfg.ref_mode!r}; use auto, together or reference-first")
    if cfg.ref_mode != "auto":
        return cfg.ref_mode
    return "together" if (not sweep and _both_fit(model, cfg)) else "reference-first"


@dataclass
class Scored:
    backend: str
    scorer: Any
    scores: np.ndarray  # [n_records, 6] float64
    reference: ReferenceSums | None
    reference_mode: str | None  # together | reference-first | None (no reference on the native engine)
    seconds: float
    reference_note: str | None = None
    budget: dict[str, int] | None = None  # --batch-tokens raised to the longest record


def score_run(
    cfg: RunConfig,
    model: ModelChoice,
    toks: Tokenized,
    cache: EvalCache,
    log: Callable[[str], None],
    progress: Callable[[int], None] | None,
    set_total: Callable[[int], None] | None,
    *,
    sweep: bool = False,
) -> Scored:
    """Step 4: the scores [n_records, 6].

    With a reference model on the native engine, `reference_mode` decides: "together" runs both
    models on each batch; "reference-first" computes Σ log π_ref in its own pass (once per sweep,
    and kept in the results store across runs), then the policy alone (reward "sum") replaying
    the reference's batches, one model in memory at a time. Both are bit-identical.
    """
    t0 = time.perf_counter()
    n = len(toks.seqs)
    settings = score_settings(cfg, model.kind, model.ref_free, model.device, model.dtype, toks.pad_id)
    settings, budget = raise_budget(cfg, settings, toks.seqs, log)
    store = open_run_store(cfg, model, toks)
    mode = reference_mode(cfg, model, sweep) if _ref_sums_cacheable(cfg, model) else None
    if mode != "reference-first":
        backend, scorer = _make_scorer(cfg, model, settings, log, with_ref=True)
        if set_total is not None:
            set_total(n)
        dirs = [model.model_dir] + ([Path(cfg.ref_model)] if mode == "together" else [])  # type: ignore[arg-type]
        if backend == "native":
            batch_cache = store.batch_cache(scorer, dirs, toks.seqs) if store else None
            scores = scorer.score(toks.seqs, progress=progress, cache=batch_cache)
            scorer.stats["store"] = batch_cache.summary() if batch_cache is not None else None
        else:  # the transformers backend batches its own way: no store
            scores = scorer.score(toks.seqs, progress=progress)
        scores = np.asarray(scores, dtype=np.float64)
        return Scored(backend, scorer, scores, None, mode, time.perf_counter() - t0, budget=budget)
    ref_dir = Path(cfg.ref_model)  # type: ignore[arg-type]
    ref_key = reference_key(cfg, model, toks)
    fresh = ref_key not in cache
    if set_total is not None:
        set_total(n * (2 if fresh else 1))  # the bar covers both passes
    ref = cache.get(
        ref_key, lambda: _native_sums(cfg, ref_dir, toks.seqs, settings, log, progress, store=store)
    )
    note = "computed in this run" if fresh else "reused from an earlier run of this sweep"
    backend, scorer = _make_scorer(cfg, model, settings.with_kind_dpo_sum(), log, with_ref=False)
    batch_cache = store.batch_cache(scorer, [model.model_dir], toks.seqs) if store else None
    sums = np.asarray(
        scorer.score(toks.seqs, progress=progress, replay=ref.schedule, cache=batch_cache), dtype=np.float64
    )
    scorer.stats["store"] = batch_cache.summary() if batch_cache is not None else None
    if not scorer.schedule.same_as(ref.schedule):
        # The policy ran out of memory and re-planned: pair it with reference sums over its own
        # batches, never with sums from another batching.
        log("native: the policy's batching differs from the reference's; recomputing the reference sums")
        ref = _native_sums(cfg, ref_dir, toks.seqs, settings, log, None, replay=scorer.schedule, store=store)
        cache.put(ref_key, ref)
        note = "recomputed on the policy's batches (out-of-memory back-off)"
    seconds = time.perf_counter() - t0
    return Scored(backend, scorer, sums - ref.sums, ref, "reference-first", seconds, note, budget)


def raise_budget(
    cfg: RunConfig, settings: ScoreSettings, seqs: list[list[TokSeq]], log: Callable[[str], None]
) -> tuple[ScoreSettings, dict[str, int] | None]:
    """A `--batch-tokens` below the longest record's packed length (plan.segment_lengths, the
    smallest budget the planner accepts) is raised to it, said once here rather than once per
    pass by each scheduler (which would raise it to the same value), and returned for meta."""
    if cfg.batch_tokens is None or cfg.backend == "hf" or cfg.device_map is not None or not seqs:
        return settings, None
    from rmbench_fast.scoring.plan import segment_lengths  # start-up cost: numpy

    longest = int(segment_lengths(seqs, share_prefix=settings.share_prefix).max())
    if longest <= settings.batch_tokens:
        return settings, None
    log(
        f"note: --batch-tokens {cfg.batch_tokens} is smaller than the longest record ({longest} packed tokens); "
        f"raised to {longest} (metrics.json meta.batch_tokens_raised)"
    )
    return replace(settings, batch_tokens=longest), {"asked": cfg.batch_tokens, "used": longest}


def reference_key(cfg: RunConfig, model: ModelChoice, toks: Tokenized) -> tuple[Any, ...]:
    """The EvalCache key of a reference model's sums: the reference, the tokens, device, dtype, budget."""
    ref = str(Path(cfg.ref_model).resolve())  # type: ignore[arg-type]
    return ("ref_sums", ref, toks.key, model.device, model.dtype, cfg.batch_tokens)


def prepare_reference(cfg: RunConfig, log: Callable[[str], None] = print) -> dict[tuple[Any, ...], Any]:
    """The reference pass of a sweep on its own (a Ray sweep runs it as one task): steps 1-3 for
    `cfg`'s model, then Σ log π_ref. Returns EvalCache entries to seed every checkpoint's run
    with, so they share one set of reference sums (and batches), exactly as a local sweep does.
    Empty when `cfg` has no reference model the native engine runs."""
    cache = EvalCache()
    cfg, _sources = resolve_hub_models(cfg, log)
    data = load_data(cfg, cache)
    model = choose_models(cfg, log)
    if not _ref_sums_cacheable(cfg, model) or reference_mode(cfg, model, sweep=True) != "reference-first":
        return {}
    toks = tokenize_run(cfg, data, model, cache, log)
    settings = score_settings(cfg, model.kind, model.ref_free, model.device, model.dtype, toks.pad_id)
    store = open_run_store(cfg, model, toks)
    key = reference_key(cfg, model, toks)
    return {key: _native_sums(cfg, Path(cfg.ref_model), toks.seqs, settings, log, store=store)}  # type: ignore[arg-type]
