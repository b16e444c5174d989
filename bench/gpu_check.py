"""The engine on its target hardware, in one command of 5 minutes or less on an H200.

    python bench/gpu_check.py --prepare            # here (CPU): copy records + tokenizer into .gpu_data/
    python bench/gpu_check.py [--out DIR]          # on the GPU: build, correctness, speed -> DIR/gpu-<gpu>.json
    python bench/gpu_check.py --dry-run [--out DIR]  # CI: tiny shapes on the CPU, the same code path

(`bench/gpu_check.sh` wraps these, and builds the package before Python starts.) Stages, each
timed and reported on its own, the JSON rewritten after each one, so a failure or a time-out
in one still leaves the others' numbers:

1. build: what gpu_check.sh built (the C++ core and the CUDA kernel for sm_90 only, `pip install
   --no-build-isolation --no-deps -e .`, no package index; without the CUDA kernel if that build
   fails) and whether this interpreter imports it. Python never installs the package itself: an
   editable install's import hook is read when the interpreter starts, so what a running
   interpreter installs it cannot import.
2. correctness: tiny random Llama, Qwen2, Qwen3 and Gemma-2 models on real records, native
   engine on the device in fp32 and bf16 against the CPU fp32 engine: fp32 within the parity
   tolerance; bf16 agreeing with fp32 on >= 99% of the decisive comparisons (a near-tie guard
   as in tests/test_backend_parity.py); kernels A and B against their torch references at real
   shapes.
3. classifiers: a Llama-3.x-style classifier (a duplicated BOS, token 0 masked) and a Qwen3
   classifier, the same comparisons, with the attention backends that ran (flash expected on
   the GPU, no SDPA math kernel).
4. together: a DPO policy with its reference model in one pass (kernel A's fused ratio; the
   Triton kernel on the GPU) against the CPU fp32 engine.
5. speed: Llama-3.1-8B shape in bf16, random weights made on the device in memory (no checkpoint
   on disk); the official-style transformers path (bench/e2e.py's) and the native engine on the
   same records (3 domains x 64), a warm-up batch excluded, synchronized timing; tokens, wall
   times, the ratio, MFU against a bf16 matmul rate measured in the same run, peak memory.
6. oom: a real out-of-memory back-off: the device filled until an allocation fails, then just
   enough freed for a small batch; a run with a large token budget must back off, complete with
   the scores of an unconstrained run, and free its memory. A cuBLAS allocation failure (a
   RuntimeError, not torch.OutOfMemoryError) is caught and reported. The dry run uses a
   simulated device of a fixed capacity for the same code.
The goals (issue 9): native >= 60% MFU at 8B shape, >= 2.5x the official-style path, bf16
agreement >= 99% of decisive comparisons; the JSON says which were met.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from make_random_model import SHAPES

REPO = Path(__file__).resolve().parent.parent
# git-ignored: what travels to the GPU machine besides the checkout ($RMBF_GPU_DATA overrides)
DATA_DIR = Path(os.environ.get("RMBF_GPU_DATA", REPO / ".gpu_data"))
SHARED = REPO.parent / "shared" / "data" / "rm-bench"
DOMAIN_FILES = ("chat_filtered.json", "code_filtered.json", "safety-refuse_filtered.json")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)
PER_DOMAIN = 64
TINY = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
)
FP32_TOL = 1e-4  # |Δ| <= tol · (1 + |s|), as the CPU parity tests
BF16_AGREEMENT_GOAL = 0.99
MFU_GOAL, SPEEDUP_GOAL = 0.60, 2.5


# --- data ------------------------------------------------------------------------------------
def prepare(dst: Path = DATA_DIR, per_domain: int = PER_DOMAIN) -> Path:
    """Copy the first records of each shared domain file and SmolLM2's tokenizer into `dst`."""
    from rmbench_fast.inputs.demo import ensure_smollm2

    dst.mkdir(parents=True, exist_ok=True)
    for name in DOMAIN_FILES:
        records = json.loads((SHARED / name).read_text())[:per_domain]
        (dst / name).write_text(json.dumps(records))
    tok = dst / "tokenizer"
    tok.mkdir(exist_ok=True)
    smol = ensure_smollm2()
    for name in TOKENIZER_FILES:
        if (smol / name).is_file():
            shutil.copy2(smol / name, tok / name)
    return dst


