"""Oracle driver: the official RM-Bench per-record flow, run on CPU in fp32, for parity tests.

Reproduces THU-KEG/RM-Bench `scripts/run_dpo.py` / `scripts/run_rm.py` (+ `scripts/utils.py`),
which call allenai/reward-bench at commit 1266638, without their CUDA/accelerate/datasets/8-bit
scaffolding. The scoring code itself is the official one: `rewardbench/dpo.py` (DPOInference)
and `rewardbench/models/pipeline.py` (RewardBenchPipeline) from the `rewardbench` wheel
(identical to those files at 1266638), loaded by file path because the package `__init__`
does not import under transformers 5.

What is reproduced, per style index k = 0..2 (one "dataset" per style, as the scripts do):
- texts: `prepare_dialogue_from_tokenizer` when `tokenizer.chat_template` is not None
  (apply_chat_template, tokenize=False, no generation prompt; the prompt text is the [user]
  conversation), else FastChat `prepare_dialogue` with `get_conv_template(name)`.
- DPO: pad := EOS; BOS := EOS if missing; DPOInference.tokenize_row per record; batches padded
  like trl's DPODataCollatorWithPadding (right padding: pad id / attention 0 / label −100);
  `inference_step` -> rewards -> `.float().tolist()`.
- RM: truncation_side left; pad := EOS (config pad too) if the tokenizer has none; config pad
  := tokenizer pad if missing; add_eos_token := True if no chat template; DataLoader batches
  of `batch_size` texts -> RewardBenchPipeline(texts, truncation, padding, max_length=2048)
  -> logits [B, 1] -> `.float().tolist()` -> unwrapped from 1-lists.

Needs: `pip install --no-deps rewardbench` (and `fschat==0.2.36` for no-template models).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import torch


def _rewardbench_file(rel: str) -> Path:
    spec = importlib.util.find_spec("rewardbench")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("official reward-bench code missing: pip install --no-deps rewardbench")
    path = Path(next(iter(spec.submodule_search_locations))) / rel
    if not path.is_file():
        raise ImportError(f"rewardbench has no {rel}")
    return path


def _load_module(rel: str, name: str) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _rewardbench_file(rel))
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def official_classes() -> tuple[Any, Any]:
    """(DPOInference, RewardBenchPipeline) from the installed rewardbench wheel, by file path."""
    dpo = _load_module("dpo.py", "_rb_official_dpo")
    pipe = _load_module("models/pipeline.py", "_rb_official_pipeline")
    return dpo.DPOInference, pipe.RewardBenchPipeline


# -- texts (scripts/utils.py load_eval_dataset -> rewardbench.utils.prepare_dialogue*) ---------
def official_texts(tokenizer: Any, prompt: str, chosen: str, rejected: str, conv_name: str = "tulu") -> dict:
    """{'prompt', 'text_chosen', 'text_rejected'} as load_eval_dataset builds them (single turn)."""
    if getattr(tokenizer, "chat_template", None) is not None:

        def render(msgs: list[dict]) -> str:
            return tokenizer.apply_chat_template(msgs, tokenize=False)

        user = {"role": "user", "content": prompt}
        return {
            "prompt": render([user]),
            "text_chosen": render([user, {"role": "assistant", "content": chosen}]),
            "text_rejected": render([user, {"role": "assistant", "content": rejected}]),
        }
    from fastchat.conversation import get_conv_template

    conv = get_conv_template(conv_name)

    def render_fc(msgs: list[list[str]]) -> str:
        conv.messages = msgs
        return conv.get_prompt()

    u, a = conv.roles
    return {
        "prompt": render_fc([[u, prompt]]),
        "text_chosen": render_fc([[u, prompt], [a, chosen]]),
        "text_rejected": render_fc([[u, prompt], [a, rejected]]),
    }


# -- DPO (run_dpo.py) -------------------------------------------------------------------------
def _collate_dpo(rows: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """trl DPODataCollatorWithPadding for the keys DPOInference reads (chosen_*/rejected_*): right pad."""
    out: dict[str, torch.Tensor] = {}
    for key in rows[0]:
        if not key.startswith(("chosen_", "rejected_")):
            continue
        pad = -100 if key.endswith("labels") else (0 if key.endswith("attention_mask") else pad_id)
        width = max(len(r[key]) for r in rows)
        out[key] = torch.tensor(
            [list(r[key]) + [pad] * (width - len(r[key])) for r in rows], dtype=torch.long
        )
    return out


def official_dpo_scores(
    model_dir: str | Path,
    records: list[dict],
    *,
    ref_model_dir: str | Path | None = None,
    ref_free_type: str = "avg",
    batch_size: int = 6,
    conv_name: str = "tulu",
    max_length: int = 2048,
    max_prompt_length: int = 128,
) -> np.ndarray:
    """run_dpo.py on raw RM-Bench records, fp32 CPU -> scores [n_records, 6] (chosen 0..2, rejected 0..2).
    `max_length` / `max_prompt_length` set DPOInference's truncation limits (its defaults: 2048, 128)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dpo_cls, _ = official_classes()
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    tok.pad_token = tok.eos_token
    if tok.bos_token is None:  # e.g. Qwen
        tok.bos_token_id = tok.eos_token_id
        tok.pad_token_id = tok.eos_token_id
    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=torch.float32, attn_implementation="sdpa"
    )
    ref = None
    if ref_model_dir is not None:
        ref = AutoModelForCausalLM.from_pretrained(str(ref_model_dir), dtype=torch.float32)
    dpo = dpo_cls(
        model,
        ref,
        tokenizer=tok,
        accelerator=SimpleNamespace(device=torch.device("cpu")),
        ref_free_norm=ref_free_type,
    )
    dpo.max_length, dpo.max_prompt_length = max_length, max_prompt_length
    scores = np.zeros((len(records), 6))
    for k in range(3):
        rows = [
            dpo.tokenize_row(official_texts(tok, r["prompt"], r["chosen"][k], r["rejected"][k], conv_name))
            for r in records
        ]
        for b0 in range(0, len(rows), batch_size):
            batch = _collate_dpo(rows[b0 : b0 + batch_size], tok.pad_token_id)
            with torch.no_grad():
                ch, rj = dpo.inference_step(batch, ref_free=ref is None)
            scores[b0 : b0 + len(ch), k] = ch.float().numpy()
            scores[b0 : b0 + len(rj), 3 + k] = rj.float().numpy()
    return scores


