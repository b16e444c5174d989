"""Attention over a packed shared-prefix batch (SPEC §7, PackedBatch docstring).

The visibility rule, written once as a FlexAttention-style `mask_mod` and used by every path:
    q sees k  iff  seg[q] == seg[k]  and  k <= q (flat order)
                   and (k is in the prefix or br[k] == br[q])
                   and (key_valid[k] or k == q)
                   [and pos[q] - pos[k] < window, for sliding-window layers]
The `k == q` term only matters for a masked duplicated BOS (key_valid False): its own row would
otherwise see nothing and SDPA would return NaN, which then leaks into other rows through
0 * NaN in the value product. Its output is never read (nothing attends to it, it is never a
label or pooled position), so letting it see itself changes no score.

Paths (all exact; they differ only in which pairs they skip computing):
  * "sdpa" (default off-GPU): per segment, causal SDPA over the prefix once, then the six
    branches as a batch of 6, padded to the longest branch, each attending to
    [prefix K/V ; own branch K/V]. Cost ~ P^2 + 6 B (P + B) instead of (P + 6B)^2.
    On the CPU, when no window bites and every key is valid, a faster exact split is used
    instead ("split"): each branch's attention is computed as two parts, all branch rows of a
    segment against the prefix keys (one dense call) and each branch against itself (causal,
    so the kernel skips the upper blocks, and no padding), merged with their log-sum-exps:
        o = (e^{l_A} o_A + e^{l_B} o_B) / (e^{l_A} + e^{l_B}).
  * "flex" (default on CUDA): one FlexAttention call over the whole flat batch with a block
    mask from `mask_mod`, so fully masked 128x128 tiles (other segments, sibling branches)
    are skipped. Compiled on CUDA; if compiling fails (a torch / mask combination inductor
    cannot build), a warning is given once and the run continues on the "sdpa" plan.
  * "dense": the [T, T] mask materialised; the test reference.

Scores are q·k * scale (default head_dim^-0.5). With a soft-cap (Gemma-2) they become
cap * tanh(q·k * scale / cap) before masking; SDPA and the CPU flash op cannot do that, so the
"sdpa" path then runs the same per-segment plan through `_math_attention`, which follows HF's
eager attention op for op (matmul, scale, cap, mask, fp32 softmax cast back, matmul), and flex
applies the cap as a score_mod.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from rmbench_fast.plan import branch_bounds
from rmbench_fast.types import N_SLOTS, PackedBatch

AttnImpl = Literal["sdpa", "flex", "dense"]
MaskMod = Callable[[Any, Any, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class SegmentPlan:
    """Index tensors for one segment on the "sdpa" path (built once per batch and window)."""

    start: int  # flat start of the prefix
    prefix_len: int
    prefix_mask: torch.Tensor | None  # [P, P] bool, None = plain causal
    branch_rows: torch.Tensor  # [nb * Bmax] flat index gathered into each padded branch row
    n_branches: int  # non-empty branches
    bmax: int
    row_valid: torch.Tensor  # [nb * Bmax] bool: a real token (not padding)
    out_idx: torch.Tensor  # [n_valid] flat index of each real branch row
    branch_mask: torch.Tensor  # [nb, 1, Bmax, P + Bmax] bool
    key_rows: torch.Tensor  # [nb * (P + Bmax)] flat index of each branch row's keys


@dataclass
class PackedLayout:
    """Per-token metadata of a PackedBatch on the compute device, plus cached masks."""

    n_tokens: int
    positions: torch.Tensor  # [T] int64
    seg: torch.Tensor  # [T] int32 segment id
    branch: torch.Tensor  # [T] int32 sequence index j, -1 in a prefix
    key_valid: torch.Tensor  # [T] bool
    batch: PackedBatch
    max_span: int  # largest pos[q] - pos[k] possible inside one sequence
    _cache: dict[tuple[str, int | None], Any] = field(default_factory=dict)

    @classmethod
    def from_batch(cls, batch: PackedBatch, device: torch.device) -> PackedLayout:
        T = batch.n_tokens
        seg_off = np.asarray(batch.seg_offsets, dtype=np.int64)
        seg = np.repeat(np.arange(len(seg_off) - 1, dtype=np.int32), np.diff(seg_off))
        starts, ends = branch_bounds(batch)
        branch = np.full(T, -1, dtype=np.int32)
        for j in range(len(starts)):
            branch[starts[j] : ends[j]] = j
        pos = np.asarray(batch.position_ids, dtype=np.int64)

        def t(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=dtype)

        return cls(
            n_tokens=T,
            positions=t(pos, torch.int64),
            seg=t(seg, torch.int32),
            branch=t(branch, torch.int32),
            key_valid=t(np.asarray(batch.key_valid, dtype=bool), torch.bool),
            batch=batch,
            max_span=int(pos.max()) if T else 0,
        )

    def effective_window(self, window: int | None) -> int | None:
        """None when the window cannot bite in this batch (every span < window)."""
        return None if window is None or window > self.max_span else window

    def mask_mod(self, window: int | None) -> MaskMod:
        return make_mask_mod(self.seg, self.branch, self.key_valid, self.positions, window)

    def dense_mask(self, window: int | None) -> torch.Tensor:
        """[T, T] bool: the rule evaluated at every (q, k) pair."""
        key = ("dense", window)
        if key not in self._cache:
            idx = torch.arange(self.n_tokens, device=self.seg.device)
            self._cache[key] = self.mask_mod(window)(None, None, idx[:, None], idx[None, :])
        return self._cache[key]

    def segment_plans(self, window: int | None) -> list[SegmentPlan]:
        key = ("sdpa", window)
        if key not in self._cache:
            self._cache[key] = _build_segment_plans(self, window)
        return self._cache[key]

    def split_plan(self) -> list[tuple[int, int, list[tuple[int, int]]]]:
        """Per segment: (prefix start, prefix length, [(start, end) of each non-empty branch])."""
        key = ("split", None)
        if key not in self._cache:
            b = self.batch
            seg_off = np.asarray(b.seg_offsets, dtype=np.int64)
            starts, ends = branch_bounds(b)
            plan = []
            for si in range(b.n_segments):
                sl = slice(si * N_SLOTS, (si + 1) * N_SLOTS)
                br = [(int(x), int(y)) for x, y in zip(starts[sl], ends[sl]) if y > x]
                plan.append((int(seg_off[si]), int(b.prefix_len[si]), br))
            self._cache[key] = plan
        return self._cache[key]

    def all_keys_valid(self) -> bool:
        key = ("valid", None)
        if key not in self._cache:
            self._cache[key] = bool(self.key_valid.all())
        return self._cache[key]

    def block_mask(self, window: int | None) -> Any:
        key = ("flex", window)
        if key not in self._cache:
            from torch.nn.attention.flex_attention import create_block_mask

            self._cache[key] = create_block_mask(
                self.mask_mod(window), None, None, self.n_tokens, self.n_tokens, device=self.seg.device
            )
        return self._cache[key]


def make_mask_mod(
    seg: torch.Tensor, branch: torch.Tensor, key_valid: torch.Tensor, pos: torch.Tensor, window: int | None
) -> MaskMod:
    """The visibility rule (module docstring) as a FlexAttention mask_mod over flat indices."""

    def mask_mod(b: Any, h: Any, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        same_seq = (seg[q] == seg[k]) & ((branch[k] < 0) | (branch[k] == branch[q]))
        m = same_seq & (k <= q) & (key_valid[k] | (q == k))
        if window is not None:
            m = m & (pos[q] - pos[k] < window)
        return m

    return mask_mod


def _build_segment_plans(layout: PackedLayout, window: int | None) -> list[SegmentPlan]:
    b = layout.batch
    dev = layout.seg.device
    rule = layout.mask_mod(window)
    seg_off = np.asarray(b.seg_offsets, dtype=np.int64)
    br_start, br_end = branch_bounds(b)
    plans = []
    for s in range(b.n_segments):
        a, P = int(seg_off[s]), int(b.prefix_len[s])
        pidx = torch.arange(a, a + P, device=dev)
        prefix_mask = None
        prefix_plain = bool(layout.key_valid[a : a + P].all()) and (window is None or window > P)
        if P and not prefix_plain:
            prefix_mask = rule(None, None, pidx[:, None], pidx[None, :])
        starts = br_start[s * N_SLOTS : (s + 1) * N_SLOTS]
        ends = br_end[s * N_SLOTS : (s + 1) * N_SLOTS]
        lens = ends - starts
        keep = np.nonzero(lens > 0)[0]
        nb, bmax = len(keep), int(lens.max()) if len(lens) else 0
        if nb == 0:
            empty = torch.zeros(0, dtype=torch.long, device=dev)
            plans.append(
                SegmentPlan(a, P, prefix_mask, empty, 0, 0, empty.bool(), empty, empty.bool(), empty)
            )
            continue
        off = np.arange(bmax)
        rows = starts[keep][:, None] + off[None, :]  # [nb, Bmax]
        valid = off[None, :] < lens[keep][:, None]
        rows = np.where(valid, rows, starts[keep][:, None])  # padding re-reads a real token
        rows_t = torch.from_numpy(rows.reshape(-1)).to(dev)
        valid_t = torch.from_numpy(valid.reshape(-1)).to(dev)
        q_idx = rows_t.view(nb, bmax)
        k_idx = torch.cat([pidx[None, :].expand(nb, P), q_idx], dim=1)  # [nb, P + Bmax]
        mask = rule(None, None, q_idx[:, :, None], k_idx[:, None, :])  # [nb, Bmax, P + Bmax]
        vt = valid_t.view(nb, bmax)
        key_real = torch.cat([torch.ones(nb, P, dtype=torch.bool, device=dev), vt], dim=1)
        mask = mask & key_real[:, None, :]
        # padded query rows: see key 0 only, to stay finite; they are dropped afterwards
        pad_rows = ~vt
        mask[:, :, 0] |= pad_rows
        plans.append(
            SegmentPlan(
                a,
                P,
                prefix_mask,
                rows_t,
                nb,
                bmax,
                valid_t,
                rows_t[valid_t],
                mask[:, None],
                k_idx.reshape(-1),
            )
        )
    return plans


def packed_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: PackedLayout,
    window: int | None,
    impl: AttnImpl,
    *,
    scale: float | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Attention under the packed rule: softmax(cap(q·kᵀ * scale) + mask) v.

    q: [T, Hq, D], k/v: [T, Hk, D] -> [T, Hq, D]. scale None: D^-0.5; softcap None: no cap.
    """
    window = layout.effective_window(window)
    if impl == "sdpa":
        if (
            _FLASH_CPU is not None
            and softcap is None
            and q.device.type == "cpu"
            and window is None
            and layout.all_keys_valid()
        ):
            return _sdpa_split(q, k, v, layout.split_plan(), scale)
        return _sdpa_segments(q, k, v, layout.segment_plans(window), scale, softcap)
    if impl == "flex":
        if flex_fallback_reason is None:
            try:
                return _flex(q, k, v, layout.block_mask(window), scale, softcap)
            except FlexCompileError as exc:
                _disable_flex(exc)
        return _sdpa_segments(q, k, v, layout.segment_plans(window), scale, softcap)
    mask = layout.dense_mask(window)
    out = _sdpa(
        q.transpose(0, 1)[None],
        k.transpose(0, 1)[None],
        v.transpose(0, 1)[None],
        mask=mask,
        scale=scale,
        softcap=softcap,
    )  # [1, Hq, T, D]
    return out[0].transpose(0, 1)