def load_seqs(data: Path, per_domain: int, shortest: bool = False) -> tuple[list[Any], list[list[Any]]]:
    """(records, six TokSeqs per record) of the prepared data, DPO tokenization (SPEC §5): the
    first `per_domain` records of each domain, or its shortest ones (`shortest`, the CPU dry run)."""
    from rmbench_fast.benchmarks.rmbench.data import load_records, select
    from rmbench_fast.inputs.format import Formatter
    from rmbench_fast.inputs.tokenization import Tokenizer
    from rmbench_fast.pipeline.tokens import tokenize_records

    records = load_records(data)
    if shortest:
        size = {id(r): len(r.prompt) + sum(map(len, (*r.chosen, *r.rejected))) for r in records}
        by_domain: dict[str, list[Any]] = {}
        for r in sorted(records, key=lambda r: size[id(r)]):
            by_domain.setdefault(r.domain, []).append(r)
        records = [r for group in by_domain.values() for r in group[:per_domain]]
    else:
        records = select(records, limit=per_domain)
    tok_dir = data / "tokenizer"
    return records, tokenize_records(
        records, Formatter.from_model_dir(tok_dir, None), Tokenizer(tok_dir), "dpo"
    )


# --- models made in memory --------------------------------------------------------------------
SHAPE_8B = "llama-3.1-8b"  # the published config fields (bench/make_random_model.py SHAPES)
SPEED_SHAPES = ("llama-3.1-8b", "qwen3-8b", "qwen2-7b", "gemma-2-9b")


def hf_model(config: dict[str, Any], device: str, dtype: Any, seed: int) -> Any:
    """A transformers model with random weights drawn on `device` (no checkpoint on disk)."""
    import torch
    import transformers

    cfg = transformers.AutoConfig.for_model(**{k: v for k, v in config.items() if k != "architectures"})
    cfg.architectures = config["architectures"]
    cls = getattr(transformers, config["architectures"][0])
    torch.manual_seed(seed)
    with torch.device("meta"):
        model = cls(cfg)
    model = model.to_empty(device=device).to(dtype)
    # to_empty leaves every buffer uninitialised: the rotary tables (inv_freq) are computed from
    # the config, so rebuild each rotary module on the device and take its buffers. Without this
    # the official path read whatever memory held (CI: decisive agreement 0.5 with NaN scores,
    # depending on what the process had freed before).
    for mod in model.modules():
        buffers = dict(mod.named_buffers(recurse=False))
        if not buffers:
            continue
        if hasattr(mod, "scalar_embed_scale"):  # Gemma's scaled embedding: embed_scale = sqrt(H)
            mod.embed_scale = torch.tensor(
                mod.scalar_embed_scale, device=device, dtype=buffers["embed_scale"].dtype
            )
            continue
        if "RotaryEmbedding" not in type(mod).__name__:
            raise RuntimeError(f"hf_model: no rule to initialise the buffers of {type(mod).__name__}")
        with torch.device(device):
            fresh = type(mod)(config=mod.config)
        for bname, buf in fresh.named_buffers(recurse=False):
            setattr(mod, bname, buf.to(buffers[bname].dtype))
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen, device=device, dtype=torch.float32))
            else:
                p.copy_(torch.randn(p.shape, generator=gen, device=device, dtype=torch.float32) * 0.02)
    return model.eval()


def native_from_hf(hf: Any, config: dict[str, Any], device: str, dtype: Any) -> Any:
    """The engine's model with the transformers model's weights (streamed, no disk)."""
    from rmbench_fast.engine.config import EngineConfig
    from rmbench_fast.engine.loader import load_model_from_tensors

    cfg = EngineConfig.from_dict(config)
    return load_model_from_tensors(cfg, hf.state_dict().items(), dtype=dtype, device=device)


# --- measurements -------------------------------------------------------------------------------
def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_rate(device: str, n: int) -> float:
    """Measured bf16 (fp32 on the CPU) matmul FLOP/s at n x n x n."""
    import torch

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    reps = 20 if device.startswith("cuda") else 2
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return reps * 2 * n**3 / (time.perf_counter() - t0)


