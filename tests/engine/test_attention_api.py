"""Every version-branched call in rmbench_fast/engine/layers/attention/ binds against the installed
torch and against torch 2.11's signatures (the H200 we can reach has torch 2.11 + triton 3.6;
CI has 2.13). Issue 21.

Each backend runs once with spies around the torch functions it calls; a spy binds the call's
arguments to (a) the installed function's signature or op schema and (b) torch 2.11.0's,
recorded below from a torch 2.11.0 install, then calls through. The "flash" backend runs on
meta tensors, where varlen_attn runs its fake kernel (its own shape contract), so the real
custom op checks the call on a machine without a GPU. Run it under another torch with
`PYTHONPATH=. python -m pytest tests/engine/test_attention_api.py` from that torch's venv.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from rmbench_fast.engine.layers import attention as attn
from rmbench_fast.engine.layers.attention import flash, sdpa, split
from rmbench_fast.engine.layout import PackedLayout
from rmbench_fast.records import TokSeq
from rmbench_fast.scoring.plan import plan_batches


# --- torch 2.11.0's signatures (inspect.signature / the op schemas of a 2.11.0 install) ---------
def varlen_attn_2_11(
    query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None, window_size=(-1, -1)
):  # noqa: ANN001, ANN201
    """torch.nn.attention.varlen.varlen_attn in 2.11.0: no enable_gqa, no seqused_k."""


def flex_attention_2_11(
    query,
    key,
    value,
    score_mod=None,
    block_mask=None,
    scale=None,
    enable_gqa=False,
    return_lse=False,
    kernel_options=None,
    *,
    return_aux=None,
):  # noqa: ANN001, ANN201
    """torch.nn.attention.flex_attention.flex_attention in 2.11.0."""


def create_block_mask_2_11(mask_mod, B, H, Q_LEN, KV_LEN, device=None, BLOCK_SIZE=128, _compile=False):  # noqa: ANN001, ANN201, N803
    """torch.nn.attention.flex_attention.create_block_mask in 2.11.0."""


def scaled_dot_product_attention_2_11(
    query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False
):  # noqa: ANN001, ANN201
    """F.scaled_dot_product_attention in 2.11.0 (its docstring's signature; it is a builtin)."""


SCHEMAS_2_11 = {
    "_scaled_dot_product_flash_attention_for_cpu": (
        "aten::_scaled_dot_product_flash_attention_for_cpu(Tensor query, Tensor key, Tensor value, "
        "float dropout_p=0., bool is_causal=False, *, Tensor? attn_mask=None, float? scale=None) "
        "-> (Tensor output, Tensor logsumexp)"
    ),
    "_fused_sdp_choice": (
        "aten::_fused_sdp_choice(Tensor query, Tensor key, Tensor value, Tensor? attn_mask=None, "
        "float dropout_p=0., bool is_causal=False, *, float? scale=None, bool enable_gqa=False) -> int"
    ),
    # What varlen_attn calls on CUDA in 2.11 (not called by the engine; kept to see it change).
    "_flash_attention_forward": (
        "aten::_flash_attention_forward(Tensor query, Tensor key, Tensor value, Tensor? cum_seq_q, "
        "Tensor? cum_seq_k, SymInt max_q, SymInt max_k, float dropout_p, bool is_causal, "
        "bool return_debug_mask, *, float? scale=None, SymInt? window_size_left=None, "
        "SymInt? window_size_right=None, Tensor? seqused_k=None, Tensor? alibi_slopes=None) -> "
        "(Tensor output, Tensor softmax_logsumexp, Tensor rng_state, Tensor unused, Tensor debug_attn_mask)"
    ),
}


def bind_schema(schema: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Raise TypeError unless (args, kwargs) bind to an op schema as the dispatcher binds them."""
    params = list(schema.arguments)
    positional = [a for a in params if not a.kwarg_only]
    if len(args) > len(positional):
        raise TypeError(f"{schema.name}: {len(args)} positional arguments, takes {len(positional)}")
    names = {a.name for a in params}
    for name in kwargs:
        if name not in names:
            raise TypeError(f"{schema.name}: no argument {name!r}")
        if name in {a.name for a in positional[: len(args)]}:
            raise TypeError(f"{schema.name}: {name!r} given twice")
    given = {a.name for a in positional[: len(args)]} | set(kwargs)
    for a in params:
        if a.name not in given and not a.has_default_value():
            raise TypeError(f"{schema.name}: {a.name!r} missing")


def _signature(fn: Callable[..., Any]) -> inspect.Signature:
    try:
        return inspect.signature(fn)
    except ValueError:  # a builtin: F.scaled_dot_product_attention
        return inspect.signature(scaled_dot_product_attention_2_11)


class Spy:
    """Wraps `real`: each call binds to every signature/schema in `checks`, then runs `real`."""

    def __init__(self, real: Callable[..., Any], *checks: inspect.Signature | Any) -> None:
        self.real, self.checks, self.calls = real, checks, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        for check in self.checks:
            if isinstance(check, inspect.Signature):
                check.bind(*args, **kwargs)
            else:
                bind_schema(check, args, kwargs)
        self.calls += 1
        return self.real(*args, **kwargs)


def _layout(device: torch.device, mask_first: bool = True) -> PackedLayout:
    g = torch.Generator().manual_seed(0)
    groups = []
    for prompt, lens in [(5, [3, 4, 1, 6, 2, 2]), (0, [2, 3, 3, 1, 4, 2]), (1, [2, 0, 3, 1, 1, 2])]:
        head = torch.randint(3, 90, (prompt,), generator=g).tolist()
        seqs = []
        for n in lens:
            ids = head + torch.randint(3, 90, (n,), generator=g).tolist()
            seqs.append(TokSeq(ids=ids, label_start=len(ids), pool_index=len(ids) - 1, mask_first=mask_first))
        groups.append(seqs)
    return PackedLayout.from_batch(plan_batches(groups, batch_tokens=4096)[0], device)


def _qkv(T: int, device: str, dtype: torch.dtype = torch.bfloat16) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    return tuple(torch.randn(T, h, 16, generator=g).to(device=device, dtype=dtype) for h in (4, 2, 2))


def _live_varlen() -> tuple[Any, Any]:
    try:
        from torch.nn.attention.varlen import AuxRequest, varlen_attn
    except ImportError:
        pytest.skip(f"torch {torch.__version__} has no varlen_attn")
    return varlen_attn, AuxRequest


# --- flash: varlen_attn ------------------------------------------------------------------------
VARLEN_2_11_NAMES = frozenset(p for p in inspect.signature(varlen_attn_2_11).parameters)


@pytest.mark.parametrize("api", ["installed", "2.11"])
def test_flash_calls_bind_to_varlen_attn(monkeypatch: pytest.MonkeyPatch, api: str) -> None:
    """The flash backend's calls, on meta tensors through the real op's fake kernel: with the
    installed varlen_attn's keyword set, and with 2.11's (no enable_gqa / seqused_k: the KV
    heads expanded, the prefix keys gathered), each also bound to 2.11's signature."""
    real, aux = _live_varlen()
    live = inspect.signature(real)
    names = frozenset(live.parameters) if api == "installed" else VARLEN_2_11_NAMES
    checks = (live,) if api == "installed" else (live, inspect.signature(varlen_attn_2_11))
    spy = Spy(real, *checks)
    monkeypatch.setattr(flash, "_varlen", lambda: (spy, aux, names))
    layout = _layout(torch.device("meta"))
    q, k, v = _qkv(layout.n_tokens, "meta")
    for scale in (None, 0.2):
        out = flash.flash_attention(q, k, v, layout, scale)
        assert out.shape == q.shape and out.dtype == q.dtype
    assert spy.calls == 4  # A and B, twice


def test_varlen_lse_layout_is_heads_first() -> None:
    """The layout flash relies on, from the installed op (2.11 and 2.13 alike: [Hq, Tq])."""
    _live_varlen()
    assert flash.lse_heads_first() is True
    assert flash.flash_available()


def test_installed_varlen_takes_no_keyword_2_11_lacks_or_flash_adapts() -> None:
    """What 2.11 lacks, flash passes only where the installed API has it (`_call`'s branches)."""
    real, _ = _live_varlen()
    live = set(inspect.signature(real).parameters)
    assert VARLEN_2_11_NAMES <= live | {"scale"}
    assert {"return_aux", "window_size"} <= VARLEN_2_11_NAMES


# --- sdpa: SDPA and its kernel check ----------------------------------------------------------
def test_sdpa_calls_bind(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plain CPU call, the CUDA path's kernel check and its SDPA call (run on meta tensors),
    against the installed builtins/schemas and 2.11's."""
    fused = torch.ops.aten._fused_sdp_choice.default._schema
    choice = Spy(torch._fused_sdp_choice, fused, torch._C.parse_schema(SCHEMAS_2_11["_fused_sdp_choice"]))
    call = Spy(F.scaled_dot_product_attention, inspect.signature(scaled_dot_product_attention_2_11))
    monkeypatch.setattr(torch, "_fused_sdp_choice", choice)
    monkeypatch.setattr(F, "scaled_dot_product_attention", call)
    monkeypatch.setattr(split, "FLASH_CPU", None)  # the padded per-segment path on the CPU
    layout = _layout(torch.device("cpu"))
    q, k, v = _qkv(layout.n_tokens, "cpu", torch.float32)
    attn.packed_attention(q, k, v, layout, None, "sdpa")
    n_cpu = call.calls
    assert n_cpu > 0 and choice.calls == 0
    monkeypatch.setattr(sdpa, "_checked", lambda q: True)
    monkeypatch.setattr(sdpa, "_warned_math", True)  # meta tensors pick math: no warning here
    layout = _layout(torch.device("meta"))
    qm, km, vm = _qkv(layout.n_tokens, "meta")
    attn.packed_attention(qm, km, vm, layout, None, "sdpa")
    assert choice.calls > 0 and call.calls > n_cpu
    assert any(n.startswith("sdpa_kernel:") for n in layout.ran)


# --- split: the CPU flash op -------------------------------------------------------------------
def test_split_calls_bind_to_the_cpu_flash_op(monkeypatch: pytest.MonkeyPatch) -> None:
    if split.FLASH_CPU is None:
        pytest.skip("this torch build has no CPU flash-attention op")
    schema = split.FLASH_CPU.default._schema
    spy = Spy(
        split.FLASH_CPU,
        schema,
        torch._C.parse_schema(SCHEMAS_2_11["_scaled_dot_product_flash_attention_for_cpu"]),
    )
    monkeypatch.setattr(split, "FLASH_CPU", spy)
    layout = _layout(torch.device("cpu"), mask_first=False)
    q, k, v = _qkv(layout.n_tokens, "cpu", torch.float32)
    attn.packed_attention(q, k, v, layout, None, "sdpa", scale=0.3)
    assert layout.ran["split"] == 1 and spy.calls > 0


# --- flex: flex_attention and create_block_mask ---------------------------------------------------
def test_flex_calls_bind(monkeypatch: pytest.MonkeyPatch) -> None:
    fa = pytest.importorskip("torch.nn.attention.flex_attention")
    flex_spy = Spy(
        fa.flex_attention, inspect.signature(fa.flex_attention), inspect.signature(flex_attention_2_11)
    )
    mask_spy = Spy(
        fa.create_block_mask,
        inspect.signature(fa.create_block_mask),
        inspect.signature(create_block_mask_2_11),
    )
    monkeypatch.setattr(fa, "flex_attention", flex_spy)
    monkeypatch.setattr(fa, "create_block_mask", mask_spy)
    layout = _layout(torch.device("cpu"))
    q, k, v = _qkv(layout.n_tokens, "cpu", torch.float32)
    attn.packed_attention(q, k, v, layout, None, "flex", softcap=30.0)
    assert flex_spy.calls == 1 and mask_spy.calls == 1


# --- the 2.11 schemas parse and match the installed ones where they should ----------------------
@pytest.mark.parametrize("op", sorted(SCHEMAS_2_11))
def test_recorded_2_11_schemas_parse(op: str) -> None:
    old = torch._C.parse_schema(SCHEMAS_2_11[op])
    live = getattr(torch.ops.aten, op, None)
    if live is None:
        pytest.skip(f"torch {torch.__version__} has no aten::{op}")
    new = {a.name for a in live.default._schema.arguments}
    assert {a.name for a in old.arguments} <= new  # nothing the engine could rely on was removed
