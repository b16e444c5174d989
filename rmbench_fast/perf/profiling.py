"""`python -m rmbench_fast profile [run options] [--trace FILE]`: where the time of a run goes.

One run (the same `run_evaluation` as `run`) under torch.profiler, its time split by phase:

- The engine and the pipeline mark their phases as profiler ranges `rmbf::<phase>`
  (rmbench_fast.utils.phases): load, data and tokenization, planning, host copies, the attention
  kernel, the LM head and log-probs (or the classifier head), the metrics.
- The model's other compute is marked here, without touching the model files, by global
  module forward hooks that open a range around every module call of a given kind:
  `*MLP` modules (the engine's GatedMLP, transformers' LlamaMLP) -> `mlp`; attention modules
  (those with a `qkv_proj` or a `*Attention` class with `o_proj`) -> `attn_proj` (their q/k/v/o
  projections and RoPE; the kernel inside keeps its own `attention` range); the decoder body
  (a module with `embed_tokens` and a `layers` ModuleList) -> `model_other` (embeddings, norms,
  residual adds). So MLP time is measured, not inferred from op names; once the model files
  mark `mlp` themselves, the innermost range wins and nothing is counted twice. On
  `--backend hf` the transformers model's own call is `lm_head` (or `classifier_head`) outside
  its body, its attention modules are `attn_proj` (their kernel has no range of its own), and
  the log-softmax over the kept logits runs outside every range (`unattributed`).
- Each interval of the run's wall time goes to the innermost range open at that moment. What
  no range covers (the scheduler's Python between batches, building batch layouts, rewards,
  the run's metadata) is reported as `unattributed`, so the phases plus `unattributed` are the
  wall time exactly, and `unattributed` says how much the marks miss.

On CUDA each phase also gets its device time: the profiler's CUDA kernel time of the ops
launched inside the phase (exclusive of nested phases). On the CPU the host times are the
phases' wall times; each phase also lists its aggregated CPU ops (self time, calls), the
profiler's op table split by phase.

Rates: tokens/s (useful = the sequences' own tokens, processed = what the forwards ran, after
prefix sharing or with padding), achieved FLOP/s (2 · non-embedding params · processed tokens,
plus 2 · H · V · labels for the DPO LM head), MFU against a matmul rate measured in this
process at the model's shapes and dtype, and peak memory. The run's results store is off
(a stored batch would not be computed, so there would be nothing to profile).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import resource
import shlex
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rmbench_fast.errors import ModelError

if TYPE_CHECKING:
    import torch

# = rmbench_fast.utils.phases.PREFIX, not imported from there: phases imports torch, and the command
# line builds this command's parser (add_profile_args) without importing torch.
PREFIX = "rmbf::"

PROFILE_FILE = "profile.json"
RUN_RANGE = PREFIX + "run"
# The table's rows, in the order a run goes through them: (phase, what it covers).
ROWS: tuple[tuple[str, str], ...] = (
    ("load", "model directory checks, weights onto the device"),
    ("data_tokenize", "read and validate the data, chat template, tokenization"),
    ("planning", "prefix sharing and token-budget batching"),
    ("host_copies", "host <-> device copies (batch layouts, results)"),
    ("model_other", "embeddings, norms, residual adds"),
    ("attn_proj", "q/k/v/o projections and RoPE"),
    ("attention", "the attention kernel"),
    ("mlp", "gated MLP (gate/up, activation, down)"),
    ("lm_head", "LM head and answer-token log-probs"),
    ("classifier_head", "classifier head at the pooled tokens"),
    ("metrics", "style-substance matrices, accuracies, bootstrap intervals"),
    ("report", "run metadata (versions, sources) and the per-record score rows"),
    ("unattributed", "no range open: scheduler Python, rewards"),
)
MODEL_COMPUTE = ("model_other", "attn_proj", "attention", "mlp", "lm_head", "classifier_head")
MLP_METHOD = (
    "measured: global module forward hooks open an rmbf::mlp range around every *MLP module call "
    "(the model files are not edited); attention modules and the decoder body get attn_proj and "
    "model_other the same way"
)


def command_line(name: str) -> str:
    """The command that is running, as `python -m rmbench_fast NAME ...` (from sys.argv when this
    process was started as that command, else a note that it was called from Python)."""
    argv = list(sys.argv)
    if argv and Path(argv[0]).name in ("__main__.py", "rmbench-fast", "benchmark.py", "profile.py"):
        rest = argv[1:]
        if rest[:1] == [name]:
            rest = rest[1:]
        return f"python -m rmbench_fast {name} " + shlex.join(rest)
    return f"python -m rmbench_fast {name} (called from Python: {shlex.join(argv[:1])})"


# --- marks -----------------------------------------------------------------------------------
def _module_mark(module: torch.nn.Module) -> str | None:
    """The phase a module call is marked as, or None (see the module docstring)."""
    import torch  # start-up cost: torch

    name = type(module).__name__
    if name.endswith("MLP"):
        return "mlp"
    if hasattr(module, "qkv_proj") or (name.endswith("Attention") and hasattr(module, "o_proj")):
        return "attn_proj"
    if hasattr(module, "embed_tokens") and isinstance(getattr(module, "layers", None), torch.nn.ModuleList):
        return "model_other"
    # transformers' whole-model call (--backend hf): what its body does not cover is the head
    if name.endswith("ForCausalLM"):
        return "lm_head"
    if name.endswith("ForSequenceClassification"):
        return "classifier_head"
    return None


@contextlib.contextmanager
def module_marks() -> Iterator[None]:
    """Global forward hooks that mark MLP, attention-module and decoder-body calls as ranges."""
    import torch  # start-up cost: torch
    from torch.nn.modules import module as nn_module  # start-up cost: torch

    open_ranges: dict[int, list[Any]] = defaultdict(list)

    def pre(module: torch.nn.Module, _args: Any) -> None:
        mark = _module_mark(module)
        if mark is not None:
            rf = torch.profiler.record_function(PREFIX + mark)
            rf.__enter__()
            open_ranges[id(module)].append(rf)

    def post(module: torch.nn.Module, _args: Any, _out: Any) -> None:
        stack = open_ranges.get(id(module))
        if stack:
            stack.pop().__exit__(None, None, None)

    h_pre = nn_module.register_module_forward_pre_hook(pre)
    h_post = nn_module.register_module_forward_hook(post, always_call=True)
    try:
        yield
    finally:
        h_pre.remove()
        h_post.remove()


@contextlib.contextmanager
def nvtx_ranges(enabled: bool) -> Iterator[None]:
    """On CUDA, every rmbf:: range is also an NVTX range (for Nsight Systems).

    `torch.autograd.profiler.emit_nvtx` turns on a second profiler, which torch refuses while
    torch.profiler runs on the same thread; instead the record_function class that
    `phases.phase` (and `module_marks`) looks up at each call pushes and pops an NVTX range
    for the rmbf:: names, for the duration of the profile only.
    """
    import torch  # start-up cost: torch

    if not enabled:
        yield
        return
    base = torch.profiler.record_function

    class _NvtxRecordFunction(base):  # type: ignore[misc, valid-type]
        def __enter__(self) -> Any:
            if self.name.startswith(PREFIX):
                torch.cuda.nvtx.range_push(self.name)
            return super().__enter__()

        def __exit__(self, *exc: Any) -> Any:
            out = super().__exit__(*exc)
            if self.name.startswith(PREFIX):
                torch.cuda.nvtx.range_pop()
            return out

    torch.profiler.record_function = _NvtxRecordFunction  # type: ignore[misc]
    try:
        yield
    finally:
        torch.profiler.record_function = base  # type: ignore[misc]


# --- attribution -----------------------------------------------------------------------------
def _is_cpu(ev: Any) -> bool:
    return str(getattr(ev, "device_type", "")).endswith("CPU")


def _phase_of(ev: Any) -> str | None:
    """The innermost rmbf:: range above an op (None: outside every range)."""
    parent = ev.cpu_parent
    while parent is not None:
        if parent.name.startswith(PREFIX):
            return parent.name[len(PREFIX) :]
        parent = parent.cpu_parent
    return None


def attribute(events: Any, *, device: bool, top_ops: int = 3) -> dict[str, Any]:
    """Split the `rmbf::run` range's wall time among the rmbf:: ranges inside it.

    Each range's exclusive time is its duration less that of the ranges directly inside it, so
    every microsecond of the run goes to the innermost range open then; the run range's own
    exclusive time is `unattributed`. With `device`, the same for the CUDA kernel time of the
    ops launched inside each range. -> {"wall_us", "host_us", "device_us", "ops"}.
    """
    runs = [e for e in events if e.name == RUN_RANGE and _is_cpu(e)]
    if not runs:
        raise RuntimeError(f"the profile has no {RUN_RANGE} range")
    run = runs[0]
    lo, hi, thread = run.time_range.start, run.time_range.end, run.thread
    ranges = sorted(
        (
            e
            for e in events
            if e.name.startswith(PREFIX)
            and _is_cpu(e)
            and e.thread == thread
            and lo <= e.time_range.start
            and e.time_range.end <= hi
        ),
        key=lambda e: (e.time_range.start, -e.time_range.end),
    )
    host: dict[str, float] = defaultdict(float)
    dev: dict[str, float] = defaultdict(float)
    stack: list[Any] = []
    for ev in ranges:
        while stack and stack[-1].time_range.end <= ev.time_range.start:
            stack.pop()
        name = "unattributed" if ev is run else ev.name[len(PREFIX) :]
        dur = ev.time_range.elapsed_us()
        host[name] += dur
        d = float(ev.device_time_total) if device else 0.0
        dev[name] += d
        if stack:
            parent = "unattributed" if stack[-1] is run else stack[-1].name[len(PREFIX) :]
            host[parent] -= dur
            dev[parent] -= d
        stack.append(ev)
    ops: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(lambda: [0.0, 0.0, 0.0]))
    for ev in events:
        if ev.name.startswith(PREFIX) or not _is_cpu(ev) or ev.thread != thread:
            continue
        if not (lo <= ev.time_range.start and ev.time_range.end <= hi):
            continue
        where = _phase_of(ev)
        row = ops[where if where not in (None, "run") else "unattributed"][ev.name]
        row[0] += float(ev.self_cpu_time_total)
        row[1] += 1
        row[2] += float(getattr(ev, "self_device_time_total", 0.0)) if device else 0.0
    op_rows: dict[str, dict[str, Any]] = {}
    for name, by_op in ops.items():
        ranked = sorted(by_op.items(), key=lambda kv: -(kv[1][2] if device else kv[1][0]))
        op_rows[name] = {
            "op_self_cpu_us": sum(v[0] for v in by_op.values()),
            "op_self_device_us": sum(v[2] for v in by_op.values()),
            "top": [
                {"op": op, "self_cpu_s": v[0] / 1e6, "calls": int(v[1])}
                | ({"self_device_s": v[2] / 1e6} if device else {})
                for op, v in ranked[:top_ops]
            ],
        }
    return {"wall_us": hi - lo, "host_us": dict(host), "device_us": dict(dev), "ops": op_rows}


# --- rates -----------------------------------------------------------------------------------
def model_shape(model_dir: Path) -> dict[str, Any] | None:
    """The engine's view of a model: dims and the non-embedding parameter count (meta device,
    no memory), or None when the native engine does not know the architecture."""
    import torch  # start-up cost: torch

    from rmbench_fast.engine.config import EngineConfig  # start-up cost: the engine
    from rmbench_fast.engine.loader import model_class  # start-up cost: the engine

    try:
        cfg = EngineConfig.from_model_dir(model_dir, head_hint="causal")  # the body is the same
    except (ModelError, OSError, ValueError):
        return None
    with torch.device("meta"):
        model = model_class(cfg)(cfg)
    skip = ("embed_tokens", "lm_head")
    body = sum(p.numel() for n, p in model.named_parameters() if not any(s in n for s in skip))
    return {
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "q_size": cfg.num_attention_heads * cfg.head_dim,
        "kv_size": cfg.num_key_value_heads * cfg.head_dim,
        "vocab_size": cfg.vocab_size,
        "num_labels": cfg.num_labels,
        "head": cfg.head,
        "non_embedding_params": int(body),
    }


def _pass_tokens(stats: dict[str, Any] | None, labels: int, sequences: int) -> dict[str, int]:
    """Per-model tokens of one scoring pass from its scorer's stats (native or hf), and how
    many models ran on them (2: policy and reference together)."""
    stats = stats or {}
    models = int(stats.get("forwards_per_sequence") or 1)
    if "packed_tokens" in stats:  # native: the planner's batches, prefix shared
        return {
            "useful": int(stats["useful_tokens"]),
            "processed": int(stats["packed_tokens"]),
            "labels": int(stats.get("n_labels", labels)),
            "sequences": int(stats.get("n_sequences", sequences)),
            "batches": int(stats.get("n_batches", 0)),
            "models": models,
        }
    useful = int(stats.get("tokens", 0))  # hf: padded batches
    return {
        "useful": useful,
        "processed": int(stats.get("padded_tokens", useful)),
        "labels": labels,
        "sequences": sequences,
        "batches": int(stats.get("n_batches", 0)),
        "models": models,
    }


def run_flops(meta: dict[str, Any], shapes: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
    """Tokens and model FLOPs of a run from its metadata: the policy's pass (with the reference
    on each batch when they ran together) and a reference pass of its own (reference first).
    FLOPs: 2 · non-embedding params · processed tokens, plus the head: 2 · H · V per label (DPO)
    or 2 · H · num_labels per sequence (classifier). None when a model's shape is unknown."""
    labels = int(meta["tokens"]["scored"])
    sequences = 6 * int(meta["data"]["n_records"])
    passes = [("policy", meta.get("scorer_stats"))]
    if meta.get("reference_scorer_stats"):
        passes.append(("reference", meta["reference_scorer_stats"]))
    out: dict[str, Any] = {"useful_tokens": 0, "processed_tokens": 0, "labels": 0, "batches": 0}
    flops: float | None = 0.0
    for role, stats in passes:
        t = _pass_tokens(stats, labels, sequences)
        out["batches"] += t["batches"]
        if role == "policy":  # the GEMM shapes of a typical batch (matmul_rate)
            out["tokens_per_batch"] = t["processed"] // max(1, t["batches"])
            out["labels_per_batch"] = t["labels"] // max(1, t["batches"])
        models = ["policy", "reference"] if (role == "policy" and t["models"] == 2) else [role]
        for m in models:
            out["useful_tokens"] += t["useful"]
            out["processed_tokens"] += t["processed"]
            out["labels"] += t["labels"]
            shape = shapes.get(m)
            if shape is None or flops is None:
                flops = None
                continue
            flops += 2.0 * shape["non_embedding_params"] * t["processed"]
            if shape["head"] == "causal":
                flops += 2.0 * shape["hidden_size"] * shape["vocab_size"] * t["labels"]
            else:
                flops += 2.0 * shape["hidden_size"] * shape["num_labels"] * t["sequences"]
    out["flops"] = flops
    return out


