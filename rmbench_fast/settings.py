"""How a run scores: the run's options (`RunConfig`, what `run` and `evaluate` take) and the
settings every scorer (native engine, transformers backend) takes (`ScoreSettings`).

A `RunConfig` becomes one `ScoreSettings` (pipeline.score.score_settings); the scorers read only this.
"""

from __future__ import annotations

from collections.abc import Sequence
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


@dataclass
class RunConfig:
    model: str | None = None
    ref_model: str | None = None
    ref_free: str | None = None
    kind: str = "auto"
    data: str | None = None
    limit: int | None = None
    domains: Sequence[str] | None = None
    ids: Sequence[str] | None = None
    chat_template: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    backend: str = "auto"
    batch_tokens: int | None = None
    batch_size: int = 8
    out: str | None = DEFAULT_OUT
    fp32_scores: bool = False
    trust_remote_code: bool = False
    allow_pickle: bool = False
    progress: bool = True
    # Bootstrap confidence intervals in metrics.json (rmbench_fast.results.stats): resamples and seed.
    resamples: int = 10000
    seed: int = 0
    # Native engine choices (--attn, --lm-head, --ref-mode; see ScoreSettings and score_run).
    attn: str = "auto"
    lm_head: str = "auto"
    ref_mode: str = "auto"
    # The results store (rmbench_fast.store.db): its file or directory, or off.
    cache_dir: str | None = None
    no_cache: bool = False
    # Keep going (exit 0) when a score is NaN or inf; such a score loses every comparison.
    allow_nonfinite: bool = False
    # hf backend: "auto" spreads an unsupported architecture over the visible GPUs (accelerate).
    device_map: str | None = None
    # Truncation (SPEC §4/§5). The official scripts use 2048 and, for DPO prompts, 128; another
    # value is marked official: false in meta.settings (Skywork-Reward-V2 recommends 16384).
    max_length: int = 2048
    max_prompt_length: int = 128
    # "causal-logit:<token_id>": a causal LM's logit of that token after the prompt and response
    # (the chat template with its generation prompt), as Llama-3.1-Nemotron-70B-Reward-HF scores.
    reward: str | None = None
    # Tensor-parallel size under torchrun (the world is DP x TP ranks; rmbench_fast.utils.distributed).
    tp: int = 1
    # CPU: the linears' kernel (engine/layers/cpu_gemm.py) and the thread count (None: physical cores).
    cpu_gemm: str = "auto"
    threads: int | None = None
