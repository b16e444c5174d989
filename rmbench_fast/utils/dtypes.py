"""Dtype names: the one map from user and config spellings to torch dtypes.

Three places need it: the CLI's `--dtype`, the native engine (`auto` = the checkpoint's own
`torch_dtype`) and the transformers backend. Unknown names are input errors (exit 2).
"""

from __future__ import annotations

import torch

from rmbench_fast.errors import ModelError, UsageError

# Canonical names first; the short spellings are what configs and users also write.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "fp32": torch.float32,
    "fp16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
}


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """'float32' | 'bfloat16' | 'float16' (or fp32 / bf16 / fp16 / half) -> the torch dtype."""
    if isinstance(name, torch.dtype):
        return name
    try:
        return DTYPES[name]
    except KeyError:
        raise UsageError(f"unknown dtype {name!r}; use one of float32, bfloat16, float16") from None


def run_dtype(dtype: str, device: str) -> str:
    """A run's dtype name: 'auto' is float32 on the CPU and bfloat16 on an accelerator."""
    if dtype == "auto":
        return "float32" if device == "cpu" else "bfloat16"
    return dtype


def model_dtype(dtype: str | torch.dtype | None, config_dtype: str | None) -> torch.dtype:
    """The engine's load dtype: 'auto'/None -> the config's torch_dtype (float32 if absent)."""
    if dtype not in (None, "auto"):
        return parse_dtype(dtype)  # type: ignore[arg-type]
    if config_dtype is None:
        return torch.float32
    if config_dtype not in DTYPES:
        raise ModelError(
            f"unsupported dtype {config_dtype!r} (use float32, float16 or bfloat16)", field="torch_dtype"
        )
    return DTYPES[config_dtype]
