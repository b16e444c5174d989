"""How long full RM-Bench takes on an H100/H200, on paper, until a measured figure replaces it.

    python bench/gpu_estimate.py [--model-shape llama-3.1-8b|qwen3-8b|llama-3.1-70b ...]
                                 [--gpu h100|h200 ...] [--kind classifier|dpo-pair|ref-free ...]
                                 [--tp K] [--batch-tokens N] [--json OUT]
    python bench/gpu_estimate.py --measured bench/results/gpu-<gpu>.json   # measured vs predicted

Method (no GPU involved):

* The workload is the planner's real batches (`rmbench_fast.scoring.plan.plan_batches`, the engine's
  default token budget) for full RM-Bench, 1,327 records. chat (129), code (228) and
  safety-refuse (284) are the official files in ../shared/data/rm-bench. Math (529) and
  safety-response (157) are not available here. They are stand-ins with the published record
  counts: math is a seeded draw, without replacement, from the 641 real records of the other
  domains (their length distribution); safety-response is a draw from safety-refuse. Texts are
  tokenized with the project's tokenizer (SmolLM2's tokenizer and chat template, the only one at
  hand; a Llama-3 or Qwen3 tokenizer, with a larger vocabulary, gives somewhat fewer tokens),
  DPO pairs as SPEC §5 and classifier texts as SPEC §4.
* Per batch it counts FLOPs: the linears (2 · parameters · packed tokens), the attention as the
  flash backend computes it with prefix sharing (4 · heads · head_dim per query-key pair: every
  prefix and every branch causally to itself, every row of a segment to its prefix keys), the LM
  head at answer rows only (2 · H · V per label; the classifier's one-logit head at pooled rows).
  A DPO pair counts the policy and the reference on the same batch.
* And bytes: the weights read once per batch; K and V written once and read once per 128-row
  query tile; the linears' activation inputs and outputs; the unfused element-wise steps as the
  engine runs them in bf16 (bytes moved per element: RMSNorm 32 — fp32 upcast, square, mean,
  rsqrt product, cast, weight product —, RoPE 10, SiLU·up 10, residual add 6, the fp32
  log-sum-exp merge of the two attention partials 68 per output element of every row); the
  logits (12 bytes per logit: bf16 written and read, an fp32 copy written and read).
* Time per batch = max(linear FLOPs / GEMM rate, weight and GEMM-activation bytes / HBM rate)
  + max(attention FLOPs / attention rate, K/V bytes / HBM rate) + element-wise and logit bytes
  / HBM rate + TP all-reduces / NVLink rate: element-wise work and communication do not overlap
  the GEMMs, as the engine runs today. Rates are the published bf16 dense peaks and HBM
  bandwidths at the stated efficiencies.
* With --tp K every GPU holds 1/K of each layer (heads, MLP columns and vocabulary split), the
  hidden-size tensors replicated, and two all-reduces of [T, H] per layer plus one after the
  embedding, each sending 2(K−1)/K of its bytes (ring). Without --tp, each row takes the
  smallest K in 1, 2, 4, 8 whose weights (both models for a DPO pair) and one batch's
  activations fit in 90% of the GPU's memory.
* Beside it, the official-style path's FLOPs on the same token sequences (bench/e2e.py's path:
  the 6 encodings of a record in right-padded batches of 8 records, per style; DPO chosen and
  rejected together, the full [B, L, V] logits and log-softmax; attention counted causal per
  padded row).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
SHARED = REPO.parent / "shared" / "data" / "rm-bench"

# Published per-GPU figures (NVIDIA datasheets, SXM parts): bf16 dense tensor-core peak (the
# datasheets' 1,979 TFLOP/s is with 2:4 sparsity), HBM bandwidth, memory, NVLink per direction.
GPUS: dict[str, dict[str, Any]] = {
    "h100": {
        "name": "H100 SXM5 80GB",
        "bf16_tflops": 989.4,
        "hbm_tbps": 3.35,
        "mem_gb": 80,
        "nvlink_gbps": 450,
    },
    "h200": {
        "name": "H200 SXM 141GB",
        "bf16_tflops": 989.4,
        "hbm_tbps": 4.8,
        "mem_gb": 141,
        "nvlink_gbps": 450,
    },
}
# Fractions of those peaks assumed reachable.
EFFICIENCY = {
    "gemm": 0.70,  # large bf16 GEMMs (cuBLAS at these shapes)
    "attention": 0.45,  # FlashAttention-2 forward on Hopper, varlen with short pieces
    "hbm": 0.80,  # streaming element-wise kernels
    "nvlink": 0.70,  # NCCL ring all-reduce bus bandwidth
}
KINDS = ("classifier", "dpo-pair", "ref-free")
BATCH_TOKENS = 8192  # the engine's default budget (settings.ScoreSettings.batch_tokens)
PUBLISHED_COUNTS = {"chat": 129, "math": 529, "code": 228, "safety-refuse": 284, "safety-response": 157}
Q_TILE = 128  # query rows per FlashAttention tile: K/V are read once per tile
LOGIT_BYTES = 12
MEM_FRACTION = 0.9


def shapes() -> dict[str, dict[str, Any]]:
    from make_random_model import SHAPES
    from tp_comm import LLAMA_31_70B

    return {
        "llama-3.1-8b": SHAPES["llama-3.1-8b"],
        "qwen3-8b": SHAPES["qwen3-8b"],
        "llama-3.1-70b": LLAMA_31_70B,
    }


# --- the model's sizes -------------------------------------------------------------------------
@dataclass(frozen=True)
class Dims:
    H: int
    I: int  # noqa: E741 - the usual name
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    qk_norm: bool

    @classmethod
    def of(cls, cfg: dict[str, Any]) -> Dims:
        H, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
        return cls(
            H=H,
            I=int(cfg["intermediate_size"]),
            layers=int(cfg["num_hidden_layers"]),
            heads=heads,
            kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or H // heads),
            vocab=int(cfg["vocab_size"]),
            qk_norm=cfg.get("model_type") == "qwen3",
        )

    @property
    def dq(self) -> int:
        return self.heads * self.head_dim

    @property
    def dkv(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def layer_params(self) -> int:
        """Matmul parameters of one decoder layer (q, k, v, o, gate, up, down)."""
        return self.H * (self.dq + 2 * self.dkv) + self.dq * self.H + 3 * self.H * self.I

    @property
    def body_params(self) -> int:
        return self.layers * self.layer_params


# --- the workload --------------------------------------------------------------------------------
def full_rm_bench(data: Path = SHARED, seed: int = 0) -> tuple[list[Any], dict[str, Any]]:
    """The 1,327 records: the real domains here, stand-ins for the missing ones (module docstring).
    -> (records, a description of where each domain came from)."""
    from dataclasses import replace

    from rmbench_fast.benchmarks.rmbench.data import load_records

    real = load_records(data)
    by_domain: dict[str, list[Any]] = {}
    for r in real:
        by_domain.setdefault(r.domain, []).append(r)
    rng = np.random.default_rng(seed)
    out, about = list(real), {}
    for dom, recs in by_domain.items():
        about[dom] = {"records": len(recs), "source": f"official {dom}_filtered.json"}
    stand_in_from = {
        "math": [r for r in real if r.domain != "math"],
        "safety-response": by_domain.get("safety-refuse", real),
    }
    for dom, n in PUBLISHED_COUNTS.items():
        if dom in by_domain:
            continue
        pool = stand_in_from.get(dom, real)
        pick = rng.choice(len(pool), size=n, replace=n > len(pool))
        out.extend(replace(pool[i], domain=dom, id=f"stand-in-{dom}-{k}") for k, i in enumerate(pick))
        src = "all real records" if dom == "math" else "safety-refuse"
        about[dom] = {
            "records": n,
            "source": f"stand-in: the published count, a seeded draw from {src} (their length distribution)",
        }
    return out, about


def tokenize(records: Sequence[Any], kind: str, tok_dir: Path | None = None) -> list[list[Any]]:
    """Six TokSeqs per record for `kind` (classifier texts, or DPO pairs for the other kinds)."""
    from rmbench_fast.inputs.demo import ensure_smollm2
    from rmbench_fast.inputs.format import Formatter
    from rmbench_fast.inputs.tokenization import Tokenizer
    from rmbench_fast.pipeline.tokens import tokenize_records

    tok_dir = tok_dir or ensure_smollm2()
    tok = Tokenizer(tok_dir)
    fmt = Formatter.from_model_dir(tok_dir, None)
    if kind == "classifier":
        pad = tok.pad_id if tok.pad_id is not None else tok.eos_id
        return tokenize_records(records, fmt, tok, "classifier", pad_id=pad)
    return tokenize_records(records, fmt, tok, "dpo")


def plan(seqs: Sequence[Sequence[Any]], batch_tokens: int) -> list[Any]:
    from rmbench_fast.scoring.plan import plan_batches, segment_lengths

    budget = max(batch_tokens, int(segment_lengths(seqs).max()) if len(seqs) else 1)
    return plan_batches(seqs, batch_tokens=budget)


# --- counting ----------------------------------------------------------------------------------
def attention_pairs(batch: Any) -> tuple[int, int]:
    """(query-key pairs the flash backend computes, rows of its log-sum-exp merge).

    Its call A attends every piece (a prefix, a branch) causally to itself; call B attends every
    row of a segment, the prefix rows included, to the segment's P prefix keys. The merge runs
    over every row of a batch in which some segment has a prefix (engine/layers/attention/flash.py)."""
    from rmbench_fast.scoring.plan import branch_bounds

    P = np.asarray(batch.prefix_len, dtype=np.int64)  # [S]
    start, end = branch_bounds(batch)
    b = end - start  # [S*6] branch lengths
    seg = np.diff(np.asarray(batch.seg_offsets, dtype=np.int64))  # [S]
    pairs = (P * (P + 1) // 2).sum() + (b * (b + 1) // 2).sum() + (seg * P).sum()
    merged = int(batch.n_tokens) if P.any() else 0
    return int(pairs), merged


# Bytes each unfused element-wise step moves per element, as the engine runs it in bf16 today
# (engine/layers/{norms,rope,mlp}.py, engine/layers/attention/flash.py): RMSNorm's fp32 upcast, square, mean, rsqrt
# product, cast and weight product; RoPE's two multiplies and two addcmul on halves; SiLU then
# the in-place product with up; a residual add; the fp32 merge of the two attention partials.
BYTES_RMSNORM, BYTES_ROPE, BYTES_SILU_MUL, BYTES_RESIDUAL, BYTES_MERGE = 32, 10, 10, 6, 68


def elementwise_bytes(d: Dims, tp: int) -> float:
    """Bytes the unfused element-wise steps of one decoder layer move per token (the LSE merge
    apart), per GPU at tensor parallelism tp (hidden-size tensors replicated)."""
    q, kv, I = d.dq / tp, d.dkv / tp, d.I / tp  # noqa: E741
    n = 2 * BYTES_RMSNORM * d.H  # input and post-attention RMSNorm
    n += BYTES_RMSNORM * (q + kv) if d.qk_norm else 0  # Qwen3's per-head q/k RMSNorm
    n += BYTES_ROPE * (q + kv)
    n += BYTES_SILU_MUL * I
    n += 2 * BYTES_RESIDUAL * d.H
    return n


def gemm_io_bytes(d: Dims, tp: int) -> float:
    """Activation bytes the linears of one layer read and write per token (bf16)."""
    q, kv, I = d.dq / tp, d.dkv / tp, d.I / tp  # noqa: E741
    return 2.0 * ((d.H + q + 2 * kv) + (q + d.H) + (d.H + 2 * I) + (I + d.H))


def batch_cost(batch: Any, d: Dims, kind: str, tp: int = 1) -> dict[str, float]:
    """One planner batch's FLOPs and bytes per GPU (`kind` as KINDS; tp ranks)."""
    T = int(batch.n_tokens)
    n_lab, n_seq = len(batch.label_ids), len(batch.seq_record)
    pairs, merged = attention_pairs(batch)
    models = 2 if kind == "dpo-pair" else 1
    f_lin = 2.0 * d.body_params * T / tp
    f_attn = 4.0 * d.heads * d.head_dim * pairs * d.layers / tp
    if kind == "classifier":
        f_head, head_params, logits = 2.0 * d.H * n_seq, d.H, 0.0
    else:
        f_head, head_params, logits = (
            2.0 * d.H * d.vocab * n_lab / tp,
            d.vocab * d.H / tp,
            n_lab * d.vocab / tp,
        )
    # K and V: written once, read once per query tile of each call (A: its own piece, B: the prefix)
    kv_bytes = d.layers * 2 * (d.dkv / tp) * 2.0 * (T + pairs / Q_TILE)
    elem = d.layers * (elementwise_bytes(d, tp) * T + BYTES_MERGE * merged * d.dq / tp)
    elem += BYTES_RMSNORM * d.H * T  # the final norm
    comm = 0.0
    if tp > 1:  # 2 all-reduces of [T, H] bf16 per layer + the embedding's, ring
        comm = (2 * d.layers + 1) * T * d.H * 2 * 2 * (tp - 1) / tp
    return {
        "tokens": T,
        "labels": n_lab,
        "attention_pairs": pairs,
        "flops_linear": models * f_lin,
        "flops_attention": models * f_attn,
        "flops_head": models * f_head,
        "bytes_weights": models * 2.0 * (d.body_params / tp + head_params),
        "bytes_kv": models * kv_bytes,
        "bytes_gemm_io": models * d.layers * gemm_io_bytes(d, tp) * T,
        "bytes_elementwise": models * elem,
        "bytes_logits": models * LOGIT_BYTES * logits,
        "bytes_comm": models * comm,
    }