# -- sequence classifiers (run_rm.py) ---------------------------------------------------------
class CPUTokenizer:
    """RewardBenchPipeline moves its inputs `.to("cuda")`: keep them on the CPU instead."""

    def __init__(self, tok: Any) -> None:
        self._tok = tok

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        enc = self._tok(*args, **kwargs)
        enc.to = lambda _device: enc  # the tensors are already on the CPU
        return enc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tok, name)


def official_rm_scores(
    model_dir: str | Path,
    records: list[dict],
    *,
    batch_size: int = 64,
    max_length: int = 2048,
    conv_name: str = "tulu",
) -> tuple[np.ndarray, dict]:
    """run_rm.py on raw RM-Bench records, fp32 CPU -> (scores [n_records, 6], setup facts)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _, pipe_cls = official_classes()
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    tok.truncation_side = "left"
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), dtype=torch.float32)
    pipe = pipe_cls("text-classification", model=model, tokenizer=tok)
    if pipe.tokenizer.pad_token_id is None:
        pipe.model.config.pad_token_id = pipe.tokenizer.eos_token_id
        pipe.tokenizer.pad_token_id = pipe.tokenizer.eos_token_id
    if pipe.model.config.pad_token_id is None:
        pipe.model.config.pad_token_id = pipe.tokenizer.pad_token_id
    has_template = getattr(tok, "chat_template", None) is not None
    if not has_template:
        pipe.tokenizer.add_eos_token = True
    pipe.tokenizer = CPUTokenizer(pipe.tokenizer)
    kwargs = {
        "batch_size": batch_size,
        "truncation": True,
        "padding": True,
        "max_length": max_length,
        "function_to_apply": "none",
        "return_token_type_ids": False,
    }
    scores = np.zeros((len(records), 6))
    for k in range(3):
        texts = [
            official_texts(tok, r["prompt"], r["chosen"][k], r["rejected"][k], conv_name) for r in records
        ]
        for b0 in range(0, len(texts), batch_size):
            chunk = texts[b0 : b0 + batch_size]
            ch = pipe([t["text_chosen"] for t in chunk], **kwargs)  # [B, 1] model dtype
            rj = pipe([t["text_rejected"] for t in chunk], **kwargs)
            scores[b0 : b0 + len(chunk), k] = [v[0] for v in ch.float().cpu().numpy().tolist()]
            scores[b0 : b0 + len(chunk), 3 + k] = [v[0] for v in rj.float().cpu().numpy().tolist()]
    facts = {"pad_token_id": pipe.model.config.pad_token_id, "add_eos_token": not has_template}
    return scores, facts


# -- custom reward heads (reward-bench's own model classes and pipelines) ----------------------
def official_head_classes() -> dict[str, Any]:
    """The wheel's head model classes by our head name: {"inform", "grm"} -> class."""
    inform = _load_module("models/inform.py", "_rb_official_inform")
    grm = _load_module("models/grm.py", "_rb_official_grm")
    return {"inform": inform.INFORMForSequenceClassification, "grm": grm.GRewardModel}


