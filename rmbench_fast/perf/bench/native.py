"""The native path: rmbench_fast's engine (NativeScorer) on the prepared sequences, with its MFU."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from rmbench_fast.perf.bench.measure import cpu_s, peak_mem, sync
from rmbench_fast.perf.bench.prepared import Prepared
from rmbench_fast.perf.profiling import matmul_rate, model_shape


def run_native(prep: Prepared, warmup: int) -> dict[str, Any]:
    """The native engine on the prepared sequences (with a reference: both models per batch)."""
    from rmbench_fast.engine import NativeScorer  # start-up cost: the engine
    from rmbench_fast.pipeline.score import score_settings  # start-up cost: the pipeline (torch)

    m, cfg = prep.model, prep.cfg
    settings = score_settings(cfg, m.kind, m.ref_free, m.device, m.dtype, prep.pad_id)
    t0 = time.perf_counter()
    sc = NativeScorer(
        m.model_dir, settings, ref_model_dir=Path(cfg.ref_model) if cfg.ref_model else None, log=None
    )
    sync(m.device)
    load_s = time.perf_counter() - t0
    if warmup:
        sc.score(prep.seqs[:warmup])
    sync(m.device)
    t0, c0 = time.perf_counter(), cpu_s()
    scores = sc.score(prep.seqs)
    sync(m.device)
    wall, cpu = time.perf_counter() - t0, cpu_s() - c0
    st = sc.stats
    models = int(st.get("forwards_per_sequence", 1))
    peak, kind = peak_mem(m.device)
    res = {
        "scores": np.asarray(scores).tolist(),
        "load_s": load_s,
        "score_s": wall,
        "cpu_s": cpu,
        "useful_tokens": models * st["useful_tokens"],
        "processed_tokens": models * st["packed_tokens"],
        "padding_tokens": 0,
        "prefix_savings": models * st["prefix_savings"],
        "n_forwards": st["n_batches"] * models,
        "n_labels": st["n_labels"],
        "batch_tokens": sc.batch_tokens,
        "attention": st["attention"],
        "attention_calls": st.get("attention_calls"),
        "plan_s": st["plan_s"],
        "plan_share_of_score": st["plan_s"] / wall if wall else 0.0,
        "peak_mem_mib": peak,
        "peak_mem_kind": kind,
        "how": "rmbench_fast native engine: prefix-shared packed batches, log-probs at answer tokens only",
    }
    res["mfu"] = _native_mfu(prep, st, wall)
    return res


def _native_mfu(prep: Prepared, st: dict[str, Any], wall: float) -> dict[str, Any] | None:
    """Model FLOP/s of the native pass, against the best GEMM rate measured here (the fastest
    candidate on a large square product), and against torch's matmul at the model's shapes."""
    from rmbench_fast.engine.layers.cpu_gemm import peak_gemm_rate  # start-up cost: the engine
    from rmbench_fast.utils.dtypes import parse_dtype  # start-up cost: torch

    shape = model_shape(prep.model.model_dir)
    if shape is None or wall <= 0:
        return None
    flops = 2.0 * shape["non_embedding_params"] * st["packed_tokens"]
    if shape["head"] == "causal":
        flops += 2.0 * shape["hidden_size"] * shape["vocab_size"] * st["n_labels"]
    if prep.cfg.ref_model:
        ref = model_shape(Path(prep.cfg.ref_model))
        if ref is None:
            return None
        flops += 2.0 * ref["non_embedding_params"] * st["packed_tokens"]
        flops += 2.0 * ref["hidden_size"] * ref["vocab_size"] * st["n_labels"]
    batches = max(1, int(st["n_batches"]))
    rate = matmul_rate(
        shape,
        st["packed_tokens"] // batches,
        st["n_labels"] // batches,
        prep.model.device,
        parse_dtype(prep.model.dtype),
    )
    peak = peak_gemm_rate(prep.model.device, parse_dtype(prep.model.dtype))
    return {
        "model_flops_per_s": flops / wall,
        "peak": peak,
        "matmul_flops_per_s": rate["flops_per_s"],
        "mfu": flops / wall / peak["flops_per_s"],
        "mfu_vs_model_shapes": flops / wall / rate["flops_per_s"],
        "formula": "2*non_embedding_params*processed + 2*H*V*labels (DPO)",
    }