def batch_seconds(c: dict[str, float], gpu: dict[str, Any], eff: dict[str, float]) -> dict[str, float]:
    peak, bw = gpu["bf16_tflops"] * 1e12, gpu["hbm_tbps"] * 1e12
    gemm = max(
        (c["flops_linear"] + c["flops_head"]) / (eff["gemm"] * peak),
        (c["bytes_weights"] + c["bytes_gemm_io"]) / (eff["hbm"] * bw),
    )
    attn = max(c["flops_attention"] / (eff["attention"] * peak), c["bytes_kv"] / (eff["hbm"] * bw))
    elem = (c["bytes_elementwise"] + c["bytes_logits"]) / (eff["hbm"] * bw)
    comm = c["bytes_comm"] / (eff["nvlink"] * gpu["nvlink_gbps"] * 1e9)
    return {"gemm": gemm, "attention": attn, "elementwise": elem, "comm": comm}


def official_flops(seqs: Sequence[Sequence[Any]], d: Dims, kind: str) -> dict[str, float]:
    """The official-style path's FLOPs on the same sequences (module docstring)."""
    models = 2 if kind == "dpo-pair" else 1
    tokens = pairs = 0
    for k in range(3):
        for a in range(0, len(seqs), 8):
            group = seqs[a : a + 8]
            batches = (
                [[g[k] for g in group], [g[k + 3] for g in group]]
                if kind == "classifier"
                else [[g[k] for g in group] + [g[k + 3] for g in group]]
            )
            for b in batches:
                L = max(len(s.ids) for s in b)
                tokens += len(b) * L
                pairs += len(b) * L * (L + 1) // 2
    head = 2.0 * d.H * (1 if kind == "classifier" else d.vocab) * tokens
    lin = 2.0 * d.body_params * tokens
    attn = 4.0 * d.heads * d.head_dim * pairs * d.layers
    return {
        "processed_tokens": tokens,
        "flops_linear": models * lin,
        "flops_attention": models * attn,
        "flops_head": models * head,
        "flops": models * (lin + attn + head),
    }


