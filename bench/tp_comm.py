"""Bytes each tensor-parallel rank sends per token, counted in the engine's own collectives.

    python bench/tp_comm.py --out bench/results/tp-comm.json [--tp 2 4 8] [--dtype bfloat16]

Method (no GPU, no communication): for each K, every rank r's shard of Llama-3.1-70B (its
published config.json) is built on the meta device (shapes, no memory, no arithmetic) and runs
one real forward pass of the engine (`hidden_states` + `heads.dpo_stats`, the code a TP run
executes) over planner batches of synthetic RM-Bench-sized records, with a dry-run TPInfo
(group None) whose CommCounter records every all-reduce the code issues: tag, calls, payload.
The decoder is built with 1 and with 2 layers: per layer = count(2) − count(1), fixed (the
embedding) = count(1) − per layer, and 80 layers = fixed + 80 · per layer. The counts are then
checked against the layout's formula (embedding + 2 per layer of [T, H] in the model dtype; per
label row one fp32 MAX of [1] and one fp32 SUM of [2]) and every rank's counts are checked equal.

Wire bytes: a ring all-reduce of n bytes over K ranks sends 2(K−1)/K · n from each rank
(reduce-scatter + all-gather; NCCL's ring; NVLink SHARP on NVSwitch systems sends ~n instead).
Time per token = sent / link rate, at NVLink 900 GB/s (NVIDIA's figure, both directions; a ring
sends at up to 450 GB/s per direction, so double those times for the conservative bound) and
400 Gb/s InfiniBand (50 GB/s per direction). Compute per token per rank = 2 · (decoder
parameters) / K FLOPs at 60% of a 989 TFLOP/s bf16 H100/H200 (the engine's MFU goal);
efficiency = compute / (compute + communication), the engine not overlapping the two.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

# Llama-3.1-70B(-Instruct) config.json: the fields the engine reads.
LLAMA_31_70B: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "num_hidden_layers": 80,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    "max_position_embeddings": 131072,
    "vocab_size": 128256,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
}
NVLINK_BPS = 900e9
IB_BPS = 400e9 / 8
PEAK_FLOPS, MFU = 989e12, 0.60


def synthetic_seqs(n: int, vocab: int, seed: int = 0) -> list[list[Any]]:
    """n records of six DPO TokSeqs at RM-Bench-like lengths: a ~150-token prompt shared by the
    six, answers of 100..500 tokens (labels = the answer tokens)."""
    from rmbench_fast.records import TokSeq

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        prompt = [1] + rng.integers(3, vocab, size=int(rng.integers(100, 200))).tolist()
        group = []
        for _slot in range(6):
            answer = rng.integers(3, vocab, size=int(rng.integers(100, 500))).tolist() + [2]
            group.append(TokSeq(ids=prompt + answer, label_start=len(prompt)))
        out.append(group)
    return out


def count_forward(cfg_dict: dict[str, Any], k: int, rank: int, dtype: torch.dtype, batches: list[Any]) -> Any:
    """One forward + LM head of rank `rank`'s shard on meta tensors; the CommCounter it filled."""
    from rmbench_fast.engine.config import EngineConfig
    from rmbench_fast.engine.heads import dpo_stats
    from rmbench_fast.engine.layers.attention import PackedLayout
    from rmbench_fast.engine.layers.parallel import CommCounter
    from rmbench_fast.engine.layers.rope import rope_inv_freq
    from rmbench_fast.engine.loader import model_class
    from rmbench_fast.engine.models.tensor_parallel import parallelize
    from rmbench_fast.utils.distributed import TPInfo

    cfg = EngineConfig.from_dict(cfg_dict)
    counter = CommCounter()
    tp = TPInfo(size=k, rank=rank, group=None, counter=counter)
    meta = torch.device("meta")
    with meta:
        model = model_class(cfg)(cfg)
        parallelize(model, cfg, tp)
    model = model.to(dtype)
    model.inv_freq = rope_inv_freq(cfg.rope, cfg.head_dim).to(meta)
    shard = model.vocab_shard()
    for b in batches:
        layout = PackedLayout.from_batch(b, meta)
        hidden = model.hidden_states(layout.input_ids, layout, "dense")  # [T, H], meta
        labels = (layout.label_pos, layout.label_ids, layout.label_seq)
        with torch.inference_mode():
            dpo_stats(hidden, model.head_weight(), labels, len(b.seq_record), 1 << 30, None, tp=shard)
    return counter