def _sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """q: [B, Hq, Lq, D], k/v: [B, Hk, Lk, D], mask: bool broadcastable to [B, Hq, Lq, Lk]."""
    if softcap is None:
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, scale=scale, enable_gqa=True
        )
    return _math_attention(q, k, v, mask=mask, causal=causal, scale=scale, softcap=softcap)


def _math_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: torch.Tensor | None,
    causal: bool,
    scale: float | None,
    softcap: float | None,
) -> torch.Tensor:
    """HF eager attention, op for op: w = (q kᵀ) * scale; w = tanh(w / cap) * cap; masked keys
    -> -inf; softmax in fp32, cast to q's dtype; w v. Shapes as `_sdpa`; every row must see a key."""
    n_rep = q.shape[1] // k.shape[1]
    if n_rep > 1:
        k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)
    w = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if softcap is not None:
        w = torch.tanh(w / softcap) * softcap
    if causal:
        Lq, Lk = w.shape[-2], w.shape[-1]
        mask = torch.ones(Lq, Lk, dtype=torch.bool, device=w.device).tril(Lk - Lq)
    if mask is not None:
        w = w.masked_fill(~mask, float("-inf"))
    w = torch.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(w, v)


# The CPU flash-attention op returns the log-sum-exp of each row next to the output, which the
# split path needs to merge two partial attentions exactly. Missing in a torch build -> no split.
_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _heads_first(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[L, H, D] -> [1, H * n_rep, L, D], each KV head repeated n_rep times (HF repeat_kv)."""
    x = x.transpose(0, 1)
    if n_rep > 1:
        x = x.repeat_interleave(n_rep, dim=0)
    return x[None]


def _attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, n_rep: int, scale: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """q: [Lq, Hq, D], k/v: [Lk, Hk, D] -> (out [Lq, Hq, D] fp32, lse [Lq, Hq] fp32)."""
    out, lse = _FLASH_CPU(
        _heads_first(q, 1), _heads_first(k, n_rep), _heads_first(v, n_rep), 0.0, causal, scale=scale
    )
    return out[0].transpose(0, 1).float(), lse[0].transpose(0, 1)


def _sdpa_split(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: list[tuple[int, int, list[tuple[int, int]]]],
    scale: float | None = None,
) -> torch.Tensor:
    """The "split" path (module doc). q: [T, Hq, D], k/v: [T, Hk, D] -> [T, Hq, D]."""
    out = torch.empty_like(q)
    n_rep = q.shape[1] // k.shape[1]
    for a, P, branches in plan:
        if P:
            pre = _attend(q[a : a + P], k[a : a + P], v[a : a + P], True, n_rep, scale)[0]
            out[a : a + P] = pre.to(q.dtype)
        if not branches:
            continue
        lo, hi = branches[0][0], branches[-1][1]  # a segment's branches are contiguous
        if P:
            # [Nb, Hq, D], [Nb, Hq]
            o_a, l_a = _attend(q[lo:hi], k[a : a + P], v[a : a + P], False, n_rep, scale)
        for s0, s1 in branches:
            o_b, l_b = _attend(q[s0:s1], k[s0:s1], v[s0:s1], True, n_rep, scale)
            if P:
                r = slice(s0 - lo, s1 - lo)
                m = torch.maximum(l_a[r], l_b)
                w_a, w_b = torch.exp(l_a[r] - m)[..., None], torch.exp(l_b - m)[..., None]
                o_b = (o_a[r] * w_a + o_b * w_b) / (w_a + w_b)
            out[s0:s1] = o_b.to(q.dtype)
    return out


def _sdpa_segments(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plans: list[SegmentPlan],
    scale: float | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    out = torch.empty_like(q)
    Hq, D = q.shape[1], q.shape[2]
    for p in plans:
        a, P = p.start, p.prefix_len
        # prefix: [1, H, P, D]
        if P:
            kp, vp = k[a : a + P].transpose(0, 1), v[a : a + P].transpose(0, 1)
            qp = q[a : a + P].transpose(0, 1)
            if p.prefix_mask is None:
                o = _sdpa(qp[None], kp[None], vp[None], causal=True, scale=scale, softcap=softcap)
            else:
                o = _sdpa(qp[None], kp[None], vp[None], mask=p.prefix_mask, scale=scale, softcap=softcap)
            out[a : a + P] = o[0].transpose(0, 1)
        if not p.n_branches:
            continue
        nb, bm = p.n_branches, p.bmax
        # branches: q [nb, Hq, Bmax, D]; keys [nb, Hk, P + Bmax, D]
        qb = q[p.branch_rows].view(nb, bm, Hq, D).transpose(1, 2)
        # one gather builds [prefix ; own branch] keys for every branch row
        kk = k[p.key_rows].view(nb, P + bm, -1, D).transpose(1, 2)
        vv = v[p.key_rows].view(nb, P + bm, -1, D).transpose(1, 2)
        o = _sdpa(qb, kk, vv, mask=p.branch_mask, scale=scale, softcap=softcap)
        o = o.transpose(1, 2).reshape(nb * bm, Hq, D)
        out[p.out_idx] = o[p.row_valid]
    return out


_compiled_flex: Any = None
# Set when compiling FlexAttention failed in this process: "flex" then runs the per-segment
# "sdpa" plan (exact, slower) for the rest of the process. Read by the runner for its stats.
flex_fallback_reason: str | None = None
# Compile FlexAttention on the CPU too (tests: traces the same mask_mod / score_mod through
# dynamo and inductor as on CUDA; the CPU default is eager flex, a reference-speed path).
compile_flex_on_cpu = False


class FlexCompileError(RuntimeError):
    """torch.compile could not build the FlexAttention kernel for this mask / score_mod."""


def _compile_errors() -> tuple[type[BaseException], ...]:
    """The exception types torch.compile raises for a failed build (they moved across versions)."""
    import torch._dynamo.exc as dynamo_exc

    found: list[type[BaseException]] = [dynamo_exc.BackendCompilerFailed, dynamo_exc.Unsupported]
    try:
        from torch._inductor.exc import InductorError

        found.append(InductorError)
    except ImportError:  # pragma: no cover - older torch
        pass
    return tuple(found)


def _disable_flex(exc: BaseException) -> None:
    global flex_fallback_reason
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    flex_fallback_reason = f"{type(exc).__name__}: {first}"[:300]
    warnings.warn(
        f"FlexAttention failed to compile ({flex_fallback_reason}); using the per-segment SDPA path "
        "for the rest of this run (same scores, slower)",
        RuntimeWarning,
        stacklevel=3,
    )


def _flex(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_mask: Any,
    scale: float | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """FlexAttention over the whole flat batch; compiled on CUDA, eager (reference speed) elsewhere."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    fn = flex_attention
    compiled = q.device.type == "cuda" or compile_flex_on_cpu
    if compiled:
        if _compiled_flex is None:
            _compiled_flex = torch.compile(flex_attention, dynamic=True)
        fn = _compiled_flex
    try:
        out = fn(
            q.transpose(0, 1)[None],
            k.transpose(0, 1)[None],
            v.transpose(0, 1)[None],
            block_mask=block_mask,
            score_mod=None if softcap is None else _softcap_mod(softcap),
            scale=scale,
            enable_gqa=True,
        )
    except _compile_errors() as exc:
        if not compiled:
            raise
        raise FlexCompileError(str(exc)) from exc
    return out[0].transpose(0, 1)


def _softcap_mod(cap: float) -> Callable[..., torch.Tensor]:
    """FlexAttention score_mod: the (already scaled) score -> cap * tanh(score / cap)."""

    def score_mod(score: torch.Tensor, b: Any, h: Any, q: Any, k: Any) -> torch.Tensor:
        return torch.tanh(score / cap) * cap

    return score_mod
