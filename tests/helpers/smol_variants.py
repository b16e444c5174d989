"""SmolLM2-135M model variants for parity tests, built from `ensure_smollm2()`'s directory.

- policy:        the DPO-trained SmolLM2 itself (used reference-free).
- reference:     a seeded perturbed copy: w + N(0, (0.01·std(w))²) for every tensor (seed 0).
- classifier:    LlamaForSequenceClassification = SmolLM2 body + a seeded random score head
                 (num_labels=1), pad_token_id set; keeps the chat template.
- classifier_nt: the same weights with the chat template removed (FastChat `tulu` formatting
                 and run_rm.py's add_eos_token path).
All saved as fp32 safetensors.

`make_tiny_smol_source` builds a cheap stand-in for SmolLM2 (fast parity tests): a 2-layer,
hidden-64 random Llama that shares SmolLM2's tokenizer, chat template and special-token ids,
with its LM head scaled so per-token log-probs spread widely (a one-token misalignment then
moves a score far beyond the parity tolerance). Its cost is dominated by the 49152-way softmax.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")


@dataclass(frozen=True)
class SmolVariants:
    policy: Path
    reference: Path
    classifier: Path
    classifier_nt: Path


def copy_tokenizer(src: Path, dst: Path, *, drop_template: bool = False) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in _TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy(src / name, dst / name)
    if drop_template:
        tc = json.loads((dst / "tokenizer_config.json").read_text())
        tc.pop("chat_template", None)
        (dst / "tokenizer_config.json").write_text(json.dumps(tc, indent=2))


def make_tiny_smol_source(dst: Path, smol: Path | None = None, *, seed: int = 0) -> Path:
    """A random 2-layer Llama with SmolLM2's tokenizer files and token ids, saved as fp32 safetensors."""
    if (dst / "model.safetensors").is_file():
        return dst
    from transformers import LlamaConfig, LlamaForCausalLM

    if smol is None:
        from rmbench_fast.inputs.demo import ensure_smollm2

        smol = Path(ensure_smollm2())
    ref = json.loads((smol / "config.json").read_text())
    cfg = LlamaConfig(
        vocab_size=ref["vocab_size"],
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=4096,
        rope_theta=ref.get("rope_theta", 10000.0),
        tie_word_embeddings=False,
        bos_token_id=ref["bos_token_id"],
        eos_token_id=ref["eos_token_id"],
        pad_token_id=ref["pad_token_id"],
    )
    cfg.architectures = ["LlamaForCausalLM"]
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight.normal_(0.0, 1.0)
        model.lm_head.weight.normal_(0.0, 3.0 / 64**0.5)  # logits std ~3
    model.save_pretrained(dst, safe_serialization=True)
    copy_tokenizer(smol, dst)
    return dst


def perturbed(weights: dict[str, torch.Tensor], seed: int, rel: float) -> dict[str, torch.Tensor]:
    """w + N(0, (rel·std(w))²) per tensor, in sorted key order with one generator (reproducible)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key in sorted(weights):
        w = weights[key].float()
        std = float(w.std()) if w.numel() > 1 else abs(float(w.reshape(-1)[0]))
        out[key] = (w + torch.randn(w.shape, generator=gen) * (rel * std)).contiguous()
    return out


def _make_reference(src: Path, dst: Path, rel: float) -> None:
    copy_tokenizer(src, dst)
    shutil.copy(src / "config.json", dst / "config.json")
    weights = perturbed(load_file(str(src / "model.safetensors")), seed=0, rel=rel)
    save_file(weights, str(dst / "model.safetensors"), metadata={"format": "pt"})


def _make_classifier(src: Path, dst: Path, *, drop_template: bool) -> None:
    copy_tokenizer(src, dst, drop_template=drop_template)
    cfg = json.loads((src / "config.json").read_text())
    cfg["architectures"] = ["LlamaForSequenceClassification"]
    cfg["id2label"], cfg["label2id"] = {"0": "LABEL_0"}, {"LABEL_0": 0}
    cfg["pad_token_id"] = cfg.get("pad_token_id", cfg["eos_token_id"])
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    body = {k: v for k, v in load_file(str(src / "model.safetensors")).items() if k.startswith("model.")}
    gen = torch.Generator().manual_seed(0)
    hidden = int(cfg["hidden_size"])
    # A head with unit-scale outputs over the (RMS-normed) final hidden states, so scores spread.
    body["score.weight"] = torch.randn((1, hidden), generator=gen) / hidden**0.5
    save_file(body, str(dst / "model.safetensors"), metadata={"format": "pt"})


def make_smol_variants(base: Path, src: Path | None = None, *, ref_noise: float = 0.01) -> SmolVariants:
    """Build (or reuse) the variants under `base`; `src` (the policy) defaults to ensure_smollm2().

    ref_noise: the reference's relative perturbation (noise std = ref_noise·std(w) per tensor).
    """
    if src is None:
        from rmbench_fast.inputs.demo import ensure_smollm2

        src = Path(ensure_smollm2())
    v = SmolVariants(src, base / "reference", base / "classifier", base / "classifier_nt")
    if not (v.reference / "model.safetensors").is_file():
        _make_reference(src, v.reference, ref_noise)
    if not (v.classifier / "model.safetensors").is_file():
        _make_classifier(src, v.classifier, drop_template=False)
    if not (v.classifier_nt / "model.safetensors").is_file():
        _make_classifier(src, v.classifier_nt, drop_template=True)
    return v
