"""Per-token log-probs from logits: the one dispatch point for the device kernels (SPEC §5).

    token_logprobs(logits, labels, ref_logits)    kernel A: log_softmax + gather, and with a
                                                  reference model the fused ratio (HAS_REF)
    linear_token_logprobs(hidden, weight, labels) kernel B: the LM head fused in, logits never
                                                  materialised (kept in fp32)
`backend` picks the implementation:
    "auto"   Triton on CUDA tensors (CUDA C++ if triton is missing), the torch reference on CPU
    "triton" the Triton kernels (CPU tensors run Triton's interpreter: needs TRITON_INTERPRET=1
             set before triton is first imported; slow, for tests)
    "cuda"   the CUDA C++ kernel (rmbench_fast._cuda), logits input only
    "torch"  fp32 log_softmax + gather (materializes [T, V] fp32)

Precision (SPEC §5 asks us to document it): logits are read in their own dtype (bf16/fp16/fp32)
and upcast to fp32; log-sum-exp and per-token log-probs are fp32; the fused linear kernel keeps the
logits themselves in fp32 (fp32 accumulation of hidden @ weight.T). Per-sequence sums are the
business of `rmbench_fast.scoring.rewards` (float64).

Ignored tokens (label == -100): per-token outputs are exactly 0.0 there.

Modules that launch kernels are imported lazily, so importing this module never imports triton
(that would lock Triton's interpreter mode for the whole process, see kernels/_triton_util.py).
"""

from __future__ import annotations

from typing import Literal

import torch

from rmbench_fast.kernels.reference import IGNORE_INDEX, dpo_logratio_ref, linear_logratio_ref

Backend = Literal["auto", "triton", "cuda", "torch"]
_BACKENDS = ("auto", "triton", "cuda", "torch")
TokenLogprobs = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]

# dtype codes shared with kernels/cuda/dpo_logratio.h (RMBF_DTYPE_*, RMBF_LABEL_*).
CUDA_DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
CUDA_LABEL_CODES = {torch.int64: 0, torch.int32: 1}


def _check_backend(backend: str) -> None:
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")


def check_label_range(labels: torch.Tensor, V: int, ignore_index: int = IGNORE_INDEX) -> None:
    """Reject labels outside [0, V) ∪ {ignore_index} (one device sync): a kernel would give NaN.

    The engine never calls this per batch: its planner range-checks every id on the host.
    """
    bad = ((labels < 0) | (labels >= V)) & (labels != ignore_index)
    if bool(bad.any()):
        t = int(bad.nonzero()[0, 0])
        raise ValueError(f"labels[{t}] = {int(labels[t])} is outside [0, {V}) and not {ignore_index}")


def _have_triton() -> bool:
    try:
        # optional dependency: triton (the [gpu] extra)
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _resolve(backend: str, device: torch.device, *, cuda_ok: bool = True) -> str:
    _check_backend(backend)
    if backend != "auto":
        return backend
    if device.type != "cuda":
        return "torch"
    if _have_triton():
        return "triton"
    return "cuda" if cuda_ok else "torch"


def token_logprobs(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ref_logits: torch.Tensor | None = None,
    *,
    backend: Backend = "auto",
    ignore_index: int = IGNORE_INDEX,
    check: bool = True,
) -> TokenLogprobs:
    """Kernel A: (logp, ref_logp, diff), each [T] fp32 (the last two None without ref_logits).

        logp[t] = log_softmax(logits[t].float())[labels[t]]   (0.0 where labels[t] == ignore_index)
        ref_logp[t] likewise from ref_logits;  diff[t] = logp[t] − ref_logp[t]
    logits, ref_logits: [T, V] bf16/fp16/fp32 (any strides, same dtype); labels: [T] int.
    One pass reads both logits when a reference is given (the fused DPO ratio).
    `check=False` skips the label range check (and its device sync) for pre-checked labels.
    """
    _check_backend(backend)
    if check:
        check_label_range(labels, logits.shape[-1], ignore_index)
    which = _resolve(backend, logits.device)
    if which == "torch":
        return dpo_logratio_ref(logits, ref_logits, labels, ignore_index=ignore_index)
    if which == "triton":
        # optional dependency: triton (the [gpu] extra)
        from rmbench_fast.kernels.dpo_logratio import dpo_logratio_triton

        return dpo_logratio_triton(logits, ref_logits, labels, ignore_index=ignore_index)
    return cuda_dpo_logratio(logits, ref_logits, labels, ignore_index=ignore_index)


