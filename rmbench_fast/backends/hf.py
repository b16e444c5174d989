"""The `hf` reference backend: Hugging Face transformers forwards, scored exactly as SPEC §4/§5.

This is the oracle the native engine is checked against, so it favours plain, faithful
computation over speed: padded batches, no prefix sharing, positions as HF computes them
(`arange`; we never pass position_ids), the model's own classifier pooling.

Sequences come pre-tokenized (`TokSeq`, see rmbench_fast.records); this module only batches,
runs the model and reduces. Scores are returned as float64 [n_records, N]: RM-Bench's 6 in slot
order (chosen style 0..2, rejected style 0..2), or a RewardBench 2 prompt's N completions.
"""

from __future__ import annotations

import importlib.util
import inspect
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rmbench_fast.errors import ModelError, UsageError
from rmbench_fast.inputs.modelio import ModelInfo, inspect_model_dir
from rmbench_fast.records import TokSeq
from rmbench_fast.scoring.logprobs import token_logprobs
from rmbench_fast.scoring.rewards import check_ref_free_mode, reward_from_logprobs
from rmbench_fast.settings import ScoreSettings
from rmbench_fast.utils.dtypes import parse_dtype

Progress = Callable[[int], None]  # called with the number of records just completed (all scored)


def resolve_classifier_pad_id(config_pad: int | None, tok_pad: int | None, tok_eos: int | None) -> int | None:
    """The pad id run_rm.py ends up with in `model.config.pad_token_id`.

    If the tokenizer has no pad token, the script sets config pad := tokenizer EOS, *overriding*
    any config value; otherwise a missing config pad is filled from the tokenizer's pad.
    """
    if tok_pad is None:
        return tok_eos
    return config_pad if config_pad is not None else tok_pad


def _hf_major_minor() -> tuple[int, int]:
    import transformers  # optional dependency: transformers (the [hf] extra)

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return major, minor


def _load(
    info: ModelInfo,
    dtype: torch.dtype,
    device: str,
    trust_remote_code: bool,
    allow_pickle: bool,
    device_map: str | None = None,
) -> Any:
    """Load with the Auto class for the model's kind; safetensors only unless pickle is allowed.

    `device_map` ("auto"): spread the layers over the visible GPUs with accelerate, as the
    official scripts do for models too large for one device (one GPU busy at a time: the slow
    path, for architectures the native engine does not cover)."""
    try:
        # optional dependency: transformers (the [hf] extra)
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    except ImportError:
        raise UsageError("the hf backend needs transformers: pip install 'rmbench_fast[hf]'") from None
    auto = AutoModelForSequenceClassification if info.kind == "classifier" else AutoModelForCausalLM
    # transformers >= 4.56 renamed torch_dtype to dtype.
    dtype_kw = "dtype" if _hf_major_minor() >= (4, 56) else "torch_dtype"
    kwargs: dict[str, Any] = {dtype_kw: dtype, "use_safetensors": None if allow_pickle else True}
    if trust_remote_code:
        kwargs["trust_remote_code"] = True
    if device_map is not None:
        if importlib.util.find_spec("accelerate") is None:
            raise UsageError("--device-map needs accelerate: pip install 'rmbench_fast[hf]'")
        kwargs["device_map"] = device_map
    try:
        model = auto.from_pretrained(str(info.path), **kwargs)
    except (OSError, ValueError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"model directory {info.path}: cannot load with transformers ({msg})") from None
    if device_map is None:
        model = model.to(device)
    return model.eval().requires_grad_(False)


def _accepts_logits_to_keep(model: Any) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


