"""The CUDA attention path on the CPU: the "flash" backend's conditions, plan and LSE merge with a
stand-in varlen_attn that follows FlashAttention's real contract (tests/helpers/varlen_ref.py), and the
"sdpa" backend's kernel check with a stand-in for SDPA's CUDA kernel selection. Each test names
the defect of issue 21 it would have caught."""

from __future__ import annotations

import warnings
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from rmbench_fast.engine.layers import attention as attn
from rmbench_fast.engine.layers.attention import flash, sdpa
from rmbench_fast.engine.layout import PackedLayout
from rmbench_fast.records import TokSeq
from rmbench_fast.scoring.plan import plan_batches
from tests.helpers.varlen_ref import ALL_NAMES, Aux, make_varlen

CPU = torch.device("cpu")


def _groups(specs: list[tuple[int, list[int]]], mask_first: bool, seed: int = 0) -> list[list[TokSeq]]:
    """One record per (prompt tokens, six answer lengths); classifier sequences; with
    `mask_first`, token 0 of every sequence is a masked duplicated BOS (a Llama-3 classifier)."""
    g = torch.Generator().manual_seed(seed)
    groups = []
    for prompt, lens in specs:
        head = torch.randint(3, 90, (prompt,), generator=g).tolist()
        seqs = []
        for n in lens:
            ids = head + torch.randint(3, 90, (n,), generator=g).tolist()
            seqs.append(TokSeq(ids=ids, label_start=len(ids), pool_index=len(ids) - 1, mask_first=mask_first))
        groups.append(seqs)
    return groups


def _layout(specs: list[tuple[int, list[int]]], mask_first: bool = False) -> PackedLayout:
    batches = plan_batches(_groups(specs, mask_first), batch_tokens=1 << 14)
    assert len(batches) == 1
    return PackedLayout.from_batch(batches[0], CPU)


def _qkv(layout: PackedLayout, hq: int = 4, hk: int = 2, d: int = 16, dtype: torch.dtype = torch.float32):  # noqa: ANN202
    g = torch.Generator().manual_seed(layout.n_tokens)
    T = layout.n_tokens
    return tuple(torch.randn(T, h, d, generator=g).to(dtype) for h in (hq, hk, hk))


@pytest.fixture
def on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """The flash backend as on an sm_90 GPU with torch 2.13's varlen_attn, on CPU tensors."""
    monkeypatch.setattr(flash, "_device_ok", lambda q: True)
    monkeypatch.setattr(flash, "_varlen", lambda: (make_varlen(ALL_NAMES), Aux, ALL_NAMES))