def decisive_agreement(a: np.ndarray, b: np.ndarray, guard: float) -> dict[str, Any]:
    """How often two score sets order chosen vs rejected the same way, over the pairs where the
    reference (a) is decisive: |chosen - rejected| > guard · (1 + |chosen|)."""
    agree, total = 0, 0
    for ra, rb in zip(a, b):
        for i in range(3):
            for j in range(3):
                d = ra[i] - ra[3 + j]
                if abs(d) <= guard * (1 + abs(ra[i])):
                    continue
                total += 1
                agree += int((d > 0) == (rb[i] - rb[3 + j] > 0))
    return {"decisive_pairs": total, "agree": agree, "agreement": agree / total if total else float("nan")}


def stage_correctness(device: str, data: Path, per_domain: int) -> dict[str, Any]:
    import torch

    _, seqs = load_seqs(data, per_domain, shortest=not device.startswith("cuda"))
    out: dict[str, Any] = {}
    classes = {
        "llama": "LlamaForCausalLM",
        "qwen2": "Qwen2ForCausalLM",
        "qwen3": "Qwen3ForCausalLM",
        "gemma2": "Gemma2ForCausalLM",
    }
    for arch, cls in classes.items():
        config = tiny_config(cls, arch)
        hf_cpu = hf_model(config, "cpu", torch.float32, seed=1)
        out[arch] = compare_dtypes(
            lambda dev, dt, hf_cpu=hf_cpu, config=config: native_from_hf(hf_cpu, config, dev, dt),
            device,
            seqs,
            dict(ref_free_mode="sum"),
        )
    out["kernels"] = kernel_checks(device)
    return out


def compare_dtypes(
    make: Callable[[str, Any], Any],
    device: str,
    seqs: list[list[Any]],
    scorer_kw: dict[str, Any],
    dtypes: tuple[Any, ...] | None = None,
) -> dict[str, Any]:
    """The engine's scores on `device` in each dtype against the CPU fp32 engine on `seqs`.

    make(device, dtype) -> an engine model (the same weights each time). fp32: max relative
    difference |Δ| / (1 + |s|) within FP32_TOL; bf16: decisive-pair agreement (guard 1e-3)."""
    import torch

    from rmbench_fast.engine import NativeScorer

    dtypes = dtypes or (torch.float32, torch.bfloat16)
    ref = NativeScorer(None, model=make("cpu", torch.float32), device="cpu", log=None, **scorer_kw)
    want = ref.score(seqs)
    res: dict[str, Any] = {}
    for dtype in dtypes:
        if device == "cpu" and dtype == torch.float32:  # the dry run: that is the reference run
            sc, got = ref, want
        else:
            sc = NativeScorer(None, model=make(device, dtype), device=device, log=None, **scorer_kw)
            got = sc.score(seqs)
        entry = {"attention": sc.stats["attention_calls"], "finite": bool(np.isfinite(got).all())}
        if dtype == torch.float32:
            rel = np.abs(got - want) / (1 + np.abs(want))
            entry.update(max_rel_diff=float(rel.max()), within_tol=bool(rel.max() <= FP32_TOL))
        else:
            entry.update(decisive_agreement(want, got, guard=1e-3))
            entry["meets_goal"] = entry["agreement"] >= BF16_AGREEMENT_GOAL
        res[str(dtype).removeprefix("torch.")] = entry
    return res


def tiny_config(cls: str, model_type: str, **extra: Any) -> dict[str, Any]:
    """A tiny config.json dict with ids inside SmolLM2's vocabulary (the prepared tokenizer)."""
    return {
        "architectures": [cls],
        "model_type": model_type,
        "vocab_size": 49152,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        **TINY,
        **({"head_dim": 16} if model_type in ("qwen3", "gemma2") else {}),
        **({"query_pre_attn_scalar": 16} if model_type == "gemma2" else {}),
        **extra,
    }


# --- classifiers: a masked duplicated BOS (Llama-3.x) and Qwen3 ------------------------------------
CLASSIFIERS = {
    "llama3_masked_bos": ("LlamaForSequenceClassification", "llama", True),
    "qwen3": ("Qwen3ForSequenceClassification", "qwen3", False),
}
BOS = 1  # SmolLM2's <|im_start|>: any id works, token 0 is masked


def classifier_seqs(seqs: list[list[Any]], mask_first: bool) -> list[list[Any]]:
    """Classifier sequences from the DPO ones, pooled at the last token. `mask_first`: a BOS in
    front, masked (SPEC §4), as a Llama-3.x chat template's BOS plus the tokenizer's leave it."""
    from rmbench_fast.records import TokSeq

    out = []
    for group in seqs:
        row = []
        for s in group:
            ids = ([BOS] if mask_first else []) + list(s.ids)
            row.append(TokSeq(ids=ids, label_start=len(ids), pool_index=len(ids) - 1, mask_first=mask_first))
        out.append(row)
    return out