def fits(d: Dims, kind: str, gpu: dict[str, Any], tp: int, batch_tokens: int) -> bool:
    """Weights (both models of a pair) and one batch's live activations in 90% of the memory."""
    models = 2 if kind == "dpo-pair" else 1
    head = d.H if kind == "classifier" else d.vocab * d.H / tp
    weights = models * 2.0 * (d.body_params / tp + head + d.vocab * d.H / tp)  # + the embedding
    live = batch_tokens * 2.0 * (6 * d.H + (3 * d.I + 2 * (d.dq + 2 * d.dkv)) / tp)
    return weights + live <= MEM_FRACTION * gpu["mem_gb"] * 1e9


def estimate(
    batches: Sequence[Any],
    d: Dims,
    kind: str,
    gpu: dict[str, Any],
    tp: int,
    eff: dict[str, float] = EFFICIENCY,
) -> dict[str, Any]:
    """Predicted seconds and the totals over a plan, on one GPU model at tensor parallelism tp."""
    tot: dict[str, float] = {}
    secs = {"gemm": 0.0, "attention": 0.0, "elementwise": 0.0, "comm": 0.0}
    for b in batches:
        c = batch_cost(b, d, kind, tp)
        for k, v in c.items():
            tot[k] = tot.get(k, 0.0) + v
        for k, v in batch_seconds(c, gpu, eff).items():
            secs[k] += v
    seconds = sum(secs.values())
    flops = tot["flops_linear"] + tot["flops_attention"] + tot["flops_head"]
    return {
        "batches": len(batches),
        "packed_tokens": int(tot["tokens"]),
        "labels": int(tot["labels"]),
        "flops_per_gpu": flops,
        **{k: v for k, v in tot.items() if k.startswith(("flops_", "bytes_"))},
        "seconds": seconds,
        "seconds_by_part": secs,
        "mfu": flops / seconds / (gpu["bf16_tflops"] * 1e12) if seconds else float("nan"),
    }


