"""How a run scores: the settings every scorer (native engine, transformers backend) takes.

`RunConfig` (the CLI's options) becomes one `ScoreSettings`; the scorers read only this.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Literal

from rmbench_fast.errors import UsageError

Kind = Literal["dpo", "classifier"]
DEFAULT_OUT = "rmbench_out"  # the output directory of a run (--out), its one home


def check_limit(limit: int | None, name: str = "--limit") -> None:
    """Refuse a limit below 1 (UsageError: one line, exit 2), before anything is loaded.
    `name` is how the caller spells it: the CLI's --limit, or evaluate(limit=...)'s `limit`."""
    if limit is not None and limit < 1:
        raise UsageError(f"{name} must be at least 1 (records per domain), got {limit}")


@dataclass(frozen=True)
class ScoreSettings:
    kind: Kind = "dpo"
    ref_free_mode: str = "avg"  # avg | sum | norm (ignored with a reference model)
    dtype: str = "auto"  # a dtype name; "auto" = the checkpoint's (native) / float32 (hf)
    device: str = "cpu"
    batch_tokens: int = 8192  # native: the planner's token budget per batch
    batch_size: int = 8  # hf: sequences per padded batch
    fp32_scores: bool = False  # classifiers: the head in fp32 instead of the model dtype
    allow_pickle: bool = False
    trust_remote_code: bool = False
    share_prefix: bool = True  # native: store each record's common prompt prefix once
    attn_impl: str | None = None  # native: auto | flash | flex | sdpa | dense; None = auto
    lm_head: str = "auto"  # native DPO: auto (= torch) | torch | fused (kernel B, fp32 logits)
    pad_token_id: int | None = None  # hf classifiers: the pad id run_rm.py ends up with
    device_map: str | None = None  # hf: "auto" spreads layers over the GPUs (accelerate)
    causal_logit_token: int | None = None  # classifier kind on a causal LM: this token's logit
    tp_size: int = 1  # tensor parallelism under torchrun (rmbench_fast.utils.distributed)
    cpu_gemm: str = "auto"  # native on CPU: auto | onednn | torch (engine/layers/cpu_gemm.py)

    def with_kind_dpo_sum(self) -> ScoreSettings:
        """The settings of a pass that only needs Σ log π (a reference model, or a policy whose
        reference sums are subtracted afterwards)."""
        return replace(self, kind="dpo", ref_free_mode="sum")

    @classmethod
    def resolve(cls, settings: ScoreSettings | None, overrides: dict[str, Any]) -> ScoreSettings:
        """`settings` (or the defaults) with keyword overrides; unknown names raise TypeError."""
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown scorer settings: {', '.join(sorted(unknown))}")
        return replace(settings or cls(), **overrides)