def stage_classifiers(device: str, data: Path, per_domain: int) -> dict[str, Any]:
    """Each classifier of CLASSIFIERS against the CPU fp32 engine; on CUDA, bf16 must run flash
    and no SDPA call may land on the math kernel (issue 21)."""
    import torch

    cuda = device.startswith("cuda")
    _, seqs = load_seqs(data, per_domain, shortest=not cuda)
    out: dict[str, Any] = {}
    for name, (cls, model_type, mask_first) in CLASSIFIERS.items():
        config = tiny_config(cls, model_type, num_labels=1, pad_token_id=2)
        hf_cpu = hf_model(config, "cpu", torch.float32, seed=3)
        cseqs = classifier_seqs(seqs, mask_first)
        res = compare_dtypes(
            lambda dev, dt, hf_cpu=hf_cpu, config=config: native_from_hf(hf_cpu, config, dev, dt),
            device,
            cseqs,
            dict(kind="classifier"),
            None if cuda else (torch.float32,),  # bf16 on the CPU adds time, not coverage
        )
        for entry in res.values():
            calls = entry["attention"]
            entry["math_kernel_calls"] = calls.get("sdpa_kernel:math", 0)
            entry["flash_fallbacks"] = {k: v for k, v in calls.items() if k.startswith("flash_fallback:")}
        if cuda:
            res["bfloat16"]["ran_flash"] = res["bfloat16"]["attention"].get("flash", 0) > 0
        res["masked_bos"] = mask_first
        out[name] = res
    return out


# --- together: policy and reference in one pass (kernel A's fused ratio) ---------------------------
def kernel_a_backend(device: Any) -> str:
    """What token_logprobs' "auto" runs on `device` (scoring/logprobs.py): Triton on CUDA when
    triton is installed, else the CUDA C++ kernel; the torch reference off CUDA."""
    import importlib.util

    if device.type != "cuda":
        return "torch"
    return "triton" if importlib.util.find_spec("triton") is not None else "cuda"


def stage_together(device: str, data: Path, per_domain: int) -> dict[str, Any]:
    """A tiny Llama policy with a tiny Qwen2 reference, scored together on the device (fp32 and
    bf16; fp32 only off the GPU) against the CPU fp32 engine, and which kernel A ran."""
    import torch

    import rmbench_fast.engine.heads as heads
    from rmbench_fast.engine import NativeScorer

    cuda = device.startswith("cuda")
    _, seqs = load_seqs(data, per_domain, shortest=not cuda)
    backends: Counter[str] = Counter()
    real = heads.token_logprobs

    def spy(logits: Any, labels: Any, ref_logits: Any = None, **kw: Any) -> Any:
        mode = "ratio" if ref_logits is not None else "single"
        backends[f"{kernel_a_backend(logits.device)}:{mode}"] += 1
        return real(logits, labels, ref_logits, **kw)

    with tempfile.TemporaryDirectory() as tmp:
        dirs = {}
        for role, (cls, model_type, seed) in {
            "policy": ("LlamaForCausalLM", "llama", 1),
            "reference": ("Qwen2ForCausalLM", "qwen2", 2),
        }.items():
            dirs[role] = Path(tmp) / role
            hf_model(tiny_config(cls, model_type), "cpu", torch.float32, seed=seed).save_pretrained(
                dirs[role]
            )

        def score(dev: str, dtype: str) -> tuple[np.ndarray, dict[str, Any]]:
            sc = NativeScorer(
                dirs["policy"], ref_model_dir=dirs["reference"], kind="dpo", device=dev, dtype=dtype, log=None
            )
            return sc.score(seqs), sc.stats

        want = None if not cuda else score("cpu", "float32")[0]  # on the CPU: the run itself
        heads.token_logprobs = spy
        try:
            res: dict[str, Any] = {}
            for dtype in ("float32", "bfloat16") if cuda else ("float32",):
                backends.clear()
                got, st = score(device, dtype)
                want = got if want is None else want
                entry: dict[str, Any] = {
                    "reference_mode": st["reference_mode"],
                    "kernel_a": dict(backends),
                    "finite": bool(np.isfinite(got).all()),
                }
                if dtype == "float32":
                    rel = np.abs(got - want) / (1 + np.abs(want))
                    entry.update(max_rel_diff=float(rel.max()), within_tol=bool(rel.max() <= FP32_TOL))
                else:
                    entry.update(decisive_agreement(want, got, guard=1e-3))
                if cuda:  # kernel A compiled: the Triton kernel took the policy/reference ratio
                    entry["kernel_a_compiled"] = backends["triton:ratio"] > 0
                res[dtype] = entry
        finally:
            heads.token_logprobs = real
    return res