class HFScorer:
    """Score tokenized RM-Bench records with transformers models (the reference backend).

    kind="classifier": score = the model's single logit at `TokSeq.pool_index` (SPEC §4).
    kind="dpo": reward from per-token answer log-probs (SPEC §5), with a reference model
        Σ log π − Σ log π_ref, else ref-free avg / sum / norm.
    """

    def __init__(
        self,
        model_dir: str | Path,
        settings: ScoreSettings | None = None,
        *,
        ref_model_dir: str | Path | None = None,
        **overrides: Any,
    ) -> None:
        st = ScoreSettings.resolve(settings, overrides)
        kind, ref_free_mode, batch_size = st.kind, st.ref_free_mode, st.batch_size
        trust_remote_code, allow_pickle, device = st.trust_remote_code, st.allow_pickle, st.device
        if kind not in ("classifier", "dpo"):
            raise UsageError(f"unknown model kind {kind!r}; use classifier or dpo")
        if kind == "classifier" and ref_model_dir is not None:
            raise UsageError("a reference model only applies to DPO policies, not to classifiers")
        if batch_size < 1:
            raise UsageError(f"batch size must be >= 1, got {batch_size}")
        if ref_model_dir is None and kind == "dpo":
            check_ref_free_mode(ref_free_mode)
        self.kind, self.ref_free_mode, self.batch_size = kind, ref_free_mode, batch_size
        self.causal_logit = st.causal_logit_token
        self.device, self.fp32_scores = device, st.fp32_scores
        self.dtype = parse_dtype("float32" if st.dtype == "auto" else st.dtype)
        self.info = inspect_model_dir(
            model_dir,
            trust_remote_code=trust_remote_code,
            allow_pickle=allow_pickle,
            kind="dpo" if st.causal_logit_token is not None else kind,  # a causal LM
        )
        self.model = _load(self.info, self.dtype, device, trust_remote_code, allow_pickle, st.device_map)
        if st.device_map is not None:  # inputs go where the embeddings are
            self.device = str(self.model.get_input_embeddings().weight.device)
        self.ref_info: ModelInfo | None = None
        self.ref_model: Any = None
        if ref_model_dir is not None:
            self.ref_info = inspect_model_dir(
                ref_model_dir, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle, kind="dpo"
            )
            self.ref_model = _load(
                self.ref_info, self.dtype, device, trust_remote_code, allow_pickle, st.device_map
            )
        self.pad_id = self._setup_pad(st.pad_token_id)
        self._keep_ok = kind == "dpo" and all(
            _accepts_logits_to_keep(m) for m in (self.model, self.ref_model) if m is not None
        )
        if kind == "classifier" and st.fp32_scores:
            self._keep_head_fp32()
        self.stats: dict[str, Any] = {}

    # -- setup ---------------------------------------------------------------------------
    def _setup_pad(self, pad_token_id: int | None) -> int:
        """Pick the pad id. Classifiers: HF pools at the rightmost token != config.pad_token_id.

        `pad_token_id`, when given, is the id run_rm.py ends up with (see
        `resolve_classifier_pad_id`) and replaces the config's; else the config's is used.
        """
        cfg_pad = getattr(self.model.config, "pad_token_id", None)
        if self.kind == "classifier" and self.causal_logit is None:
            pad = pad_token_id if pad_token_id is not None else cfg_pad
            if pad is None:
                raise ModelError(
                    f"model directory {self.info.path}: neither config.json nor the tokenizer defines a pad token id"
                )
            # HF pools at the rightmost token != config.pad_token_id: set it like run_rm.py does.
            self.model.config.pad_token_id = int(pad)
            return int(pad)
        # DPO: padded positions are masked and lie right of every label, so any valid id works.
        pad = pad_token_id if pad_token_id is not None else cfg_pad
        return int(pad) if isinstance(pad, int) else 0

    def _keep_head_fp32(self) -> None:
        """--fp32-scores: run the score head in fp32 so scores are not rounded to the model dtype."""
        head = getattr(self.model, "score", None)
        if not isinstance(head, torch.nn.Linear):
            raise UsageError(f"fp32 scores need a Linear `score` head; {type(self.model).__name__} has none")
        head.float()
        head.register_forward_pre_hook(lambda _m, args: tuple(a.float() for a in args))

    # -- batching ------------------------------------------------------------------------
    def _pad_batch(self, batch: Sequence[TokSeq]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-pad to the longest sequence. -> input_ids [B, T], attention_mask [B, T]."""
        width = max(len(s.ids) for s in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for b, s in enumerate(batch):
            ids[b, : len(s.ids)] = torch.tensor(s.ids, dtype=torch.long)
            mask[b, : len(s.ids)] = 1
            if s.mask_first:  # duplicated BOS (SPEC §4): unseen, but it keeps position 0
                mask[b, 0] = 0
        return ids.to(self.device), mask.to(self.device)

    def _classifier_batch(self, batch: Sequence[TokSeq]) -> list[float]:
        """Scores of one batch: HF's pooled logit [B, 1], model dtype -> float (or fp32 head)."""
        ids, mask = self._pad_batch(batch)  # [B, T]
        logits = self.model(input_ids=ids, attention_mask=mask).logits  # [B, num_labels]
        if logits.shape[-1] != 1:
            raise ModelError(
                f"model directory {self.info.path}: classifier returns {logits.shape[-1]} logits, expected 1"
            )
        self._check_pooling(batch, ids)
        return logits[:, 0].float().cpu().tolist()

    def _causal_logit_batch(self, batch: Sequence[TokSeq]) -> list[float]:
        """--reward causal-logit: HF's logits[b, last token, id] (model dtype) -> float."""
        ids, mask = self._pad_batch(batch)  # [B, T]
        logits = self.model(input_ids=ids, attention_mask=mask).logits  # [B, T, V]
        rows = torch.tensor([len(s.ids) - 1 for s in batch], device=logits.device)
        return (
            logits[torch.arange(len(batch), device=logits.device), rows, self.causal_logit]
            .float()
            .cpu()
            .tolist()
        )

    def _check_pooling(self, batch: Sequence[TokSeq], ids: torch.Tensor) -> None:
        """HF pools at the rightmost id != pad; that must be where the tokenizer said (pool_index)."""
        t = torch.arange(ids.shape[1], device=ids.device)
        hf_pos = ((ids != self.pad_id).long() * t).argmax(-1).tolist()  # [B]
        for b, s in enumerate(batch):
            want = s.pool_index if s.pool_index >= 0 else len(s.ids) + s.pool_index
            if hf_pos[b] != want:
                raise RuntimeError(
                    f"classifier pool position mismatch: HF pools at {hf_pos[b]}, TokSeq.pool_index={want} "
                    f"(pad id {self.pad_id}, length {len(s.ids)})"
                )

    def _sum_logprobs(self, model: Any, batch: Sequence[TokSeq]) -> list[torch.Tensor]:
        """Per sequence, its answer log-probs [K_b] fp32: log_softmax(logits[t−1])[ids[t]], t ≥ label_start."""
        ids, mask = self._pad_batch(batch)  # [B, T]
        lo = min(s.label_start for s in batch) - 1  # first position whose output is needed
        hi = max(len(s.ids) for s in batch) - 1  # one past the last
        kwargs: dict[str, Any] = {}
        if self._keep_ok:
            # Only positions lo..hi-1 predict labels: skip the LM head elsewhere (exact, saves memory).
            kwargs["logits_to_keep"] = torch.arange(lo, hi, device=ids.device)
        else:
            lo = 0
        logits = model(input_ids=ids, attention_mask=mask, **kwargs).logits  # [B, hi-lo or T, V]
        out = []
        for b, s in enumerate(batch):
            rows = logits[b, s.label_start - 1 - lo : len(s.ids) - 1 - lo]  # [K, V]
            labels = ids[b, s.label_start : len(s.ids)]  # [K]
            out.append(token_logprobs(rows, labels)[0])
        return out

    def _dpo_batch(self, batch: Sequence[TokSeq]) -> list[float]:
        for s in batch:
            if not 1 <= s.label_start < len(s.ids):
                raise RuntimeError(
                    f"DPO sequence has no answer tokens (label_start={s.label_start}, length {len(s.ids)})"
                )
        pol = self._sum_logprobs(self.model, batch)
        if self.ref_model is None:
            return [float(reward_from_logprobs(lp, self.ref_free_mode)) for lp in pol]
        ref = self._sum_logprobs(self.ref_model, batch)
        # fp32 sums and difference, as DPOInference computes them.
        return [float(p.sum() - r.sum()) for p, r in zip(pol, ref)]

    # -- public --------------------------------------------------------------------------
    @torch.inference_mode()
    def score(self, seqs: list[list[TokSeq]], progress: Progress | None = None) -> np.ndarray:
        """seqs: [n_records][N_r] TokSeq (RM-Bench: the 6 in slot order; RewardBench 2: a
        prompt's N_r completions) -> scores [n_records, max N_r] float64, NaN past a record's N_r.

        Sequences are batched longest first (batch composition does not change any score:
        padding is on the right and masked). `self.stats` gets tokens, padded tokens, seconds.
        """
        for r, rec in enumerate(seqs):
            if not rec:
                raise ValueError(f"record {r}: no sequences")
        flat = [(r, j, s) for r, rec in enumerate(seqs) for j, s in enumerate(rec)]
        order = sorted(range(len(flat)), key=lambda i: -len(flat[i][2].ids))
        width = max((len(rec) for rec in seqs), default=0)
        out = np.full((len(seqs), width), np.nan, dtype=np.float64)
        done = [0] * len(seqs)  # sequences scored per record, for progress in whole records
        t0, tokens, padded, n_batches = time.perf_counter(), 0, 0, 0
        run = self._classifier_batch if self.kind == "classifier" else self._dpo_batch
        if self.causal_logit is not None:
            run = self._causal_logit_batch
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            batch = [flat[i][2] for i in idx]
            finished = 0
            for i, v in zip(idx, run(batch)):
                out[flat[i][0], flat[i][1]] = v
                done[flat[i][0]] += 1
                finished += int(done[flat[i][0]] == len(seqs[flat[i][0]]))
            tokens += sum(len(s.ids) for s in batch)
            padded += len(batch) * max(len(s.ids) for s in batch)
            n_batches += 1
            if progress is not None and finished:
                progress(finished)
        self.stats = {
            "backend": "hf",
            "n_records": len(seqs),
            "n_sequences": len(flat),
            "n_batches": n_batches,
            "tokens": tokens,
            "padded_tokens": padded,
            "forwards_per_sequence": 2 if self.ref_model is not None else 1,
            "wall_s": time.perf_counter() - t0,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": self.device,
        }
        return out