def _sync(device: str) -> None:
    import torch  # start-up cost: torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_rate(
    shape: dict[str, Any], tokens: int, labels: int, device: str, dtype: torch.dtype, budget_s: float = 0.25
) -> dict[str, Any]:
    """FLOP/s of the model's GEMMs, x [T, in] @ W [in, out], timed here at the run's shapes.

    T: the run's mean processed tokens per batch; the GEMMs: q/k/v, o, gate/up, down, and the
    LM head at the labels of a batch (DPO). Each is warmed up once and repeated for about
    `budget_s`; the rate is their FLOPs over their time, i.e. the speed of a forward whose
    GEMMs all ran as fast as they do alone.
    """
    import torch  # start-up cost: torch

    H, inter = shape["hidden_size"], shape["intermediate_size"]
    q, kv = shape["q_size"], shape["kv_size"]
    T = max(1, tokens)
    gemms = [(T, H, q + 2 * kv), (T, q, H), (T, H, 2 * inter), (T, inter, H)]
    if shape["head"] == "causal" and labels > 0:
        gemms.append((max(1, labels), H, shape["vocab_size"]))
    total_flops, total_s = 0.0, 0.0
    gen = torch.Generator(device="cpu").manual_seed(0)
    for m, k, n in gemms:
        a = torch.randn(m, k, generator=gen).to(device=device, dtype=dtype)
        b = torch.randn(k, n, generator=gen).to(device=device, dtype=dtype)
        a @ b  # warm-up
        _sync(device)
        reps, t0 = 0, time.perf_counter()
        while True:
            a @ b
            reps += 1
            _sync(device)
            elapsed = time.perf_counter() - t0
            if elapsed >= budget_s or reps >= 50:
                break
        total_flops += 2.0 * m * k * n * reps
        total_s += elapsed
    return {
        "gemms": [list(g) for g in gemms],
        "dtype": str(dtype).removeprefix("torch."),
        "flops_per_s": total_flops / total_s,
    }


