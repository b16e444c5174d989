"""The official-style path (SPEC §6), with transformers: one style index at a time, 8 records per
forward as right-padded batches; `official8bit` loads the weights as the official scripts do by
default (bitsandbytes 8-bit)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rmbench_fast.perf.bench.measure import cpu_s, peak_mem, sync
from rmbench_fast.perf.bench.prepared import Prepared

HF_HINT = "the official-style path (--paths official) needs transformers: pip install 'rmbench_fast[hf]'"


def official_style_scores(
    model: Any, seqs: list[list[Any]], ref_free: str, device: str, pad: int, ref_model: Any = None
) -> tuple[np.ndarray, int]:
    """reward-bench's DPOInference way: per style k, 8 records -> 16 right-padded sequences per
    forward, full [B, L, V] logits, get_batch_logps. -> (rewards [n, 6], processed tokens).

    With `ref_model`, the reward is Σ log π − Σ log π_ref (fp32 sums, as DPOInference), and the
    processed tokens count both models' forwards."""
    import torch  # start-up cost: torch

    from rmbench_fast.scoring.rewards import reward_from_logprobs  # start-up cost: torch

    out = np.zeros((len(seqs), 6))
    processed = 0
    with torch.no_grad():
        for k in range(3):
            for a in range(0, len(seqs), 8):
                group = seqs[a : a + 8]
                batch = [g[k] for g in group] + [g[k + 3] for g in group]
                ids, mask = _right_padded(batch, pad)
                labels = torch.full(ids.shape, -100, dtype=torch.long)
                for i, s in enumerate(batch):
                    labels[i, s.label_start : len(s.ids)] = torch.tensor(s.ids[s.label_start :])
                lab = labels[:, 1:].to(device)
                keep = lab != -100
                sums = []
                for m in (model, ref_model) if ref_model is not None else (model,):
                    processed += ids.numel()
                    logits = m(ids.to(device), attention_mask=mask.to(device)).logits  # [B, L, V]
                    lp = torch.gather(logits[:, :-1].log_softmax(-1), 2, lab.clamp(min=0)[..., None])[..., 0]
                    sums.append((lp * keep).float())
                if ref_model is None:  # the official get_batch_logps reduction
                    r = reward_from_logprobs(sums[0], ref_free, keep)
                else:
                    r = sums[0].sum(-1) - sums[1].sum(-1)
                r = r.double().cpu().numpy()
                n = len(group)
                out[a : a + n, k] = r[:n]
                out[a : a + n, k + 3] = r[n:]
    return out, processed


def _right_padded(batch: Sequence[Any], pad: int) -> tuple[Any, Any]:
    """(ids, attention mask), int64 [B, L]: the sequences' ids right-padded with `pad` to the
    longest, as the official collators pad."""
    import torch  # start-up cost: torch

    L = max(len(s.ids) for s in batch)
    ids = torch.full((len(batch), L), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), L), dtype=torch.long)
    for i, s in enumerate(batch):
        ids[i, : len(s.ids)] = torch.tensor(s.ids)
        mask[i, : len(s.ids)] = 1
    return ids, mask


def official_style_classifier_scores(
    model: Any, seqs: list[list[Any]], device: str, pad: int
) -> tuple[np.ndarray, int]:
    """reward-bench's pipeline way for classifiers: per style k, 8 records' chosen texts in one
    right-padded forward and their rejected texts in another; the model pools at its rightmost
    non-pad token (config.pad_token_id = `pad`, as run_rm.py sets it); the score is the logit in
    the model dtype, then float. -> (scores [n, 6], processed tokens)."""
    import torch  # start-up cost: torch

    model.config.pad_token_id = int(pad)
    out = np.zeros((len(seqs), 6))
    processed = 0
    with torch.no_grad():
        for k in range(3):
            for a in range(0, len(seqs), 8):
                group = seqs[a : a + 8]
                for slot in (k, k + 3):
                    batch = [g[slot] for g in group]
                    ids, mask = _right_padded(batch, pad)
                    for i, s in enumerate(batch):
                        if s.mask_first:  # duplicated BOS (SPEC §4)
                            mask[i, 0] = 0
                    processed += ids.numel()
                    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
                    out[a : a + len(group), slot] = logits[:, 0].float().double().cpu().numpy()
    return out, processed


def _hf_load(model_dir: Path, dtype: str, device: str, eight_bit: bool, classifier: bool) -> Any:
    import torch  # start-up cost: torch
    import transformers  # optional dependency: transformers (the [hf] extra)

    auto = (
        transformers.AutoModelForSequenceClassification if classifier else transformers.AutoModelForCausalLM
    )
    if eight_bit:
        # reward-bench's default load (SPEC §6): bitsandbytes 8-bit weights, fp16 activations
        return auto.from_pretrained(
            model_dir,
            quantization_config=transformers.BitsAndBytesConfig(load_in_8bit=True),
            device_map={"": device},
            dtype=torch.float16,
        ).eval()
    return auto.from_pretrained(model_dir, dtype=getattr(torch, dtype)).to(device).eval()


def run_official(prep: Prepared, eight_bit: bool, warmup: int) -> dict[str, Any]:
    """The official-style path on the prepared sequences."""
    m, cfg = prep.model, prep.cfg
    classifier = m.kind == "classifier"
    t0 = time.perf_counter()
    model = _hf_load(m.model_dir, m.dtype, m.device, eight_bit, classifier)
    ref = _hf_load(Path(cfg.ref_model), m.dtype, m.device, eight_bit, False) if cfg.ref_model else None
    sync(m.device)
    load_s = time.perf_counter() - t0
    if classifier:
        pad = int(prep.pad_id if prep.pad_id is not None else 0)

        def score(seqs: list[list[Any]]) -> tuple[np.ndarray, int]:
            return official_style_classifier_scores(model, seqs, m.device, pad)
    else:
        cfg_json = json.loads((m.model_dir / "config.json").read_text())
        eos = cfg_json.get("eos_token_id")
        pad = int((eos[0] if isinstance(eos, list) else eos) or 0)

        def score(seqs: list[list[Any]]) -> tuple[np.ndarray, int]:
            return official_style_scores(model, seqs, m.ref_free or "avg", m.device, pad, ref_model=ref)

    if warmup:
        score(prep.seqs[:warmup])
    sync(m.device)
    t0, c0 = time.perf_counter(), cpu_s()
    scores, processed = score(prep.seqs)
    sync(m.device)
    wall, cpu = time.perf_counter() - t0, cpu_s() - c0
    models = 2 if ref is not None else 1
    useful = models * sum(len(s.ids) for g in prep.seqs for s in g)
    peak, kind = peak_mem(m.device)
    forwards = 3 * ((len(prep.seqs) + 7) // 8) * (1 if not classifier else 2)
    return {
        "scores": scores.tolist(),
        "load_s": load_s,
        "score_s": wall,
        "cpu_s": cpu,
        "useful_tokens": useful,
        "processed_tokens": processed,
        "padding_tokens": processed - useful,
        "prefix_savings": 0,
        "n_forwards": forwards * models,
        "peak_mem_mib": peak,
        "peak_mem_kind": kind,
        "how": "transformers, one style at a time, 8 records per padded forward"
        + (", full [B, L, V] logits" if not classifier else ", chosen and rejected apart")
        + (" (bitsandbytes 8-bit, fp16)" if eight_bit else ""),
    }