def official_head_model(model_dir: str | Path, head: str) -> Any:
    """The wheel's model class for `head` with the directory's fp32 weights, in eval mode.

    INF-ORM loads with `from_pretrained`. GRewardModel's `__init__` never calls `post_init()`,
    which `from_pretrained` needs under transformers 5 (`all_tied_weights_keys`), so it is built
    from its config and given the checkpoint with a strict `load_state_dict`: the same weights
    in the same module, its forward untouched.
    """
    cls = official_head_classes()[head]
    if head == "inform":
        return cls.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    from safetensors.torch import load_file
    from transformers import AutoConfig

    model = cls(AutoConfig.from_pretrained(str(model_dir)))
    state: dict[str, torch.Tensor] = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        state.update(load_file(str(f)))
    model.load_state_dict(state, strict=True)
    return model.float().eval()


def official_head_rm_scores(
    model_dir: str | Path,
    records: list[dict],
    head: str,
    *,
    batch_size: int = 64,
    max_length: int = 2048,
) -> np.ndarray:
    """run_rm.py for a custom-head model, as reward-bench's REWARD_MODEL_CONFIG wires it, fp32 CPU:
    INF-ORM = INFORMForSequenceClassification.from_pretrained + RewardBenchPipeline,
    GRM = GRewardModel.from_pretrained + GRMPipeline. Same setup steps as `official_rm_scores`
    (left truncation, pad fallbacks); the chat template must exist. -> scores [n_records, 6]."""
    from transformers import AutoTokenizer

    _, rb_pipe = official_classes()
    pipe_cls = rb_pipe if head == "inform" else _load_module("models/grm.py", "_rb_official_grm").GRMPipeline
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    tok.truncation_side = "left"
    assert getattr(tok, "chat_template", None) is not None
    model = official_head_model(model_dir, head)
    pipe = pipe_cls("text-classification", model=model, tokenizer=tok)
    if pipe.tokenizer.pad_token_id is None:
        pipe.model.config.pad_token_id = pipe.tokenizer.eos_token_id
        pipe.tokenizer.pad_token_id = pipe.tokenizer.eos_token_id
    if pipe.model.config.pad_token_id is None:
        pipe.model.config.pad_token_id = pipe.tokenizer.pad_token_id
    pipe.tokenizer = CPUTokenizer(pipe.tokenizer)
    kwargs = {
        "batch_size": batch_size,
        "truncation": True,
        "padding": True,
        "max_length": max_length,
        "function_to_apply": "none",
        "return_token_type_ids": False,
    }

    def scores(texts: list[str]) -> list[float]:
        out = pipe(texts, **kwargs).float().cpu().numpy()  # [B, 1] (INF-ORM) or [B] (GRM)
        return [float(v) for v in out.reshape(len(texts))]

    result = np.zeros((len(records), 6))
    for k in range(3):
        texts = [official_texts(tok, r["prompt"], r["chosen"][k], r["rejected"][k]) for r in records]
        for b0 in range(0, len(texts), batch_size):
            chunk = texts[b0 : b0 + batch_size]
            result[b0 : b0 + len(chunk), k] = scores([t["text_chosen"] for t in chunk])
            result[b0 : b0 + len(chunk), 3 + k] = scores([t["text_rejected"] for t in chunk])
    return result


def official_qrm_class(version: str = "31") -> Any:
    """reward-bench's QRM model class (`LlamaForRewardModelWithGating31` or `...3`).

    qrm.py imports `LLAMA_INPUTS_DOCSTRING`, which transformers 5 no longer defines (it only
    feeds a docstring decorator): an empty string is provided before the file is loaded.
    """
    from transformers.models.llama import modeling_llama

    if not hasattr(modeling_llama, "LLAMA_INPUTS_DOCSTRING"):
        modeling_llama.LLAMA_INPUTS_DOCSTRING = ""  # type: ignore[attr-defined]
    qrm = _load_module("models/qrm.py", "_rb_official_qrm")
    return qrm.LlamaForRewardModelWithGating31 if version == "31" else qrm.LlamaForRewardModelWithGating3