def _peak_memory_mib(device: str) -> dict[str, Any]:
    import torch  # start-up cost: torch

    if device.startswith("cuda"):
        return {
            "kind": "cuda max_memory_allocated",
            "mib": torch.cuda.max_memory_allocated() / 2**20,
            "reserved_mib": torch.cuda.max_memory_reserved() / 2**20,
        }
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"kind": "process peak RSS (ru_maxrss; includes what the process held before the run)", "mib": rss}


# --- the run ---------------------------------------------------------------------------------
def _warm_imports(cfg: Any) -> None:
    """Import what the run imports lazily, so import time is not counted as a phase."""
    for name in (
        "rmbench_fast.engine.scorer",
        "rmbench_fast.inputs.format",
        "rmbench_fast.inputs.tokenization",
        "rmbench_fast.inputs.modelio",
        "rmbench_fast.benchmarks.rmbench.metrics",
        "rmbench_fast.results.stats",
    ):
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    if cfg.backend == "hf":
        with contextlib.suppress(ImportError):
            importlib.import_module("rmbench_fast.backends.hf")
            importlib.import_module("transformers")


def profile_run(
    cfg: Any,
    *,
    trace: Path | None = None,
    top_ops: int = 3,
    log: Callable[[str], None] = print,
    matmul_budget_s: float = 0.25,
) -> dict[str, Any]:
    """Run `cfg` once under torch.profiler; -> the profile document (profile.json's content)."""

    import torch  # start-up cost: torch
    from torch.profiler import ProfilerActivity  # start-up cost: torch

    from rmbench_fast.pipeline import run_evaluation  # start-up cost: the pipeline (torch)
    from rmbench_fast.pipeline.models import resolve_device  # start-up cost: the pipeline (torch)

    cfg = replace(cfg, no_cache=True, progress=False)
    device = resolve_device(cfg.device)
    cuda = device.startswith("cuda")
    _warm_imports(cfg)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with (
        nvtx_ranges(cuda),
        module_marks(),
        torch.profiler.profile(activities=activities) as prof,
    ):
        with torch.profiler.record_function(RUN_RANGE):
            t0 = time.perf_counter()
            result = run_evaluation(cfg, log=log)
            _sync(device)
            wall_perf = time.perf_counter() - t0
    memory = _peak_memory_mib(device)  # before the GEMM probe below allocates its own
    if trace is not None:
        trace.parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(trace))
    parts = attribute(prof.events(), device=cuda, top_ops=top_ops)
    meta = result["meta"]
    wall = parts["wall_us"] / 1e6
    rows = []
    for name, label in ROWS:
        host_s = parts["host_us"].get(name, 0.0) / 1e6
        ops = parts["ops"].get(name, {})
        if host_s == 0.0 and not ops and name not in ("unattributed",):
            continue
        row: dict[str, Any] = {
            "phase": name,
            "covers": label,
            "host_s": host_s,
            "share": host_s / wall if wall else 0.0,
            "op_self_cpu_s": ops.get("op_self_cpu_us", 0.0) / 1e6,
            "top_ops": ops.get("top", []),
        }
        if cuda:
            row["device_s"] = parts["device_us"].get(name, 0.0) / 1e6
        rows.append(row)
    unattributed = parts["host_us"].get("unattributed", 0.0) / 1e6
    phases_sum = sum(r["host_s"] for r in rows if r["phase"] != "unattributed")
    doc: dict[str, Any] = {
        "model": meta["model"],
        "ref_model": meta.get("ref_model"),
        "kind": meta["kind"],
        "reward": meta["reward"],
        "backend": meta["backend"],
        "device": meta["device"],
        "dtype": meta["dtype"],
        "n_records": meta["data"]["n_records"],
        "data": meta["data"]["path"],
        "wall_s": wall,
        "wall_perf_counter_s": wall_perf,
        "scoring_s": meta["seconds"]["scoring"],
        "phases": rows,
        "phases_sum_s": phases_sum,
        "unattributed_s": unattributed,
        "unattributed_share": unattributed / wall if wall else 0.0,
        "mlp_method": MLP_METHOD,
        "timing": (
            "host: wall time per phase (innermost range), from torch.profiler's CPU ranges; "
            + (
                "device: CUDA kernel time of the ops launched in each phase"
                if cuda
                else "no device time (CPU)"
            )
        ),
        "results_store": "off (profiling measures the computation)",
        "trace": str(trace) if trace is not None else None,
        "nvtx_ranges": cuda,  # the rmbf:: phases as NVTX ranges too (Nsight Systems)
        "scorer_stats": meta.get("scorer_stats"),
    }
    doc.update(_rates(cfg, meta, doc, parts, device, matmul_budget_s))
    doc["memory"] = memory
    return doc


