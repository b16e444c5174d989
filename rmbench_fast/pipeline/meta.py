"""Step 5, the run's record: metrics.json's `meta` (what ran, on what, how long, the hub sources),
the rows made JSON-safe, and the non-finite scores found and refused."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from rmbench_fast.errors import NonFiniteScoreError, nonfinite_message
from rmbench_fast.inputs import hub
from rmbench_fast.pipeline.data import LoadedData
from rmbench_fast.pipeline.models import ModelChoice
from rmbench_fast.pipeline.score import Scored
from rmbench_fast.pipeline.tokens import Tokenized
from rmbench_fast.records import N_STYLES, Record
from rmbench_fast.settings import RunConfig
from rmbench_fast.utils.versions import versions


def record_sources(meta: dict[str, Any], asked: RunConfig, sources: dict[str, hub.HubSnapshot]) -> None:
    """metrics.json: each hub input's id, revision asked, commit sha (`<name>_source`, and
    `model_ref` = ORG/NAME@sha); `settings` keeps the arguments as given."""
    for name in ("model", "ref_model"):
        snap = sources.get(name)
        meta[f"{name}_source"] = snap.meta() if snap is not None else None
        meta["settings"][name] = getattr(asked, name)
    meta["model_ref"] = sources["model"].ref if "model" in sources else None


def json_safe_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Non-finite scores as None (JSON null: NaN is not JSON)."""
    for row in rows:
        for key in ("score_chosen", "score_rejected"):
            row[key] = [x if math.isfinite(x) else None for x in row[key]]
    return rows


def nonfinite_scores(records: Sequence[Record], scores: np.ndarray) -> list[dict[str, Any]]:
    """The (record, slot) pairs whose score is NaN or inf."""
    bad = np.argwhere(~np.isfinite(scores))
    return [
        {"record": records[r].index, "id": records[r].id, "domain": records[r].domain, "slot": int(j)}
        for r, j in bad
    ]


def run_meta(
    cfg: RunConfig, data: LoadedData, model: ModelChoice, toks: Tokenized, scored: Scored, total_s: float
) -> dict[str, Any]:
    """Step 5: metrics.json's `meta` (what ran, on what, how long)."""
    seqs, scores, kind = toks.seqs, scored.scores, model.kind
    ties = int(sum(int(np.sum(s[:N_STYLES, None] == s[None, N_STYLES:])) for s in scores))
    tok, add_eos = toks.tok, toks.add_eos
    meta: dict[str, Any] = {
        "model": str(model.model_dir),
        "ref_model": cfg.ref_model,
        "demo_model": model.demo,
        "kind": kind,
        "native_head": model.info.native_head.name if model.info.native_head is not None else None,
        "reward": "ref"
        if cfg.ref_model
        else (
            model.ref_free
            if kind == "dpo"
            else (cfg.reward if kind == "causal-logit" else "classifier-logit")
        ),
        "backend": scored.backend,
        "device": model.device,
        "dtype": model.dtype,
        "data": {
            "path": str(data.path),
            "origin": data.origin,
            "files": [str(f) for f in data.files],
            "sha256": data.sha256,
            "n_records": len(data.records),
            "source": data.source.meta() if data.source is not None else None,
        },
        "settings": {
            **{k: v for k, v in asdict(cfg).items() if k not in ("progress",)},
            # The official scripts' truncation: 2048 tokens, DPO prompts cut to their last 128.
            "official": cfg.max_length == 2048 and cfg.max_prompt_length == 128,
        },
        "chat_template": "model" if toks.formatter.uses_chat_template else toks.formatter.template_name,
        "classifier_add_eos": tok.eos_switch("current").describe() if add_eos else None,
        "classifier_add_eos_4_43_4": tok.eos_switch("4.43.4").describe() if add_eos else None,
        "pooling_4_43_4_differs": toks.legacy,
        "tokens": {
            "total": sum(len(s.ids) for group in seqs for s in group),
            "scored": sum(s.n_labels for group in seqs for s in group),
        },
        "tied_comparisons": ties,
        "scorer_stats": getattr(scored.scorer, "stats", None),
        "versions": versions(("torch", "transformers", "tokenizers", "triton", "numpy", "safetensors")),
        "seconds": {"total": total_s, "scoring": scored.seconds},
    }
    meta["reference_mode"] = scored.reference_mode
    meta["batch_tokens_raised"] = scored.budget
    if scored.reference_note is not None:
        meta["reference_sums"] = scored.reference_note
        meta["reference_scorer_stats"] = scored.reference.stats if scored.reference else None
    bad = nonfinite_scores(data.records, scores)
    meta["nonfinite"] = {"count": len(bad), "scores": bad[:100], "allowed": cfg.allow_nonfinite}
    meta.update(getattr(scored.scorer, "meta", None) or {})
    return meta


def check_finite(result: dict[str, Any]) -> None:
    """Stop with exit code 3 when a score is NaN or inf (unless --allow-nonfinite)."""
    nonfinite = result["meta"].get("nonfinite") or {}
    if nonfinite.get("count") and not nonfinite.get("allowed"):
        err = NonFiniteScoreError(nonfinite_message(nonfinite))
        err.result = result  # type: ignore[attr-defined]
        raise err