def _fp32_flash(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let the stand-in take fp32, so the decomposition is checked at fp32 precision."""
    monkeypatch.setattr(flash, "FLASH_DTYPES", (torch.float32, *flash.FLASH_DTYPES))


def _dense(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: PackedLayout, scale=None
) -> torch.Tensor:  # noqa: ANN001
    return attn.packed_attention(q.double(), k.double(), v.double(), layout, None, "dense", scale=scale)


SPECS = [
    (7, [3, 11, 5, 1, 9, 4]),
    (0, [6, 6, 2, 13, 1, 8]),
    (1, [2, 4, 4, 7, 2, 5]),
    (12, [2, 0, 4, 7, 2, 5]),
]


# --- flash_unfit: what FlashAttention takes -------------------------------------------------------
@pytest.mark.parametrize(
    ("dtype", "d", "hk", "reason"),
    [
        (torch.float32, 16, 2, "dtype"),  # FlashAttention takes fp16/bf16 only (issue 21)
        (torch.bfloat16, 12, 2, "head_dim"),  # not a multiple of 8
        (torch.float16, 264, 2, "head_dim"),  # over 256
        (torch.bfloat16, 16, 3, "heads"),  # Hk does not divide Hq
        (torch.bfloat16, 16, 2, None),
        (torch.float16, 256, 1, None),
    ],
)
def test_flash_falls_back_where_flashattention_cannot_run(
    on_cuda: None, dtype: torch.dtype, d: int, hk: int, reason: str | None
) -> None:
    """fp32 (gpu_check's fp32 correctness models, --dtype float32 on CUDA) and head sizes
    FlashAttention lacks fall back to another backend, and the fallback is counted by reason."""
    layout = _layout(SPECS[:2])
    q, k, v = _qkv(layout, hq=4, hk=hk, d=d, dtype=dtype)
    if reason == "heads":  # no backend computes it; the reason is what matters
        assert flash.flash_unfit(q, layout, None, None, k) == "heads"
        return
    out = attn.packed_attention(q, k, v, layout, None, "flash")
    assert out.shape == q.shape and torch.isfinite(out).all()
    if reason is None:
        assert layout.ran == Counter({"flash": 1})
    else:
        assert layout.ran["flash"] == 0 and layout.ran[f"flash_fallback:{reason}"] == 1


def test_flash_fallback_reasons_off_cuda_and_for_soft_caps() -> None:
    layout = _layout(SPECS[:1])
    q = torch.zeros(layout.n_tokens, 4, 16, dtype=torch.bfloat16)
    assert flash.flash_unfit(q, layout, None, None) == "device"  # a CPU tensor
    assert not flash.flash_applies(q, layout, None, None)


def test_flash_takes_soft_cap_and_window_out(on_cuda: None) -> None:
    layout = _layout(SPECS[:1])
    q = torch.zeros(layout.n_tokens, 4, 16, dtype=torch.bfloat16)
    assert flash.flash_unfit(q, layout, None, 50.0) == "softcap"
    assert flash.flash_unfit(q, layout, 4, None) == "window"
    assert flash.flash_unfit(q, layout, None, None) is None


# --- a masked leading token is its own piece ------------------------------------------------------
@pytest.mark.parametrize("api", ["2.13: seqused_k+gqa", "2.11: gather+expand"])
def test_masked_bos_classifier_reaches_flash(
    on_cuda: None, monkeypatch: pytest.MonkeyPatch, api: str
) -> None:
    """A Llama-3.x classifier (chat template BOS + tokenizer BOS: token 0 masked) runs flash, not
    the per-segment SDPA path (issue 21), and matches the dense rule: records with a prefix,
    without one (each branch's token 0 masked), with a prefix that is only the BOS, and with
    an empty branch."""
    _fp32_flash(monkeypatch)
    if api.startswith("2.11"):
        names = frozenset({"return_aux", "scale", "window_size"})  # torch 2.11's varlen_attn
        monkeypatch.setattr(flash, "_varlen", lambda: (make_varlen(names), Aux, names))
    layout = _layout(SPECS, mask_first=True)
    assert not layout.all_keys_valid
    assert 0 in layout.batch.prefix_len and 1 in layout.batch.prefix_len
    q, k, v = _qkv(layout)
    got = attn.packed_attention(q, k, v, layout, None, "flash")
    assert layout.ran == Counter({"flash": 1})
    torch.testing.assert_close(got.double(), _dense(q, k, v, layout), rtol=2e-5, atol=2e-5)


def test_masked_key_inside_a_piece_falls_back(on_cuda: None) -> None:
    """A masked key that does not start a segment or branch cannot be a piece: sdpa runs."""
    layout = _layout(SPECS[:1])
    layout.batch.key_valid[3] = False  # inside the prefix (not a planner output: a guard)
    layout.all_keys_valid = False
    q, k, v = _qkv(layout, dtype=torch.bfloat16)
    attn.packed_attention(q, k, v, layout, None, "flash")
    assert layout.ran["flash_fallback:masked_keys"] == 1 and layout.ran["flash"] == 0


# --- LSE edge cases ----------------------------------------------------------------------------
def test_record_without_shared_prefix_stays_finite(on_cuda: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """FlashAttention gives a row with no keys LSE = +inf (the stand-in does too): a record with
    no shared prefix beside one with a prefix must not turn NaN in the merge (issue 21)."""
    _fp32_flash(monkeypatch)
    layout = _layout([(0, [5, 9, 2, 7, 3, 6]), (9, [4, 1, 8, 3, 10, 2])])
    q, k, v = _qkv(layout)
    got = attn.packed_attention(q, k, v, layout, None, "flash")
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), _dense(q, k, v, layout), rtol=2e-5, atol=2e-5)


def test_lse_merge_ignores_inf_lse_of_rows_without_keys() -> None:
    """The merge alone: l_B = +inf and o_B = 0 (FlashAttention's empty row) outside the merged rows."""
    T, H, D = 5, 2, 4
    g = torch.Generator().manual_seed(0)
    o_a, o_b = torch.randn(T, H, D, generator=g), torch.zeros(T, H, D)
    l_a, l_b = torch.randn(T, H, generator=g), torch.full((T, H), torch.inf)
    rows = torch.tensor([False, False, True, True, False])[:, None]
    l_b[2:4] = torch.randn(2, H, generator=g)
    o_b[2:4] = torch.randn(2, H, D, generator=g)
    got = flash.lse_merge(o_a, l_a, o_b, l_b, rows)
    w = torch.sigmoid(l_a - l_b)[..., None]
    want = torch.where(rows[..., None], w * o_a + (1 - w) * o_b, o_a)
    torch.testing.assert_close(got, want)


def test_lse_layout_is_read_from_the_op_not_guessed_from_shape(
    on_cuda: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """varlen_attn returns its LSE as [Hq, Tq]. With as many tokens as heads the shape cannot
    tell the layouts apart; the layout comes from the op's contract (issue 21)."""
    assert flash.lse_heads_first() is True  # this torch's op, on meta tensors
    _fp32_flash(monkeypatch)
    layout = _layout([(2, [1, 1, 1, 1, 1, 1])])  # 8 tokens
    T = layout.n_tokens
    q, k, v = _qkv(layout, hq=T, hk=T // 2)
    got = attn.packed_attention(q, k, v, layout, None, "flash")
    assert layout.ran == Counter({"flash": 1})
    torch.testing.assert_close(got.double(), _dense(q, k, v, layout), rtol=2e-5, atol=2e-5)


def test_scale_goes_only_to_an_api_that_takes_it(on_cuda: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """An API without `scale=` gets q pre-scaled instead of a keyword it lacks (issue 21)."""
    _fp32_flash(monkeypatch)
    names = frozenset({"return_aux", "window_size", "enable_gqa", "seqused_k"})
    monkeypatch.setattr(flash, "_varlen", lambda: (make_varlen(names), Aux, names))
    layout = _layout(SPECS[:2])
    q, k, v = _qkv(layout)
    got = attn.packed_attention(q, k, v, layout, None, "flash", scale=0.3)
    torch.testing.assert_close(got.double(), _dense(q, k, v, layout, scale=0.3), rtol=2e-5, atol=2e-5)
    got = attn.packed_attention(q, k, v, layout, None, "flash")  # the default needs no keyword
    torch.testing.assert_close(got.double(), _dense(q, k, v, layout), rtol=2e-5, atol=2e-5)


def test_no_varlen_or_unknown_lse_layout_falls_back(on_cuda: None, monkeypatch: pytest.MonkeyPatch) -> None:
    layout = _layout(SPECS[:1])
    q = torch.zeros(layout.n_tokens, 4, 16, dtype=torch.bfloat16)
    monkeypatch.setattr(flash, "lse_heads_first", lambda: None)  # e.g. ROCm's [B, H, max_q]
    assert flash.flash_unfit(q, layout, None, None) == "api"
    monkeypatch.setattr(flash, "_varlen", lambda: (None, None, frozenset()))
    assert flash.flash_unfit(q, layout, None, None) == "api"


# --- the sdpa path's kernel on CUDA: checked and counted -------------------------------------------
def _cuda_pick(q, k, v, mask, causal, scale, enable_gqa) -> str:  # noqa: ANN001
    """SDPA's CUDA selection for the cases that matter here (torch 2.5 to 2.13, sm_90):
    FlashAttention takes no mask and fp16/bf16 only; the memory-efficient kernel takes a mask
    and fp32 but not grouped-query heads; else math."""
    gqa = k.shape[1] != q.shape[1]
    assert enable_gqa == gqa
    if mask is not None:
        assert mask.dtype == q.dtype, "the pick must see the additive mask SDPA will get"
    if mask is None and q.dtype in (torch.float16, torch.bfloat16):
        return "flash"
    return "math" if gqa else "efficient"


@pytest.fixture
def cuda_sdpa_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sdpa, "_checked", lambda q: True)
    monkeypatch.setattr(sdpa, "sdpa_kernel_choice", _cuda_pick)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sdpa_path_avoids_math_kernel_for_masked_gqa(cuda_sdpa_check: None, dtype: torch.dtype) -> None:
    """A boolean mask with enable_gqa lands on SDPA's math kernel on CUDA (issue 21): the KV heads
    are expanded so the memory-efficient kernel runs, and each call's kernel is counted."""
    layout = _layout(SPECS, mask_first=True)
    q, k, v = _qkv(layout, dtype=dtype)
    got = attn.packed_attention(q, k, v, layout, None, "sdpa")
    assert layout.ran["sdpa"] == 1
    kernels = {n: c for n, c in layout.ran.items() if n.startswith("sdpa_kernel:")}
    assert kernels and "sdpa_kernel:math" not in kernels
    tol = 2e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.double(), _dense(q, k, v, layout), rtol=tol, atol=tol)


def test_sdpa_math_fallback_is_counted_and_warned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sdpa, "_checked", lambda q: True)
    monkeypatch.setattr(sdpa, "sdpa_kernel_choice", lambda *a: "math")
    monkeypatch.setattr(sdpa, "_warned_math", False)
    layout = _layout(SPECS[:2], mask_first=True)
    q, k, v = _qkv(layout)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        attn.packed_attention(q, k, v, layout, None, "sdpa")
        attn.packed_attention(q, k, v, layout, None, "sdpa")
    assert layout.ran["sdpa_kernel:math"] > 0
    assert sum("math kernel" in str(w.message) for w in caught) == 1  # once per process


def test_cuda_sdpa_matches_plain_sdpa() -> None:
    """cuda_sdpa (expanded heads, additive mask) computes what the plain call does."""
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, h, 7, 16, generator=g) for h in (6, 2, 2))
    mask = torch.rand(2, 1, 7, 7, generator=g) > 0.3
    mask[..., 0] = True
    ran: Counter[str] = Counter()
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    got = sdpa.cuda_sdpa(q, k, v, mask=mask, causal=False, scale=None, ran=ran)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert sum(ran.values()) == 1
    assert sdpa.sdpa_kernel_choice(q, k, v, None, True, None, True) in sdpa.SDPA_KERNELS.values()


def test_cpu_sdpa_path_counts_no_kernels() -> None:
    """Off CUDA the SDPA calls are the plain ones, uncounted (the CPU scores stay byte-identical)."""
    layout = _layout(SPECS[:2], mask_first=True)
    q, k, v = _qkv(layout)
    attn.packed_attention(q, k, v, layout, None, "sdpa")
    assert set(layout.ran) == {"sdpa"}