def _rates(
    cfg: Any, meta: dict[str, Any], doc: dict[str, Any], parts: dict[str, Any], device: str, budget_s: float
) -> dict[str, Any]:
    """tokens, flops and mfu sections of the profile."""
    shapes = {"policy": model_shape(Path(meta["model"]))}
    if meta.get("ref_model"):
        shapes["reference"] = model_shape(Path(meta["ref_model"]))
    fl = run_flops(meta, shapes)
    scoring_s = max(float(meta["seconds"]["scoring"]), 1e-9)
    key = "device_us" if device.startswith("cuda") else "host_us"
    compute_s = sum(parts[key].get(p, 0.0) for p in MODEL_COMPUTE) / 1e6
    tokens = {
        "useful": fl["useful_tokens"],
        "processed": fl["processed_tokens"],
        "labels": fl["labels"],
        "batches": fl.get("batches", 0),
        "useful_per_s": fl["useful_tokens"] / scoring_s,
        "processed_per_s": fl["processed_tokens"] / scoring_s,
        "per_s_over": "scoring_s (the score step: batches, forwards, heads, copies)",
    }
    flops: dict[str, Any] = {"formula": "2*non_embedding_params*processed + 2*H*V*labels (DPO)"}
    mfu: dict[str, Any] | None = None
    if fl["flops"] is not None and shapes["policy"] is not None:
        flops.update(
            total=fl["flops"],
            per_s=fl["flops"] / scoring_s,
            # the native engine marks all of its model compute; transformers' log-softmax is not
            per_s_model_compute=fl["flops"] / compute_s
            if compute_s > 0 and meta["backend"] == "native"
            else None,
            model_compute_s=compute_s,
        )
        from rmbench_fast.utils.dtypes import parse_dtype  # start-up cost: torch

        dtype = parse_dtype(meta["dtype"])
        from rmbench_fast.engine.layers.cpu_gemm import peak_gemm_rate  # start-up cost: the engine

        rate = matmul_rate(
            shapes["policy"], fl["tokens_per_batch"], fl["labels_per_batch"], device, dtype, budget_s
        )
        peak = peak_gemm_rate(device, dtype, budget_s=budget_s)
        mfu = {
            "peak": peak,
            "matmul": rate,
            "mfu": flops["per_s"] / peak["flops_per_s"],
            "mfu_model_compute": flops["per_s_model_compute"] / peak["flops_per_s"]
            if flops["per_s_model_compute"]
            else None,
            "mfu_vs_model_shapes": flops["per_s"] / rate["flops_per_s"],
            "note": "against the best GEMM rate measured in this process (the fastest candidate on a large "
            "square product, `peak`), not a datasheet peak; mfu_vs_model_shapes: against torch's matmul "
            "at the run's own GEMM shapes (`matmul`)",
        }
    else:
        flops["total"] = None
        flops["note"] = "the native engine does not know this architecture: no parameter count"
    return {"tokens": tokens, "flops": flops, "mfu": mfu}