# --- oom: a real out-of-memory back-off --------------------------------------------------------------
ALLOC_ERRORS: tuple[type[BaseException], ...] = (MemoryError, RuntimeError)  # torch.OutOfMemoryError
# is a RuntimeError; a cuBLAS workspace that cannot be allocated raises a plain RuntimeError.


class Ballast:
    """Fills a device in `chunk`-byte pieces until an allocation fails, then frees pieces until
    `room` bytes are free: the rest of the device is taken, and what is left is known."""

    def __init__(self, alloc: Callable[[int], Any], free_bytes: Callable[[], int], chunk: int) -> None:
        self.alloc, self.free_bytes, self.chunk = alloc, free_bytes, chunk
        self.pieces: list[Any] = []
        self.alloc_error: str | None = None

    def fill(self, room: int, max_pieces: int = 1 << 16) -> int:
        """-> free bytes after filling and freeing back down to `room`."""
        try:
            while len(self.pieces) < max_pieces:
                self.pieces.append(self.alloc(self.chunk))
        except ALLOC_ERRORS as exc:  # the device is full
            self.alloc_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        while self.pieces and self.free_bytes() < room:
            self.pieces.pop()
        return self.free_bytes()

    def release(self) -> None:
        self.pieces.clear()


class SimulatedDevice:
    """The dry run's stand-in for a device of `capacity` bytes: allocations of pieces, and a
    batch's need estimated as `bytes_per_token` x tokens (torch.OutOfMemoryError past the free)."""

    def __init__(self, capacity: int, bytes_per_token: int) -> None:
        self.capacity, self.bytes_per_token, self.used = capacity, bytes_per_token, 0

    def alloc(self, n: int) -> Any:
        import torch

        if self.used + n > self.capacity:
            raise torch.OutOfMemoryError(f"simulated device: {n} bytes, {self.free()} free")
        self.used += n
        dev = self

        class Piece:
            def __del__(self) -> None:
                dev.used -= n

        return Piece()

    def free(self) -> int:
        return self.capacity - self.used

    def guard(self, score_batch: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def run(batch: Any) -> Any:
            import torch

            if batch.n_tokens * self.bytes_per_token > self.free():
                raise torch.OutOfMemoryError(f"simulated device: a batch of {batch.n_tokens} tokens")
            return score_batch(batch)

        return run


OOM_CHUNK = 256 << 20
OOM_SMALL_BUDGET, OOM_LARGE_BUDGET = 4096, 1 << 17


def stage_oom(device: str, data: Path, per_domain: int) -> dict[str, Any]:
    """The back-off under a full device (module docstring, stage 6)."""
    import torch

    from rmbench_fast.engine import NativeScorer

    cuda = device.startswith("cuda")
    _, seqs = load_seqs(data, per_domain, shortest=not cuda)
    shape = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=4) if cuda else {}
    config = tiny_config("LlamaForCausalLM", "llama", **shape)
    dtype = torch.bfloat16 if cuda else torch.float32
    model = native_from_hf(hf_model(config, device, dtype, seed=4), config, device, dtype)
    kw = dict(model=model, kind="dpo", ref_free_mode="sum", device=device)
    small_budget = OOM_SMALL_BUDGET if cuda else 1
    clean = NativeScorer(None, batch_tokens=small_budget, log=None, **kw)
    if cuda:
        _sync(device)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    want = clean.score(seqs)
    longest = max(b.batch.n_tokens for b in clean.schedule.batches)
    if cuda:
        _sync(device)
        need = torch.cuda.max_memory_allocated() - base  # a small batch's working memory
        room = int(need * 1.5) + (64 << 20)

        def free_bytes() -> int:
            torch.cuda.empty_cache()
            return torch.cuda.mem_get_info()[0]

        ballast = Ballast(lambda n: torch.empty(n, dtype=torch.uint8, device=device), free_bytes, OOM_CHUNK)
        sim = None
    else:  # a simulated device: room for the longest record, not for all of them at once
        per_token = 1 << 10
        need = longest * per_token
        sim = SimulatedDevice(capacity=16 * need, bytes_per_token=per_token)
        room = need + need // 4
        ballast = Ballast(sim.alloc, sim.free, chunk=max(need // 8, 1))
    free_left = ballast.fill(room)
    logs: list[str] = []
    res: dict[str, Any] = {
        "small_batch_bytes": need,
        "room_bytes": room,
        "free_after_fill_bytes": free_left,
        "ballast_pieces": len(ballast.pieces),
        "fill_stopped_by": ballast.alloc_error,
    }
    # A budget the full device would take in one batch: it must back off at least once.
    large = OOM_LARGE_BUDGET if cuda else 8 * longest
    res["large_budget"] = large
    sc = NativeScorer(None, batch_tokens=large, log=logs.append, **kw)
    if sim is not None:
        sc._score_batch = sim.guard(sc._score_batch)  # type: ignore[method-assign]
    got: np.ndarray | None = None
    try:
        got = sc.score(seqs)
        res["completed"] = True
    except torch.OutOfMemoryError as exc:
        res.update(completed=False, error=f"OutOfMemoryError: {str(exc).splitlines()[0][:300]}")
    except RuntimeError as exc:  # e.g. CUBLAS_STATUS_ALLOC_FAILED: the scheduler backs off on OOM only
        res.update(completed=False, error=f"RuntimeError: {str(exc).splitlines()[0][:300]}")
        res["cublas_alloc_failure"] = "CUBLAS" in str(exc).upper()
    finally:
        ballast.release()
    st = sc.stats
    res.update(
        oom_halvings=st.get("oom_halvings"),
        final_batch_tokens=st.get("batch_tokens"),
        log=[m for m in logs if "out of memory" in m],
    )
    if got is not None:
        rel = np.abs(got - want) / (1 + np.abs(want))
        res["max_rel_diff_vs_unconstrained"] = float(rel.max())
    if cuda:
        _sync(device)
        del got
        torch.cuda.empty_cache()
        res["allocated_after_vs_before_mib"] = (torch.cuda.memory_allocated() - base) / 2**20
        res["freed"] = res["allocated_after_vs_before_mib"] < 16
    else:
        res["freed"] = sim is not None and sim.used == 0
    res["ok"] = bool(
        res.get("completed")
        and (res["oom_halvings"] or 0) >= 1
        and res.get("max_rel_diff_vs_unconstrained", 1.0) <= (1e-2 if cuda else FP32_TOL)
        and res["freed"]
    )
    return res


def kernel_checks(device: str) -> list[dict[str, Any]]:
    """Kernels A and B against float64 torch at real shapes (tiny ones off the GPU)."""
    import torch

    from rmbench_fast.scoring.logprobs import linear_token_logprobs, token_logprobs

    cuda = device.startswith("cuda")
    shapes = [(2048, 128256, 4096), (1024, 256000, 3584), (777, 152064, 3584)] if cuda else [(33, 1000, 64)]
    rows = []
    for T, V, H in shapes:
        g = torch.Generator(device=device).manual_seed(T)
        hidden = torch.randn(T, H, device=device, generator=g, dtype=torch.float32).to(torch.bfloat16)
        weight = (torch.randn(V, H, device=device, generator=g, dtype=torch.float32) * H**-0.5).to(
            torch.bfloat16
        )
        labels = torch.randint(0, V, (T,), device=device, generator=g)
        labels[::7] = -100
        logits = hidden @ weight.T  # [T, V] bf16
        exact = torch.log_softmax(logits.double(), -1).gather(1, labels.clamp(min=0)[:, None])[:, 0]
        exact = torch.where(labels == -100, 0.0, exact)
        a, a_ref, _ = token_logprobs(logits, labels, logits.flip(0))
        b = linear_token_logprobs(hidden, weight, labels)
        exact_b = torch.log_softmax(hidden.double() @ weight.double().T, -1).gather(
            1, labels.clamp(min=0)[:, None]
        )[:, 0]
        exact_b = torch.where(labels == -100, 0.0, exact_b)
        rows.append(
            {
                "T": T,
                "V": V,
                "H": H,
                "kernel_a_max_abs": float((a.double() - exact).abs().max()),
                "kernel_a_ratio_ref_max_abs": float((a_ref.double() - exact.flip(0)).abs().max())
                if a_ref is not None
                else None,
                "kernel_b_max_abs": float((b.double() - exact_b).abs().max()),
            }
        )
        rows[-1]["ok"] = rows[-1]["kernel_a_max_abs"] < 1e-3 and rows[-1]["kernel_b_max_abs"] < 1e-3
        del logits
    return rows


def stage_speed(device: str, data: Path, per_domain: int, dry: bool, shape: str = SHAPE_8B) -> dict[str, Any]:
    import torch
    from e2e import official_style_scores

    from rmbench_fast.engine import NativeScorer

    config = dict(SHAPES[shape])
    if dry:  # tiny, with ids inside the SmolLM2 tokenizer's vocabulary
        config.update(TINY, head_dim=16, vocab_size=49152, bos_token_id=1, eos_token_id=2)
        config.update({"max_window_layers": 2} if "max_window_layers" in config else {})
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    _, seqs = load_seqs(data, per_domain, shortest=dry)
    warm, timed = seqs[:2], seqs
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    hf = hf_model(config, device, dtype, seed=0)
    pad = int(config["eos_token_id"])
    official_style_scores(hf, warm, "sum", device, pad)  # warm-up, not timed
    _sync(device)
    t0 = time.perf_counter()
    official, processed_official = official_style_scores(hf, timed, "sum", device, pad)
    _sync(device)
    official_s = time.perf_counter() - t0
    peak_official = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None

    native_model = native_from_hf(hf, config, device, dtype)
    del hf
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    sc = NativeScorer(
        None, model=native_model, ref_free_mode="sum", device=device, batch_tokens=16384, log=None
    )
    sc.score(warm)  # warm-up, not timed
    _sync(device)
    t0 = time.perf_counter()
    native = sc.score(timed)
    _sync(device)
    native_s = time.perf_counter() - t0
    st = sc.stats
    n_body = sum(
        p.numel()
        for n, p in native_model.named_parameters()
        if "embed_tokens" not in n and "lm_head" not in n
    )
    flops = (
        2 * n_body * st["packed_tokens"] + 2 * config["hidden_size"] * config["vocab_size"] * st["n_labels"]
    )
    peak_rate = matmul_rate(device, 8192 if device.startswith("cuda") else 256)
    mfu = flops / native_s / peak_rate
    return {
        "shape": shape if not dry else f"tiny {config['model_type']} (dry run)",
        "dtype": str(dtype).removeprefix("torch."),
        "records": len(timed),
        "useful_tokens": st["useful_tokens"],
        "native_processed_tokens": st["packed_tokens"],
        "official_processed_tokens": processed_official,
        "official_s": official_s,
        "native_s": native_s,
        "speedup": official_s / native_s,
        "native_model_tflops": flops / native_s / 1e12,
        "matmul_tflops_measured": peak_rate / 1e12,
        "mfu": mfu,
        "attention_calls": st["attention_calls"],
        "peak_mem_mib": {
            "official": peak_official,
            "native": torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None,
        },
        "decisive_agreement_vs_official": decisive_agreement(official, native, guard=1e-3),
        # the dry run's few scores themselves, so a disagreement in CI can be read from its log
        **({"scores": {"official": official.tolist(), "native": native.tolist()}} if dry else {}),
        "goals": {"mfu": mfu >= MFU_GOAL, "speedup": official_s / native_s >= SPEEDUP_GOAL},
    }


BUILD_STATUS = "build.env"  # gpu_check.sh's record of what it built, beside the JSON


def read_build_status(path: Path) -> dict[str, str]:
    """gpu_check.sh's key=value lines (cuda_build, cpu_build, seconds, ...), {} if absent."""
    if not path.is_file():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def stage_build(status_path: Path) -> dict[str, Any]:
    """What gpu_check.sh built before this interpreter started, and what this interpreter
    imports (the package's location, the C++ core, the CUDA kernel module). Installs nothing."""
    info: dict[str, Any] = dict(read_build_status(status_path))
    if not info:
        info["built_by"] = (
            f"nothing: no {status_path} (bench/gpu_check.sh builds; this script never installs)"
        )
    for log, key in (("build-cuda.log", "cuda_build"), ("build-cpu.log", "cpu_build")):
        if info.get(key) == "failed" and (status_path.parent / log).is_file():
            info[f"{key}_log_tail"] = (status_path.parent / log).read_text(errors="replace")[-3000:]
    import rmbench_fast
    from rmbench_fast.scoring.plan import have_cpp

    info["package"] = str(Path(rmbench_fast.__file__).parent)
    info["cpp_core"] = have_cpp()
    try:
        from rmbench_fast import _cuda  # noqa: F401

        info["cuda_kernel_module"] = True
    except ImportError as exc:
        info["cuda_kernel_module"] = f"not importable: {exc}"
    if info.get("cpu_build") == "failed":
        raise RuntimeError(f"the package did not build: {json.dumps(info)[:3000]}")
    return info


def write_report(report: dict[str, Any], path: Path) -> None:
    """The JSON, replaced whole (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _stage(report: dict[str, Any], name: str, fn: Callable[[], Any], path: Path) -> None:
    """Run one stage, record its result (or its error) and time, and rewrite the JSON, so a
    time-out in a later stage still leaves this one's numbers."""
    t0 = time.perf_counter()
    report.setdefault("stages_started", []).append(name)
    write_report(report, path)
    try:
        report[name] = fn()
    except Exception as exc:  # noqa: BLE001 - a failed stage is reported, the others still run
        report[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]}
    report.setdefault("seconds", {})[name] = time.perf_counter() - t0
    write_report(report, path)
    print(
        f"[{name}] {time.perf_counter() - t0:.1f} s: {json.dumps(report[name], default=str)[:600]}",
        flush=True,
    )


STAGES = ("build", "correctness", "classifiers", "together", "speed", "oom")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prepare", action="store_true", help="copy records + tokenizer into --data (run here)")
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU (CI)")
    ap.add_argument("--data", type=Path, default=DATA_DIR)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--per-domain", type=int, default=None)
    ap.add_argument("--shape", choices=SPEED_SHAPES, default=SHAPE_8B, help="the speed stage's model shape")
    ap.add_argument(
        "--build-status", type=Path, default=None, help=f"gpu_check.sh's record (default OUT/{BUILD_STATUS})"
    )
    ap.add_argument("--stages", nargs="+", choices=STAGES, default=None, help="only these stages, in order")
    args = ap.parse_args(argv)
    if args.prepare:
        print(f"prepared {prepare(args.data)}")
        return 0
    import torch

    dry = args.dry_run
    device = "cpu" if dry else "cuda"
    if not dry and not torch.cuda.is_available():
        print("error: no CUDA device (use --dry-run on a CPU machine)", file=sys.stderr)
        return 2
    if not (args.data / DOMAIN_FILES[0]).is_file():
        print(
            f"error: {args.data} has no prepared records; run `python bench/gpu_check.py --prepare` first",
            file=sys.stderr,
        )
        return 2
    per_domain = args.per_domain or (2 if dry else PER_DOMAIN)
    gpu = torch.cuda.get_device_name().replace(" ", "-") if not dry else "cpu-dry-run"
    report: dict[str, Any] = {
        "command": "python bench/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "device": gpu,
        "torch": torch.__version__,
        "triton": _version("triton"),
        "python": platform.python_version(),
    }
    suffix = "" if args.shape == SHAPE_8B else f"-{args.shape}"
    path = args.out / f"gpu-{gpu}{suffix}.json"
    small = max(1, per_domain // 8) if not dry else 1
    stages: dict[str, Callable[[], Any]] = {
        "build": lambda: stage_build(args.build_status or args.out / BUILD_STATUS),
        "correctness": lambda: stage_correctness(device, args.data, small),
        "classifiers": lambda: stage_classifiers(device, args.data, small),
        "together": lambda: stage_together(device, args.data, small),
        "speed": lambda: stage_speed(device, args.data, per_domain, dry, args.shape),
        "oom": lambda: stage_oom(device, args.data, small if dry else max(small, 4)),
    }
    for name in args.stages or STAGES:
        _stage(report, name, stages[name], path)
    print(f"wrote {path}")
    failed = [k for k in STAGES if isinstance(report.get(k), dict) and "error" in report[k]]
    return 1 if failed else 0


def _version(pkg: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
