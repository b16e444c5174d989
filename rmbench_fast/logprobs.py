"""Label log-probs and DPO implicit rewards (SPEC §5): the one dispatch point for every backend.

The engine and the reference backend both call these functions; `backend` picks the kernel:
    "auto"   Triton on CUDA tensors (CUDA C++ if triton is missing), the torch reference on CPU
    "triton" the Triton kernels (CPU tensors run Triton's interpreter: needs TRITON_INTERPRET=1
             set before triton is first imported; slow, for tests)
    "cuda"   the CUDA C++ kernel (rmbench_fast._cuda), logits input only
    "torch"  fp32 log_softmax + gather (materializes [T, V] fp32)

Precision (SPEC §5 asks us to document it): logits are read in their own dtype (bf16/fp16/fp32)
and upcast to fp32; log-sum-exp and per-token log-probs are fp32; the fused linear kernel keeps the
logits themselves in fp32 (fp32 accumulation of hidden @ weight.T). Per-segment sums, means and
norms are accumulated in float64, so the result does not depend on summation order to fp32
precision (atomics on GPU reorder additions; float64 makes that invisible at fp32 scale).

Ignored tokens (label == -100): per-token outputs are exactly 0.0 there; segment statistics skip
them by mask. A segment with no scored token has sum 0, norm 0 and mean NaN: the official
`get_batch_logps(average_log_prob=True)` computes `(logps * mask).sum(-1) / mask.sum(-1)` = 0/0 =
NaN in that case, and we keep that value rather than invent one. (In RM-Bench every answer has at
least its appended EOS, SPEC §5 step 3-4, so this does not arise from the real pipeline.)

Modules that launch kernels are imported lazily, so importing this module never imports triton
(that would lock Triton's interpreter mode for the whole process, see kernels/_triton_util.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from .kernels.reference import IGNORE_INDEX, dpo_logratio_ref, linear_logratio_ref

Backend = Literal["auto", "triton", "cuda", "torch"]
RewardMode = Literal["ref", "avg", "sum", "norm"]
_BACKENDS = ("auto", "triton", "cuda", "torch")

# dtype codes shared with csrc/cuda/dpo_logratio.h (RMBF_DTYPE_*, RMBF_LABEL_*).
CUDA_DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
CUDA_LABEL_CODES = {torch.int64: 0, torch.int32: 1}


@dataclass
class LogRatioOut:
    """Per-token log-probs and per-segment statistics of one batch.

    Token tensors are [T] fp32 (0.0 at ignored tokens); segment tensors are [S] float64 / int64.
        logp[t]      = log π(y_t)                      ref_logp[t] = log π_ref(y_t)  (None w/o ref)
        diff[t]      = logp[t] − ref_logp[t]           (None without ref)
        seg_sum[s]   = Σ_{t∈s} logp[t]                 seg_ref_sum[s] = Σ_{t∈s} ref_logp[t]
        seg_count[s] = #{t ∈ s : y_t ≠ −100}
        seg_mean[s]  = seg_sum[s] / seg_count[s]      (NaN when seg_count[s] == 0, as official)
        seg_norm[s]  = sqrt(Σ_{t∈s} logp[t]²)          (‖logp‖₂ ≥ 0)
    """

    logp: torch.Tensor
    ref_logp: torch.Tensor | None
    diff: torch.Tensor | None
    seg_sum: torch.Tensor
    seg_ref_sum: torch.Tensor | None
    seg_mean: torch.Tensor
    seg_norm: torch.Tensor
    seg_count: torch.Tensor


def _check_backend(backend: str) -> None:
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")


def _check_labels(labels: torch.Tensor, V: int, ignore_index: int) -> None:
    """Reject labels outside [0, V) ∪ {ignore_index} (one device sync): a kernel would give NaN."""
    bad = ((labels < 0) | (labels >= V)) & (labels != ignore_index)
    if bool(bad.any()):
        t = int(bad.nonzero()[0, 0])
        raise ValueError(f"labels[{t}] = {int(labels[t])} is outside [0, {V}) and not {ignore_index}")


def _have_triton() -> bool:
    try:
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


def _token_logprobs(
    policy_logits: torch.Tensor,
    ref_logits: torch.Tensor | None,
    labels: torch.Tensor,
    backend: str,
    ignore_index: int,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(logp, ref_logp, diff), each [T] fp32, from the chosen backend (already validated)."""
    which = _resolve(backend, policy_logits.device)
    if which == "torch":
        return dpo_logratio_ref(policy_logits, ref_logits, labels, ignore_index=ignore_index)
    if which == "triton":
        from .kernels.dpo_logratio import dpo_logratio_triton

        return dpo_logratio_triton(policy_logits, ref_logits, labels, ignore_index=ignore_index)
    return cuda_dpo_logratio(policy_logits, ref_logits, labels, ignore_index=ignore_index)