# --- output ----------------------------------------------------------------------------------
def print_profile(doc: dict[str, Any], console: Any) -> None:
    """The phase table and the rates."""
    from rich.table import Table  # start-up cost: rich

    cuda = any("device_s" in r for r in doc["phases"])
    table = Table(
        title=f"where the time goes: {doc['n_records']} records, {doc['backend']} backend, "
        f"{doc['device']}, {doc['dtype']}"
    )
    table.add_column("phase")
    table.add_column("covers")
    table.add_column("host s", justify="right")
    table.add_column("share", justify="right")
    if cuda:
        table.add_column("device s", justify="right")
    table.add_column("top op (self s)")
    for r in doc["phases"]:
        top = r["top_ops"][0] if r["top_ops"] else None
        key = "self_device_s" if cuda else "self_cpu_s"
        cells = [r["phase"], r["covers"], f"{r['host_s']:.3f}", f"{100 * r['share']:.1f}%"]
        if cuda:
            cells.append(f"{r.get('device_s', 0.0):.3f}")
        cells.append(f"{top['op']} ({top[key]:.3f})" if top else "")
        table.add_row(*cells)
    table.add_row(
        "total", "wall time of the run", f"{doc['wall_s']:.3f}", "100.0%", *([""] * (2 if cuda else 1))
    )
    console.print(table)
    t, f, m = doc["tokens"], doc["flops"], doc["mfu"]
    console.print(
        f"tokens: {t['useful']} useful, {t['processed']} processed in {doc['scoring_s']:.2f} s of scoring: "
        f"{t['useful_per_s']:.0f} useful / {t['processed_per_s']:.0f} processed tokens/s"
    )
    if f.get("total") is not None and m is not None:
        over = f["per_s_model_compute"]
        console.print(
            f"model FLOPs {f['total']:.3g}: {f['per_s'] / 1e9:.2f} GFLOP/s over scoring"
            + (f" ({over / 1e9:.2f} over model compute)" if over else "")
            + f"; measured peak {m['peak']['flops_per_s'] / 1e9:.2f} GFLOP/s ({m['peak']['fastest']}, "
            f"{m['peak']['dtype']}, {'x'.join(map(str, m['peak']['shape']))}): MFU {100 * m['mfu']:.1f}%"
            + (f" ({100 * m['mfu_model_compute']:.1f}% over model compute)" if m["mfu_model_compute"] else "")
        )
    console.print(f"peak memory {doc['memory']['mib']:.0f} MiB ({doc['memory']['kind']})")


def read_profile(path: Path) -> dict[str, Any]:
    """A written profile.json (a file, or the --out directory holding one)."""
    p = path / PROFILE_FILE if path.is_dir() else path
    return json.loads(p.read_text())
