"""The engine on its target hardware, in one command of 5 minutes or less on an H200.

    python bench/gpu_check.py --prepare            # here (CPU): copy records + tokenizer into .gpu_data/
    python bench/gpu_check.py [--out DIR]          # on the GPU: build, correctness, speed -> DIR/gpu-<gpu>.json
    python bench/gpu_check.py --dry-run [--out DIR]  # CI: tiny shapes on the CPU, the same code path

(`bench/gpu_check.sh` wraps these.) Stages, each timed and reported on its own, so a failure in
one still leaves the others' numbers:

1. build: the C++ core and the CUDA kernel for sm_90 only (`pip install --no-build-isolation
   --no-deps -e .`, no package index needed).
2. correctness: tiny random Llama, Qwen2 and Gemma-2 models on real records, native engine on the
   device in fp32 and bf16 against the CPU fp32 engine: fp32 within the parity tolerance; bf16
   agreeing with fp32 on >= 99% of the decisive comparisons (a near-tie guard as in
   tests/test_backend_parity.py); kernels A and B against their torch references at real shapes.
3. speed: Llama-3.1-8B shape in bf16, random weights made on the device in memory (no checkpoint
   on disk); the official-style transformers path (bench/e2e.py's) and the native engine on the
   same records (3 domains x 64), a warm-up batch excluded, synchronized timing; tokens, wall
   times, the ratio, MFU against a bf16 matmul rate measured in the same run, peak memory.
The goals (issue 9): native >= 60% MFU at 8B shape, >= 2.5x the official-style path, bf16
agreement >= 99% of decisive comparisons; the JSON says which were met.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
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
    from rmbench_fast.pipeline import tokenize_records

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

    from rmbench_fast.engine import NativeScorer

    _, seqs = load_seqs(data, per_domain, shortest=not device.startswith("cuda"))
    out: dict[str, Any] = {}
    classes = {
        "llama": "LlamaForCausalLM",
        "qwen2": "Qwen2ForCausalLM",
        "qwen3": "Qwen3ForCausalLM",
        "gemma2": "Gemma2ForCausalLM",
    }
    for arch, cls in classes.items():
        config = {
            "architectures": [cls],
            "model_type": arch,
            "vocab_size": 49152,
            "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-5,
            **TINY,
            **({"head_dim": 16, "query_pre_attn_scalar": 16} if arch == "gemma2" else {}),
            **({"head_dim": 16} if arch == "qwen3" else {}),
        }
        hf_cpu = hf_model(config, "cpu", torch.float32, seed=1)
        ref_model = native_from_hf(hf_cpu, config, "cpu", torch.float32)
        want = NativeScorer(None, model=ref_model, ref_free_mode="sum", device="cpu", log=None).score(seqs)
        res: dict[str, Any] = {}
        for dtype in (torch.float32, torch.bfloat16):
            model = native_from_hf(hf_cpu, config, device, dtype)
            sc = NativeScorer(None, model=model, ref_free_mode="sum", device=device, log=None)
            got = sc.score(seqs)
            name = str(dtype).removeprefix("torch.")
            entry = {"attention": sc.stats["attention_calls"], "finite": bool(np.isfinite(got).all())}
            if dtype == torch.float32:
                rel = np.abs(got - want) / (1 + np.abs(want))
                entry.update(max_rel_diff=float(rel.max()), within_tol=bool(rel.max() <= FP32_TOL))
            else:
                entry.update(decisive_agreement(want, got, guard=1e-3))
                entry["meets_goal"] = entry["agreement"] >= BF16_AGREEMENT_GOAL
            res[name] = entry
        out[arch] = res
    out["kernels"] = kernel_checks(device)
    return out


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


def stage_build(dry: bool) -> dict[str, Any]:
    if dry:
        return {"skipped": "dry run (the package is installed already)"}
    env = {**os.environ, "SKBUILD_CMAKE_DEFINE": "CMAKE_CUDA_ARCHITECTURES=90;RMBF_CUDA=ON"}
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-build-isolation", "--no-deps", "-e", str(REPO)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    if proc.returncode != 0:
        raise RuntimeError(f"build failed: {proc.stderr[-3000:]}")
    return {"command": " ".join(cmd), "cuda_archs": "90"}


def _stage(report: dict[str, Any], name: str, fn: Callable[[], Any]) -> None:
    t0 = time.perf_counter()
    try:
        report[name] = fn()
    except Exception as exc:  # noqa: BLE001 - a failed stage is reported, the others still run
        report[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]}
    report.setdefault("seconds", {})[name] = time.perf_counter() - t0
    print(
        f"[{name}] {time.perf_counter() - t0:.1f} s: {json.dumps(report[name], default=str)[:600]}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prepare", action="store_true", help="copy records + tokenizer into --data (run here)")
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU (CI)")
    ap.add_argument("--data", type=Path, default=DATA_DIR)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--per-domain", type=int, default=None)
    ap.add_argument("--shape", choices=SPEED_SHAPES, default=SHAPE_8B, help="the speed stage's model shape")
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
    _stage(report, "build", lambda: stage_build(dry))
    _stage(
        report,
        "correctness",
        lambda: stage_correctness(device, args.data, max(1, per_domain // 8) if not dry else 1),
    )
    _stage(report, "speed", lambda: stage_speed(device, args.data, per_domain, dry, args.shape))
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.shape == SHAPE_8B else f"-{args.shape}"
    path = args.out / f"gpu-{gpu}{suffix}.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {path}")
    failed = [
        k for k in ("build", "correctness", "speed") if isinstance(report[k], dict) and "error" in report[k]
    ]
    return 1 if failed else 0


def _version(pkg: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