def label_logprobs(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    backend: Backend = "auto",
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """out[t] = log_softmax(logits[t].float())[labels[t]], 0.0 where labels[t] == ignore_index.

    logits: [T, V] bf16/fp16/fp32 (any strides); labels: [T] int; returns [T] fp32.
    """
    _check_labels(labels, logits.shape[-1], ignore_index)
    return _token_logprobs(logits, None, labels, backend, ignore_index)[0]


def linear_label_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    softcap: float | None = None,
    *,
    backend: Backend = "auto",
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """out[t] = log_softmax(z[t])[labels[t]] with z = cap·tanh((hidden @ weight.T)/cap) in fp32.

    hidden: [T, H], weight: [V, H] (same dtype), labels: [T]; returns [T] fp32, 0.0 where ignored.
    The fused kernel never materializes z [T, V]; "torch" does (fp32). No CUDA C++ version:
    backend="cuda" raises.
    """
    _check_labels(labels, weight.shape[0], ignore_index)
    which = _resolve(backend, hidden.device, cuda_ok=False)
    if which == "cuda":
        raise ValueError("linear_label_logprobs has no CUDA C++ backend; use 'triton' or 'torch'")
    if which == "torch":
        return linear_logratio_ref(hidden, weight, labels, softcap=softcap, ignore_index=ignore_index)
    from .kernels.linear_logratio import linear_logratio_triton

    return linear_logratio_triton(hidden, weight, labels, softcap=softcap, ignore_index=ignore_index)


def segment_stats(
    logp: torch.Tensor, valid: torch.Tensor, seg_ids: torch.Tensor, n_segments: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sum, mean, norm, count) per segment, [S] float64 (count int64), of logp [T] over valid [T].

    index_add_ in float64: the reduction is O(T) and tiny next to the [T, V] read, so a dedicated
    kernel would not pay off; float64 hides the summation-order nondeterminism of GPU atomics.
    """
    seg = torch.where(valid, seg_ids.long(), 0)  # [T]; ignored tokens add 0 to segment 0
    x = torch.where(valid, logp.double(), 0.0)  # [T]
    zeros = torch.zeros(n_segments, dtype=torch.float64, device=logp.device)
    total = zeros.clone().index_add_(0, seg, x)  # [S]
    sq = zeros.clone().index_add_(0, seg, x * x)  # [S]
    count = torch.zeros(n_segments, dtype=torch.int64, device=logp.device).index_add_(0, seg, valid.long())
    mean = total / count  # 0/0 -> NaN, as the official average_log_prob
    return total, mean, sq.sqrt(), count


def dpo_logratio(
    policy_logits: torch.Tensor,
    ref_logits: torch.Tensor | None,
    labels: torch.Tensor,
    seg_ids: torch.Tensor,
    n_segments: int,
    *,
    backend: Backend = "auto",
    ignore_index: int = IGNORE_INDEX,
) -> LogRatioOut:
    """Token log-probs of policy (and reference) and their per-segment statistics.

    policy_logits, ref_logits: [T, V] (row t predicts labels[t]; the caller shifts by one);
    labels: [T] int (ignore_index = not scored); seg_ids: [T] int in [0, n_segments) for scored
    tokens (any value for ignored ones). See LogRatioOut for the formulas.
    """
    T, V = policy_logits.shape
    if labels.shape != (T,) or seg_ids.shape != (T,):
        raise ValueError(
            f"labels {tuple(labels.shape)} and seg_ids {tuple(seg_ids.shape)} must be [T] = [{T}]"
        )
    _check_labels(labels, V, ignore_index)
    valid = labels != ignore_index  # [T]
    if bool((valid & ((seg_ids < 0) | (seg_ids >= n_segments))).any()):
        raise ValueError(f"seg_ids of scored tokens must be in [0, {n_segments})")
    logp, ref_logp, diff = _token_logprobs(policy_logits, ref_logits, labels, backend, ignore_index)
    s, mean, norm, count = segment_stats(logp, valid, seg_ids, n_segments)
    ref_sum = None
    if ref_logp is not None:
        ref_sum = segment_stats(ref_logp, valid, seg_ids, n_segments)[0]
    return LogRatioOut(logp, ref_logp, diff, s, ref_sum, mean, norm, count)


def segment_rewards(out: LogRatioOut, mode: RewardMode) -> torch.Tensor:
    """The DPO implicit reward per segment, [S] float64 (SPEC §5).

        "ref":  r[s] = Σ_{t∈s} log π(y_t) − Σ_{t∈s} log π_ref(y_t)   (β omitted: rank-invariant)
        "avg":  r[s] = (1/n_s) Σ_{t∈s} log π(y_t)                    (NaN if n_s == 0, as official)
        "sum":  r[s] = Σ_{t∈s} log π(y_t)
        "norm": r[s] = −sqrt(Σ_{t∈s} log π(y_t)²)
    With a reference model only "ref" is meaningful (SPEC: the ref-free mode is then ignored), so
    the caller passes "ref" whenever out.seg_ref_sum is present.
    """
    if mode == "ref":
        if out.seg_ref_sum is None:
            raise ValueError("mode 'ref' needs reference log-probs (dpo_logratio with ref_logits)")
        return out.seg_sum - out.seg_ref_sum
    if mode == "avg":
        return out.seg_mean
    if mode == "sum":
        return out.seg_sum
    if mode == "norm":
        return -out.seg_norm
    raise ValueError(f"mode must be 'ref', 'avg', 'sum' or 'norm', got {mode!r}")


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
        from . import _cuda
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
