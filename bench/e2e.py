"""End-to-end benchmark: official-style HF scoring vs the native engine, same model and data.

    python bench/e2e.py --model DIR [--ref-free avg] [--domains chat code safety-refuse] \
        [--limit 24] [--dtype float32] [--device cpu] [--threads 2] --out bench/results/e2e-cpu.json

(a) official-style: HF transformers model, one style index at a time, batches of 8 padded
    (chosen, rejected) pairs = 16 right-padded sequences per forward, full [B, L, V] logits and
    log_softmax, as reward-bench's DPOInference does (SPEC §6), on the same token sequences.
(b) native: rmbench_fast.engine.NativeScorer over prefix-shared packed batches.
(c) optional, --paths ... official8bit: (a) with the official scripts' default load, bitsandbytes
    8-bit weights and fp16 activations (skipped, and said so, without bitsandbytes or CUDA).
Each path runs in its own child process so its peak RSS is its own. Reported per path: useful
tokens, processed tokens (incl. padding / after prefix sharing), wall seconds, peak memory;
plus the speed ratio, the max |Δ| between the two paths' scores, and whether their RM-Bench
metrics (style matrices, hard / normal / easy per domain) are identical. On CUDA also MFU against a
bf16 matmul rate measured in the same run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "rm-bench"


def tokenize_records(model_dir: Path, data: Path, domains: list[str], limit: int) -> list[list[Any]]:
    """Six DPO TokSeqs per record (slot order), with the project's formatter and tokenizer."""
    from rmbench_fast.data import load_records, select
    from rmbench_fast.format import Formatter
    from rmbench_fast.pipeline import tokenize_records as tok_records
    from rmbench_fast.tokenize import Tokenizer

    records = select(load_records(data), domains=domains, limit=limit)
    return tok_records(records, Formatter.from_model_dir(model_dir, None), Tokenizer(model_dir), "dpo")


def _peak_mem(device: str) -> float:
    """Peak memory in MiB: CUDA max_memory_allocated, else this process's peak RSS."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_s() -> float:
    """User + system CPU seconds of this process (robust to other load on a shared machine)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def official_style_scores(
    model: Any, seqs: list[list[Any]], ref_free: str, device: str, pad: int
) -> tuple[np.ndarray, int]:
    """reward-bench's DPOInference way: per style k, 8 records -> 16 right-padded sequences per
    forward, full [B, L, V] logits, get_batch_logps. -> (rewards [n, 6], processed tokens)."""
    import torch

    from rmbench_fast.rewards import reward_from_logprobs

    out = np.zeros((len(seqs), 6))
    processed = 0
    with torch.no_grad():
        for k in range(3):
            for a in range(0, len(seqs), 8):
                group = seqs[a : a + 8]
                batch = [g[k] for g in group] + [g[k + 3] for g in group]
                L = max(len(s.ids) for s in batch)
                ids = torch.full((len(batch), L), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), L), dtype=torch.long)
                labels = torch.full((len(batch), L), -100, dtype=torch.long)
                for i, s in enumerate(batch):
                    ids[i, : len(s.ids)] = torch.tensor(s.ids)
                    mask[i, : len(s.ids)] = 1
                    labels[i, s.label_start : len(s.ids)] = torch.tensor(s.ids[s.label_start :])
                processed += ids.numel()
                logits = model(ids.to(device), attention_mask=mask.to(device)).logits  # [B, L, V]
                lab = labels[:, 1:].to(device)
                keep = lab != -100
                lp = torch.gather(logits[:, :-1].log_softmax(-1), 2, lab.clamp(min=0)[..., None])[..., 0]
                lp = (lp * keep).float()
                r = reward_from_logprobs(lp, ref_free, keep)  # the official get_batch_logps reduction
                r = r.double().cpu().numpy()
                n = len(group)
                out[a : a + n, k] = r[:n]
                out[a : a + n, k + 3] = r[n:]
    return out, processed