# --- the table -----------------------------------------------------------------------------------
def run_table(
    shape_names: Sequence[str],
    gpu_names: Sequence[str],
    kinds: Sequence[str],
    tp: int | None,
    batch_tokens: int,
    data: Path = SHARED,
    records: Sequence[Any] | None = None,
    shape_configs: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    about: dict[str, Any] = {}
    if records is None:
        records, about = full_rm_bench(data)
    configs = shape_configs or shapes()
    seqs_by = {}
    for kind in kinds:
        tk = "classifier" if kind == "classifier" else "dpo"
        if tk not in seqs_by:
            seqs_by[tk] = tokenize(records, tk)
    rows = []
    plans: dict[str, Any] = {}
    for shape in shape_names:
        d = Dims.of(configs[shape])
        for kind in kinds:
            seqs = seqs_by["classifier" if kind == "classifier" else "dpo"]
            key = "classifier" if kind == "classifier" else "dpo"
            if key not in plans:
                plans[key] = plan(seqs, batch_tokens)
            off = official_flops(seqs, d, kind)
            for g in gpu_names:
                gpu = GPUS[g]
                k = tp
                if k is None:
                    k = next((t for t in (1, 2, 4, 8) if fits(d, kind, gpu, t, batch_tokens)), 8)
                est = estimate(plans[key], d, kind, gpu, k)
                rows.append(
                    {
                        "shape": shape,
                        "gpu": g,
                        "kind": kind,
                        "tp": k,
                        "fits": fits(d, kind, gpu, k, batch_tokens),
                        **est,
                        "gpu_seconds": est["seconds"] * k,
                        "native_flops_total": est["flops_per_gpu"] * k,
                        "official": off,
                        "official_over_native_flops": off["flops"] / (est["flops_per_gpu"] * k),
                    }
                )
    return {
        "records": len(records),
        "domains": about,
        "tokenizer": "SmolLM2-135M-Instruct's tokenizer and chat template (the project's demo model)",
        "batch_tokens": batch_tokens,
        "rows": rows,
    }


def format_table(result: dict[str, Any]) -> str:
    head = (
        f"{'shape':<14} {'gpu':<5} {'kind':<11} {'tp':>2} {'batches':>7} {'tokens':>9} "
        f"{'TFLOP':>8} {'pred s':>7} {'GPU·s':>7} {'MFU':>5}  {'gemm/attn/elem/comm %':<22} "
        f"{'official TFLOP':>14} {'×':>5}"
    )
    lines = [head, "-" * len(head)]
    for r in result["rows"]:
        parts = r["seconds_by_part"]
        share = "/".join(
            f"{100 * parts[p] / r['seconds']:.0f}" for p in ("gemm", "attention", "elementwise", "comm")
        )
        lines.append(
            f"{r['shape']:<14} {r['gpu']:<5} {r['kind']:<11} {r['tp']:>2} {r['batches']:>7} "
            f"{r['packed_tokens']:>9} {r['native_flops_total'] / 1e12:>8.0f} {r['seconds']:>7.1f} "
            f"{r['gpu_seconds']:>7.1f} {r['mfu']:>5.2f}  {share:<22} "
            f"{r['official']['flops'] / 1e12:>14.0f} {r['official_over_native_flops']:>5.1f}"
            + ("" if r["fits"] else "  (does not fit)")
        )
    return "\n".join(lines)


def describe(result: dict[str, Any]) -> str:
    eff = ", ".join(f"{k} {100 * v:.0f}%" for k, v in EFFICIENCY.items())
    gpus = "; ".join(
        f"{g}: {v['name']}, {v['bf16_tflops']} TFLOP/s bf16 dense, {v['hbm_tbps']} TB/s HBM, {v['mem_gb']} GB"
        for g, v in GPUS.items()
    )
    lines = [
        f"ESTIMATE (no GPU ran): full RM-Bench, {result['records']} records, planner batches of "
        f"<= {result['batch_tokens']} tokens; tokenizer: {result['tokenizer']}.",
    ]
    for dom, a in result["domains"].items():
        lines.append(f"  {dom}: {a['records']} records, {a['source']}")
    lines += [
        f"Published peaks: {gpus}.",
        f"Efficiencies assumed: {eff} of peak.",
        "pred s = wall seconds (all tp GPUs together); GPU·s = pred s × tp; official TFLOP = the "
        "official-style path on the same sequences; × = official FLOPs / native FLOPs.",
    ]
    return "\n".join(lines)


# --- measured against predicted -------------------------------------------------------------------
SPEED_KEYS = ("shape", "records", "native_s", "native_processed_tokens")


def gpu_of(device: str) -> str | None:
    m = re.search(r"H(100|200)", device, re.IGNORECASE)
    return f"h{m.group(1)}" if m else None


def compare_measured(
    report: dict[str, Any],
    gpu: str | None = None,
    data: Path = SHARED,
    shape_configs: dict[str, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Each speed stage of a gpu_check JSON against the estimate on the same workload.

    gpu_check's speed stage times the first records/3 records of chat, code and safety-refuse
    (DPO tokenization, the SmolLM2 tokenizer) in `batch_tokens` batches (16384 unless the stage
    says). The workload is rebuilt from the shared data; when its packed token count differs from
    the measured one, the prediction is scaled by the ratio (and the row says so)."""
    from rmbench_fast.benchmarks.rmbench.data import load_records, select

    g = gpu or gpu_of(str(report.get("device", "")))
    if g not in GPUS:
        raise ValueError(f"cannot tell the GPU from device {report.get('device')!r}; pass --gpu")
    configs = shape_configs or shapes()
    rows = []
    for name, stage in report.items():
        if not (isinstance(stage, dict) and all(k in stage for k in SPEED_KEYS)):
            continue
        if stage["shape"] not in configs:
            rows.append({"stage": name, "skipped": f"shape {stage['shape']!r} has no estimate"})
            continue
        kind = stage.get("kind", "ref-free")
        per_domain = max(1, int(stage["records"]) // 3)
        recs = select(load_records(data), limit=per_domain)
        seqs = tokenize(recs, "classifier" if kind == "classifier" else "dpo")
        batches = plan(seqs, int(stage.get("batch_tokens", 16384)))
        d = Dims.of(configs[stage["shape"]])
        tp = int(stage.get("tp", 1))
        est = estimate(batches, d, kind, GPUS[g], tp)
        scale = stage["native_processed_tokens"] / est["packed_tokens"] if est["packed_tokens"] else 1.0
        predicted = est["seconds"] * scale
        row = {
            "stage": name,
            "shape": stage["shape"],
            "kind": kind,
            "gpu": g,
            "tp": tp,
            "measured_s": stage["native_s"],
            "predicted_s": predicted,
            "measured_over_predicted": stage["native_s"] / predicted,
            "tokens_measured": stage["native_processed_tokens"],
            "tokens_rebuilt": est["packed_tokens"],
            "scaled": scale != 1.0,
        }
        measured_rate = stage.get("matmul_tflops_measured")
        if measured_rate:  # the same model with the GEMM rate the run measured instead of 70% of peak
            eff = dict(EFFICIENCY, gemm=measured_rate / GPUS[g]["bf16_tflops"])
            row["predicted_s_at_measured_matmul"] = (
                estimate(batches, d, kind, GPUS[g], tp, eff)["seconds"] * scale
            )
        if "mfu" in stage:
            row["mfu_measured"], row["mfu_predicted"] = stage["mfu"], est["mfu"]
        rows.append(row)
    return rows


def format_measured(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        f"{'stage':<18} {'shape':<14} {'kind':<10} {'gpu':<5} {'measured s':>10} {'predicted s':>11} "
        f"{'meas/pred':>9} {'pred@matmul':>11}"
    ]
    for r in rows:
        if "skipped" in r:
            lines.append(f"{r['stage']:<18} skipped: {r['skipped']}")
            continue
        at = r.get("predicted_s_at_measured_matmul")
        lines.append(
            f"{r['stage']:<18} {r['shape']:<14} {r['kind']:<10} {r['gpu']:<5} {r['measured_s']:>10.2f} "
            f"{r['predicted_s']:>11.2f} {r['measured_over_predicted']:>9.2f} "
            f"{at if at is None else f'{at:.2f}':>11}"
            + (
                f"  (workload rebuilt with {r['tokens_rebuilt']} tokens, measured {r['tokens_measured']}: scaled)"
                if r["scaled"]
                else ""
            )
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-shape", nargs="+", choices=sorted(shapes()), default=None)
    ap.add_argument("--gpu", nargs="+", choices=sorted(GPUS), default=None)
    ap.add_argument("--kind", nargs="+", choices=KINDS, default=list(KINDS))
    ap.add_argument(
        "--tp", type=int, default=None, help="tensor-parallel GPUs (default: the fewest that fit)"
    )
    ap.add_argument("--batch-tokens", type=int, default=BATCH_TOKENS)
    ap.add_argument("--data", type=Path, default=SHARED)
    ap.add_argument("--json", type=Path, default=None, help="write the estimate here")
    ap.add_argument("--measured", type=Path, default=None, help="a gpu-*.json of bench/gpu_check.py")
    args = ap.parse_args(argv)
    if args.tp is not None and args.tp < 1:
        ap.error("--tp must be >= 1")
    if args.measured is not None:
        report = json.loads(args.measured.read_text())
        rows = compare_measured(report, args.gpu[0] if args.gpu else None, args.data)
        print(f"measured ({args.measured}, {report.get('device')}) against predicted:")
        print(format_measured(rows))
        return 0
    t0 = time.perf_counter()
    result = run_table(
        args.model_shape or list(shapes()),
        args.gpu or list(GPUS),
        args.kind,
        args.tp,
        args.batch_tokens,
        args.data,
    )
    print(describe(result))
    print(format_table(result))
    if args.json is not None:
        cmd = "python bench/gpu_estimate.py " + " ".join(argv if argv is not None else sys.argv[1:])
        meta = {
            "command": cmd,
            "estimate": True,
            "method": __doc__.split("Method (no GPU involved):")[1].strip(),
            "gpus": GPUS,
            "efficiency": EFFICIENCY,
            "machine": {"python": platform.python_version(), "seconds": time.perf_counter() - t0},
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**meta, **result}, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
