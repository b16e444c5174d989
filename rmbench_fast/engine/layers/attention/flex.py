"""The "flex" backend: one FlexAttention call over the whole flat batch, with a block mask from
the layout's `mask_mod`, so fully masked 128x128 tiles (other segments, sibling branches) are
skipped. Gemma-2's attention soft-cap is a `score_mod`.

Compiled (torch.compile, dynamic shapes) on CUDA; eager, a reference-speed path, elsewhere.
A build failure raises `FlexCompileError`; the scorer that ran the model then falls back to the
"sdpa" backend for that model only and records why (nothing here is process-wide).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from rmbench_fast.engine.layout import PackedLayout

# Compile on the CPU too: a test hook that traces the same mask_mod / score_mod through dynamo
# and inductor as on CUDA.
COMPILE_ON_CPU = False


class FlexCompileError(RuntimeError):
    """torch.compile could not build the FlexAttention kernel for this mask / score_mod."""


def block_mask(layout: PackedLayout, window: int | None) -> Any:
    """The batch's FlexAttention BlockMask for one (effective) window, cached on the layout."""

    def build() -> Any:
        from torch.nn.attention.flex_attention import create_block_mask  # start-up cost: torch

        T = layout.n_tokens
        return create_block_mask(layout.mask_mod(window), None, None, T, T, device=layout.seg.device)

    return layout.cached(("flex", window), build)


def _compile_errors() -> tuple[type[BaseException], ...]:
    """The exception types torch.compile raises for a failed build (they moved across versions)."""
    import torch._dynamo.exc as dynamo_exc  # start-up cost: torch

    found: list[type[BaseException]] = [dynamo_exc.BackendCompilerFailed, dynamo_exc.Unsupported]
    try:
        from torch._inductor.exc import InductorError  # start-up cost: torch

        found.append(InductorError)
    except ImportError:  # pragma: no cover - older torch
        pass
    return tuple(found)


@functools.cache
def _compiled_flex() -> Callable[..., Any]:
    from torch.nn.attention.flex_attention import flex_attention  # start-up cost: torch

    return torch.compile(flex_attention, dynamic=True)


def flex_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: PackedLayout,
    window: int | None,
    scale: float | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """q: [T, Hq, D], k/v: [T, Hk, D] -> [T, Hq, D]."""
    from torch.nn.attention.flex_attention import flex_attention as eager_flex  # start-up cost: torch

    compiled = q.device.type == "cuda" or COMPILE_ON_CPU
    fn = _compiled_flex() if compiled else eager_flex
    try:
        out = fn(
            q.transpose(0, 1)[None],
            k.transpose(0, 1)[None],
            v.transpose(0, 1)[None],
            block_mask=block_mask(layout, window),
            score_mod=None if softcap is None else _softcap_mod(softcap),
            scale=scale,
            enable_gqa=True,
        )
    except _compile_errors() as exc:
        if not compiled:
            raise
        raise FlexCompileError(describe_failure(exc)) from exc
    return out[0].transpose(0, 1)


def describe_failure(exc: BaseException) -> str:
    """One line for a compile failure: the exception type and the first line of its message."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}"[:300]


def _softcap_mod(cap: float) -> Callable[..., torch.Tensor]:
    """FlexAttention score_mod: the (already scaled) score -> cap * tanh(score / cap)."""

    def score_mod(score: torch.Tensor, b: Any, h: Any, q: Any, k: Any) -> torch.Tensor:
        return torch.tanh(score / cap) * cap

    return score_mod