def linear_token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    softcap: float | None = None,
    *,
    backend: Backend = "auto",
    ignore_index: int = IGNORE_INDEX,
    check: bool = True,
) -> torch.Tensor:
    """Kernel B: out[t] = log_softmax(z[t])[labels[t]] with z = cap·tanh((hidden @ weight.T)/cap) in fp32.

    hidden: [T, H], weight: [V, H] (same dtype), labels: [T]; returns [T] fp32, 0.0 where ignored.
    The fused kernel never materializes z [T, V]; "torch" does (fp32). No CUDA C++ version:
    backend="cuda" raises.
    """
    _check_backend(backend)
    if check:
        check_label_range(labels, weight.shape[0], ignore_index)
    which = _resolve(backend, hidden.device, cuda_ok=False)
    if which == "cuda":
        raise ValueError("linear_token_logprobs has no CUDA C++ backend; use 'triton' or 'torch'")
    if which == "torch":
        return linear_logratio_ref(hidden, weight, labels, softcap=softcap, ignore_index=ignore_index)
    # optional dependency: triton (the [gpu] extra)
    from rmbench_fast.kernels.linear_logratio import linear_logratio_triton

    return linear_logratio_triton(hidden, weight, labels, softcap=softcap, ignore_index=ignore_index)


def cuda_dpo_logratio(
    policy_logits: torch.Tensor,
    ref_logits: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Kernel A through the CUDA C++ module: raw pointers + strides + the current stream cross over.

    Same contract as kernels.dpo_logratio.dpo_logratio_triton. The C++ side re-checks every
    argument (dtype codes, shapes, strides, null and device pointers) before launching.
    """
    try:
        from rmbench_fast import _cuda  # optional dependency: the CUDA build (rmbench_fast._cuda)
    except ImportError as e:
        raise RuntimeError(f"backend='cuda' needs rmbench_fast._cuda (built with nvcc): {e}") from e
    if policy_logits.dim() != 2:
        raise ValueError(f"policy_logits must be [T, V], got {tuple(policy_logits.shape)}")
    if policy_logits.dtype not in CUDA_DTYPE_CODES or labels.dtype not in CUDA_LABEL_CODES:
        raise ValueError(f"unsupported dtypes: logits {policy_logits.dtype}, labels {labels.dtype}")
    if ref_logits is not None and ref_logits.dtype != policy_logits.dtype:
        raise ValueError(f"ref_logits dtype {ref_logits.dtype} != policy_logits dtype {policy_logits.dtype}")
    T, V = policy_logits.shape
    dev = policy_logits.device
    out = torch.empty(T, dtype=torch.float32, device=dev)
    out_ref = torch.empty(T, dtype=torch.float32, device=dev) if ref_logits is not None else None
    out_diff = torch.empty(T, dtype=torch.float32, device=dev) if ref_logits is not None else None
    ref = ref_logits if ref_logits is not None else policy_logits
    stream = torch.cuda.current_stream(dev).cuda_stream if dev.type == "cuda" else 0
    _cuda.dpo_logratio(
        policy_logits.data_ptr(),
        ref_logits.data_ptr() if ref_logits is not None else 0,
        labels.data_ptr(),
        out.data_ptr(),
        out_ref.data_ptr() if out_ref is not None else 0,
        out_diff.data_ptr() if out_diff is not None else 0,
        CUDA_DTYPE_CODES[policy_logits.dtype],
        CUDA_LABEL_CODES[labels.dtype],
        T,
        V,
        ref.shape[0],
        ref.shape[1] if ref.dim() == 2 else -1,
        labels.shape[0],
        policy_logits.stride(0),
        policy_logits.stride(1),
        ref.stride(0),
        ref.stride(1),
        labels.stride(0),
        ignore_index,
        stream,
    )
    return out, out_ref, out_diff