def measure(k: int, dtype: torch.dtype, batches: list[Any]) -> dict[str, Any]:
    """Per-rank counts for K ranks, extrapolated to 80 layers (module docstring)."""
    from rmbench_fast.engine.layers.parallel import CommCounter

    T = sum(b.n_tokens for b in batches)
    n_labels = sum(len(b.label_ids) for b in batches)
    per_rank: list[dict[str, dict[str, int]]] = []
    for rank in range(k):
        counts: dict[int, CommCounter] = {}
        for n_layers in (1, 2):
            counts[n_layers] = count_forward(
                dict(LLAMA_31_70B, num_hidden_layers=n_layers), k, rank, dtype, batches
            )
        tags = sorted(set(counts[1].payload) | set(counts[2].payload))
        per_layer = {t: counts[2].payload.get(t, 0) - counts[1].payload.get(t, 0) for t in tags}
        fixed = {t: counts[1].payload.get(t, 0) - per_layer[t] for t in tags}
        calls_layer = {t: counts[2].calls.get(t, 0) - counts[1].calls.get(t, 0) for t in tags}
        per_rank.append({"per_layer": per_layer, "fixed": fixed, "calls_per_layer": calls_layer})
    assert all(p == per_rank[0] for p in per_rank), "ranks issue different collectives"
    p = per_rank[0]
    H, L = LLAMA_31_70B["hidden_size"], LLAMA_31_70B["num_hidden_layers"]
    e = torch.finfo(dtype).bits // 8
    # the layout's formula (engine/layers/parallel.py docstring): exact, or the count is wrong
    assert p["per_layer"] == {"attn_out": T * H * e, "mlp_out": T * H * e, "embed": 0, "logprob_max": 0,
                              "logprob_sum": 0}, p  # fmt: skip
    assert p["fixed"] == {"attn_out": 0, "mlp_out": 0, "embed": T * H * e, "logprob_max": 4 * n_labels,
                          "logprob_sum": 8 * n_labels}, p  # fmt: skip
    decoder_payload = (p["fixed"]["embed"] + L * (p["per_layer"]["attn_out"] + p["per_layer"]["mlp_out"])) / T
    head_payload = (p["fixed"]["logprob_max"] + p["fixed"]["logprob_sum"]) / n_labels
    payload_per_token = decoder_payload + head_payload * n_labels / T
    ring = 2 * (k - 1) / k
    sent = ring * payload_per_token
    d, inter = LLAMA_31_70B["head_dim"], LLAMA_31_70B["intermediate_size"]
    nq, nkv = LLAMA_31_70B["num_attention_heads"], LLAMA_31_70B["num_key_value_heads"]
    layer_params = H * (nq + 2 * nkv) * d + nq * d * H + 3 * H * inter
    compute_s = 2 * L * layer_params / k / (PEAK_FLOPS * MFU)
    nv_s, ib_s = sent / NVLINK_BPS, sent / IB_BPS
    return {
        "tp": k,
        "collectives_per_layer": p["calls_per_layer"],
        "payload_bytes_per_layer": p["per_layer"],
        "payload_bytes_fixed": p["fixed"],
        "payload_bytes_per_packed_token": {
            "decoder_80_layers": decoder_payload,
            "lm_head_per_label_row": head_payload,
            "total_at_this_label_share": payload_per_token,
        },
        "ring_factor_2(K-1)/K": ring,
        "sent_bytes_per_token_per_rank": sent,
        "per_token_us": {
            "compute_at_60pct_of_989TFLOPs": compute_s * 1e6,
            "nvlink_900GBps": nv_s * 1e6,
            "nvlink_450GBps_per_direction": 2 * nv_s * 1e6,
            "infiniband_400Gbps": ib_s * 1e6,
        },
        "efficiency": {
            "nvlink_900GBps": compute_s / (compute_s + nv_s),
            "nvlink_450GBps_per_direction": compute_s / (compute_s + 2 * nv_s),
            "infiniband_400Gbps": compute_s / (compute_s + ib_s),
        },
        "speedup_vs_1_gpu": {
            "nvlink_900GBps": k * compute_s / (compute_s + nv_s),
            "infiniband_400Gbps": k * compute_s / (compute_s + ib_s),
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tp", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--records", type=int, default=4)
    ap.add_argument("--batch-tokens", type=int, default=8192)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    from rmbench_fast.scoring.plan import plan_batches

    t0 = time.perf_counter()
    seqs = synthetic_seqs(args.records, LLAMA_31_70B["vocab_size"])
    batches = plan_batches(seqs, batch_tokens=args.batch_tokens, vocab_size=LLAMA_31_70B["vocab_size"])
    T = sum(b.n_tokens for b in batches)
    n_labels = sum(len(b.label_ids) for b in batches)
    rows = [measure(k, getattr(torch, args.dtype), batches) for k in args.tp]
    report = {
        "command": "python " + " ".join(["bench/tp_comm.py", *sys.argv[1:]]),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "method": " ".join(
            p.replace("\n", " ") for p in (__doc__ or "").split("\n\n") if p.startswith(("Method", "Wire"))
        ),
        "shape": "Llama-3.1-70B",
        "config": LLAMA_31_70B,
        "dtype": args.dtype,
        "data": {
            "records": args.records,
            "batches": len(batches),
            "packed_tokens": T,
            "label_rows": n_labels,
            "label_share": n_labels / T,
        },  # fmt: skip
        "assumptions": {
            "nvlink_Bps": NVLINK_BPS,
            "infiniband_Bps": IB_BPS,
            "peak_bf16_flops": PEAK_FLOPS,
            "mfu": MFU,
            "all_reduce": "ring, 2(K-1)/K x payload sent per rank",
        },  # fmt: skip
        "results": rows,
        "seconds": time.perf_counter() - t0,
    }
    text = json.dumps(report, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    for r in rows:
        us = r["per_token_us"]
        print(
            f"TP={r['tp']}: {r['sent_bytes_per_token_per_rank'] / 1e6:.3f} MB sent per token per rank; "
            f"compute {us['compute_at_60pct_of_989TFLOPs']:.1f} us, NVLink {us['nvlink_900GBps']:.1f} us "
            f"(eff {r['efficiency']['nvlink_900GBps']:.1%}), IB {us['infiniband_400Gbps']:.1f} us "
            f"(eff {r['efficiency']['infiniband_400Gbps']:.1%})"
        )


if __name__ == "__main__":
    main()