def run_official(args: argparse.Namespace, seqs: list[list[Any]]) -> dict[str, Any]:
    """reward-bench DPOInference-style: per style k, 8 records -> 16 padded sequences per forward."""
    import torch
    import transformers

    if args.path == "official8bit":
        # reward-bench's default load (SPEC §6): bitsandbytes 8-bit weights, fp16 activations
        model = transformers.AutoModelForCausalLM.from_pretrained(
            args.model,
            quantization_config=transformers.BitsAndBytesConfig(load_in_8bit=True),
            device_map={"": args.device},
            dtype=torch.float16,
        ).eval()
    else:
        dtype = getattr(torch, args.dtype)
        model = (
            transformers.AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).to(args.device).eval()
        )
    pad = int(json.loads((Path(args.model) / "config.json").read_text()).get("eos_token_id") or 0)
    _sync(args.device)
    t0, c0 = time.perf_counter(), _cpu_s()
    out, processed = official_style_scores(model, seqs, args.ref_free, args.device, pad)
    _sync(args.device)
    wall, cpu = time.perf_counter() - t0, _cpu_s() - c0
    useful = sum(len(s.ids) for g in seqs for s in g)
    return {
        "scores": out.tolist(),
        "wall_s": wall,
        "cpu_s": cpu,
        "useful_tokens": useful,
        "processed_tokens": processed,
        "padding_tokens": processed - useful,
        "prefix_savings": 0,
        "n_forwards": 3 * ((len(seqs) + 7) // 8),
        "peak_mem_mib": _peak_mem(args.device),
    }


def run_native(args: argparse.Namespace, seqs: list[list[Any]]) -> dict[str, Any]:
    from rmbench_fast.engine import NativeScorer

    sc = NativeScorer(
        args.model,
        kind="dpo",
        ref_free_mode=args.ref_free,
        dtype=args.dtype,
        device=args.device,
        batch_tokens=args.batch_tokens,
        log=None,
    )
    _sync(args.device)
    t0, c0 = time.perf_counter(), _cpu_s()
    out = sc.score(seqs)
    _sync(args.device)
    wall, cpu = time.perf_counter() - t0, _cpu_s() - c0
    st = sc.stats
    res = {
        "scores": out.tolist(),
        "wall_s": wall,
        "cpu_s": cpu,
        "useful_tokens": st["useful_tokens"],
        "processed_tokens": st["packed_tokens"],
        "padding_tokens": 0,
        "prefix_savings": st["prefix_savings"],
        "n_forwards": st["n_batches"],
        "n_labels": st["n_labels"],
        "batch_tokens": args.batch_tokens,
        "attention": st["attention"],
        "peak_mem_mib": _peak_mem(args.device),
        "plan_s": st["plan_s"],
        "plan_share_of_wall": st["plan_s"] / wall,
    }
    if args.device.startswith("cuda"):
        res["mfu"] = _mfu(sc, st, wall)
    return res


def _mfu(sc: Any, st: dict[str, Any], wall: float) -> dict[str, float]:
    """Model FLOPs (2 * params * tokens + lm_head at labels) / wall, vs a measured bf16 matmul rate."""
    import torch

    cfg = sc.cfg
    n_body = sum(
        p.numel() for n, p in sc.model.named_parameters() if "embed_tokens" not in n and "lm_head" not in n
    )
    flops = 2 * n_body * st["packed_tokens"] + 2 * cfg.hidden_size * cfg.vocab_size * st["n_labels"]
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ a
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(20):
        a @ a
    torch.cuda.synchronize()
    peak = 20 * 2 * 8192**3 / (time.perf_counter() - t0)
    return {
        "model_tflops": flops / wall / 1e12,
        "matmul_bf16_tflops": peak / 1e12,
        "mfu": flops / wall / peak,
    }


def compare_metrics(args: argparse.Namespace, official: np.ndarray, native: np.ndarray) -> dict[str, Any]:
    """Both paths' RM-Bench metrics (per domain and total) and whether they are identical."""
    from rmbench_fast.data import load_records, select
    from rmbench_fast.metrics import compute_metrics

    records = select(load_records(Path(args.data)), domains=args.domains, limit=args.limit)
    m_off, m_nat = compute_metrics(records, official), compute_metrics(records, native)
    keys = ("matrix", "hard", "normal", "easy")
    same = all(m_off["domains"][d][k] == m_nat["domains"][d][k] for d in m_off["domains"] for k in keys)
    within = bool(np.all(np.abs(official - native) <= 1e-4 * (1 + np.abs(official))))
    return {
        "metrics_identical": same and set(m_off["domains"]) == set(m_nat["domains"]),
        "scores_within_1e-4_rel": within,
        "metrics": {"official": m_off, "native": m_nat},
    }


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    seqs = tokenize_records(Path(args.model), Path(args.data), args.domains, args.limit)
    res = (run_native if args.path == "native" else run_official)(args, seqs)
    Path(args.child_out).write_text(json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--ref-free", default="avg", choices=["avg", "sum", "norm"])
    ap.add_argument("--domains", nargs="+", default=["chat", "code", "safety-refuse"])
    ap.add_argument("--limit", type=int, default=24)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument(
        "--paths",
        nargs="+",
        default=["official", "native"],
        choices=["official", "official8bit", "native"],
        help="official8bit: the official scripts' default 8-bit load (needs bitsandbytes and CUDA)",
    )
    ap.add_argument("--out", default=None)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.path:
        return child(args)
    results: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for path in args.paths:
        if path == "official8bit" and (
            importlib.util.find_spec("bitsandbytes") is None or args.device == "cpu"
        ):
            skipped[path] = "needs bitsandbytes and a CUDA device (not available here)"
            print(f"{path}: skipped ({skipped[path]})", flush=True)
            continue
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
            tmp = f.name
        cmd = [sys.executable, __file__, *sys.argv[1:], "--path", path, "--child-out", tmp]
        subprocess.run(cmd, check=True)
        results[path] = json.loads(Path(tmp).read_text())
        os.unlink(tmp)
        print(
            f"{path}: {results[path]['wall_s']:.1f} s, {results[path]['processed_tokens']} tokens processed, "
            f"peak {results[path]['peak_mem_mib']:.0f} MiB",
            flush=True,
        )
    report: dict[str, Any] = {
        "command": "python bench/e2e.py " + " ".join(sys.argv[1:]),
        "model": args.model,
        "dtype": args.dtype,
        "device": args.device,
        "threads": args.threads,
        "reward": f"ref-free {args.ref_free}",
        "domains": args.domains,
        "limit_per_domain": args.limit,
        "platform": platform.platform(),
        "processor": platform.processor(),
    }
    scores = {p: np.asarray(r.pop("scores")) for p, r in results.items()}
    report.update({p: r for p, r in results.items()})
    if skipped:
        report["skipped"] = skipped
    if "official8bit" in results and "native" in results:
        report["speedup_vs_official_8bit"] = results["official8bit"]["wall_s"] / results["native"]["wall_s"]
        print(f"speedup vs the official 8-bit default: {report['speedup_vs_official_8bit']:.2f}x")
    if "official" in scores and "native" in scores:
        a, b = scores["official"], scores["native"]
        report["n_records"] = len(a)
        report["load_average_end"] = os.getloadavg()
        report["speedup"] = results["official"]["wall_s"] / results["native"]["wall_s"]
        report["speedup_cpu_time"] = results["official"]["cpu_s"] / results["native"]["cpu_s"]
        report["max_abs_diff"] = float(np.abs(a - b).max())
        report["max_rel_diff"] = float((np.abs(a - b) / (1 + np.abs(a))).max())
        report.update(compare_metrics(args, a, b))
        print(
            f"speedup {report['speedup']:.2f}x (CPU time {report['speedup_cpu_time']:.2f}x), max |Δ| {report['max_abs_diff']:.2e}"
        )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
