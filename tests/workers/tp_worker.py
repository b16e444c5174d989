"""Tensor-parallel engine runs under torchrun, for tests/engine/test_tp.py.

From the repository root:
    torchrun --standalone --nproc-per-node 2 -m tests.workers.tp_worker SPEC.json OUT.json

SPEC.json: {"cases": [{"name", "model", "kind": "dpo"|"classifier", "mode", "ref": dir|null,
"lm_head", "vocab", "n_records", "seed", "batch_tokens", "dtype"?}, ...]} (dtype default float32). For each case every rank
loads its tensor-parallel shard (gloo, CPU, fp32 unless the case says) and scores the synthetic records over the
planner's batches, driving the engine below the scorer (load_model + PackedLayout + hidden_states
+ dpo_stats / classifier_stats, as NativeScorer._forward does); rank 0 also scores them with the
single-process engine. Rank 0 writes OUT.json: per case the single-process scores [n, 6], each
rank's TP scores, the bytes each rank read from the checkpoint and holds in parameters, and the
collective payloads it counted.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rmbench_fast.engine import loader
from rmbench_fast.engine.heads import classifier_stats, dpo_stats, logit_chunk_rows
from rmbench_fast.engine.layers.attention import PackedLayout
from rmbench_fast.engine.layers.parallel import CommCounter
from rmbench_fast.engine.loader import load_model
from rmbench_fast.scoring.plan import plan_batches, scatter_scores
from rmbench_fast.scoring.rewards import SUM, rewards_from_stats
from rmbench_fast.utils import distributed
from tests.helpers.tiny import synthetic_records

CPU = torch.device("cpu")


def score(model: Any, seqs: list[list[Any]], case: dict[str, Any], ref_model: Any = None) -> np.ndarray:
    """Rewards [n, 6] float64 over the planner's batches (NativeScorer._forward, with tp=)."""
    V = model.cfg.vocab_size if ref_model is None else min(model.cfg.vocab_size, ref_model.cfg.vocab_size)
    batches = plan_batches(seqs, batch_tokens=case["batch_tokens"], vocab_size=V)
    shard = model.vocab_shard()
    chunk = logit_chunk_rows(V, CPU, next(model.parameters()).dtype, tp=shard)
    per_batch = []
    for b in batches:
        layout = PackedLayout.from_batch(b, CPU)
        n_seq = len(b.seq_record)
        with torch.inference_mode():
            hidden = model.hidden_states(layout.input_ids, layout, "sdpa")  # [T, H]
            if case["kind"] == "classifier":
                stats = classifier_stats(model, hidden, layout.pool_pos, False)
                per_batch.append(stats[:, 0].numpy())
                continue
            ref = ref_tp = None
            if ref_model is not None:
                ref_hidden = ref_model.hidden_states(layout.input_ids, layout, "sdpa")
                ref = (ref_hidden, ref_model.head_weight(), ref_model.cfg.final_softcap)
                ref_tp = ref_model.vocab_shard()
            stats = dpo_stats(
                hidden,
                model.head_weight(),
                (layout.label_pos, layout.label_ids, layout.label_seq),
                n_seq,
                chunk,
                model.cfg.final_softcap,
                lm_head=case["lm_head"],
                ref=ref,
                tp=shard,
                ref_tp=ref_tp,
            )
        if ref_model is not None:
            r = rewards_from_stats(stats[:, :3], "ref", stats[:, 3 + SUM])
        else:
            r = rewards_from_stats(stats, case["mode"])
        per_batch.append(r.numpy())
    return scatter_scores(batches, per_batch, len(seqs))


def run_case(case: dict[str, Any], tp: Any) -> dict[str, Any]:
    seqs = synthetic_records(
        case["n_records"], vocab_size=case["vocab"], kind=case["kind"], seed=case["seed"]
    )
    out: dict[str, Any] = {}
    dtype = case.get("dtype", "float32")
    if distributed.is_main():
        single = load_model(case["model"], dtype=dtype)
        ref = load_model(case["ref"], dtype=dtype) if case["ref"] else None
        out["single"] = score(single, seqs, case, ref).tolist()
        del single, ref
    read = [0]
    real_read = loader._read

    def counting_read(tensor: Any, part: Any) -> torch.Tensor:
        t = real_read(tensor, part)
        read[0] += t.numel() * t.element_size()
        return t

    loader._read = counting_read  # type: ignore[assignment]
    try:
        model = load_model(case["model"], dtype=dtype, tp=tp)
        ref = load_model(case["ref"], dtype=dtype, tp=tp) if case["ref"] else None
    finally:
        loader._read = real_read  # type: ignore[assignment]
    tp.counter.clear()
    out["tp"] = score(model, seqs, case, ref).tolist()
    out["comm"] = dict(tp.counter.payload)
    out["read_bytes"] = read[0]
    out["param_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
    if ref is not None:
        out["param_bytes"] += sum(p.numel() * p.element_size() for p in ref.parameters())
    files = [Path(case["model"])] + ([Path(case["ref"])] if case["ref"] else [])
    out["ckpt_bytes"] = sum(f.stat().st_size for d in files for f in d.glob("*.safetensors"))
    return out


def main() -> int:
    spec = json.loads(Path(sys.argv[1]).read_text())
    torch.set_num_threads(1)
    world = distributed.init(tp_size=2, device="cpu", timeout_s=120)
    info = distributed.tp_info()
    assert info is not None and world.backend == "gloo"
    tp = replace(info, counter=CommCounter())
    results: dict[str, Any] = {}
    for case in spec["cases"]:
        mine = run_case(case, tp)
        parts: list[Any] = [None] * world.world_size
        torch.distributed.all_gather_object(parts, mine)
        if distributed.is_main():
            results[case["name"]] = {
                "single": parts[0]["single"],
                "tp": [p["tp"] for p in parts],
                "comm": [p["comm"] for p in parts],
                "read_bytes": [p["read_bytes"] for p in parts],
                "param_bytes": [p["param_bytes"] for p in parts],
                "ckpt_bytes": parts[0]["ckpt_bytes"],
            }
    if distributed.is_main():
        Path(sys.argv[2]).write_text(json.dumps(results))
    distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
