"""Tiny random-init model directories for tests and benchmarks (needs `transformers`).

The models have real-config shapes (GQA, tied/untied heads, rope scaling, real vocab sizes)
but tiny hidden sizes, so a parity test runs in well under a second.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Literal

Arch = Literal["llama", "mistral", "qwen2", "qwen3", "gemma2"]
Kind = Literal["causal", "classifier"]
Head = Literal["inform", "grm", "grm-linear"]

_CLASSES = {
    ("llama", "causal"): "LlamaForCausalLM",
    ("mistral", "causal"): "MistralForCausalLM",
    ("qwen2", "causal"): "Qwen2ForCausalLM",
    ("llama", "classifier"): "LlamaForSequenceClassification",
    ("mistral", "classifier"): "MistralForSequenceClassification",
    ("qwen2", "classifier"): "Qwen2ForSequenceClassification",
    ("gemma2", "causal"): "Gemma2ForCausalLM",
    ("gemma2", "classifier"): "Gemma2ForSequenceClassification",
    ("qwen3", "causal"): "Qwen3ForCausalLM",
    ("qwen3", "classifier"): "Qwen3ForSequenceClassification",
}
SMOLLM2_VOCAB = 49152


def tiny_config(
    arch: Arch,
    *,
    num_kv_heads: int = 2,
    vocab_size: int = 32000,
    tie_word_embeddings: bool = False,
    rope_scaling: dict[str, Any] | None = None,
    sliding_window: int | None = None,
    **overrides: Any,
) -> Any:
    """A transformers config of family `arch`: hidden 64, 2 layers, 4 heads of 16."""
    import transformers

    cls = {
        "llama": transformers.LlamaConfig,
        "mistral": transformers.MistralConfig,
        "qwen2": transformers.Qwen2Config,
        "gemma2": transformers.Gemma2Config,
        "qwen3": transformers.Qwen3Config,
    }
    kwargs: dict[str, Any] = dict(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=num_kv_heads,
        vocab_size=vocab_size,
        tie_word_embeddings=tie_word_embeddings,
        max_position_embeddings=8192,
        initializer_range=0.08,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    if arch != "qwen2":
        kwargs["head_dim"] = 16
    if arch == "mistral":
        kwargs["sliding_window"] = sliding_window
    if arch == "gemma2":
        # small caps and a query scalar != head_dim, so each Gemma-2 feature moves the scores
        kwargs.update(
            sliding_window=sliding_window or 4096,
            query_pre_attn_scalar=24,
            attn_logit_softcapping=2.0,
            final_logit_softcapping=8.0,
            hidden_activation="gelu_pytorch_tanh",
        )
    if arch in ("qwen2", "qwen3") and sliding_window is not None:
        kwargs.update(use_sliding_window=True, sliding_window=sliding_window, max_window_layers=1)
    kwargs["rope_theta"] = 10000.0 if rope_scaling is None else 500000.0
    if rope_scaling is not None:
        kwargs["rope_scaling"] = {"rope_theta": kwargs["rope_theta"], **rope_scaling}
    kwargs.update(overrides)
    return cls[arch](**kwargs)


def make_tiny_model_dir(
    path: str | Path,
    arch: Arch = "llama",
    *,
    kind: Kind = "causal",
    tie_word_embeddings: bool = False,
    num_kv_heads: int = 2,
    vocab_size: int = 32000,
    seed: int = 0,
    rope_scaling: dict[str, Any] | None = None,
    sliding_window: int | None = None,
    **overrides: Any,
) -> Path:
    """Write config.json + model.safetensors (fp32, random init) and a tokenizer into `path`.

    The tokenizer is SmolLM2's when vocab_size == 49152 and the demo model is available,
    otherwise a trivial word-level tokenizer (enough for code that only needs the files).
    """
    import torch
    import transformers

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = tiny_config(
        arch,
        num_kv_heads=num_kv_heads,
        vocab_size=vocab_size,
        tie_word_embeddings=tie_word_embeddings,
        rope_scaling=rope_scaling,
        sliding_window=sliding_window,
        **overrides,
    )
    cfg.architectures = [_CLASSES[(arch, kind)]]
    if kind == "classifier":
        cfg.num_labels = 1
    torch.manual_seed(seed)
    model = getattr(transformers, _CLASSES[(arch, kind)])(cfg).eval()
    if kind == "classifier":
        # HF initialises the score head small; make scores spread like a trained head's
        with torch.no_grad():
            model.score.weight.normal_(0.0, 0.5)
    if arch == "gemma2":  # HF initialises Gemma's norm offsets to 0; make the (1 + w) matter
        with torch.no_grad():
            for name, prm in model.named_parameters():
                if name.endswith("norm.weight"):
                    prm.normal_(0.0, 0.3)
    if arch == "qwen3":  # HF initialises the q/k norm weights to 1; make them matter too
        with torch.no_grad():
            for name, prm in model.named_parameters():
                if name.endswith(("q_norm.weight", "k_norm.weight")):
                    prm.normal_(1.0, 0.3)
    model.save_pretrained(path, safe_serialization=True)
    _write_tokenizer(path, vocab_size)
    return path


def make_tiny_head_dir(
    path: str | Path,
    head: Head,
    base: Arch = "llama",
    *,
    vocab_size: int = 32000,
    seed: int = 0,
    pad_token: str | None = None,
    **overrides: Any,
) -> Path:
    """A tiny custom-reward-head checkpoint in the head's real layout, written by the official
    model class from the rewardbench wheel (needs rewardbench; `tests/helpers/official.py` loads it by
    file path):
      inform:     INFORMForSequenceClassification (Llama body, score = Linear-ReLU-Linear)
      grm:        GRewardModel on `base` with its default MLP value head (1 x 1024 neurons)
      grm-linear: GRewardModel with `vhead_layer_type = "linear"` in config.json
    The heads' weights are drawn wide so scores spread. `pad_token` (a token string of the
    tokenizer) becomes both the tokenizer's pad token and config.pad_token_id.
    """
    import torch

    from tests.helpers.official import official_head_classes

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = tiny_config(base, vocab_size=vocab_size, **overrides)
    torch.manual_seed(seed)
    if head == "inform":
        cfg.architectures = ["INFORMForSequenceClassification"]
        cfg.num_labels = 1
        model = official_head_classes()["inform"](cfg).eval()
        layers = [model.score[0], model.score[2]]
    else:
        if head == "grm-linear":
            cfg.vhead_layer_type = "linear"
        model = official_head_classes()["grm"](cfg).eval()
        model.config.architectures = ["GRewardModel"]
        summary = model.v_head.summary
        layers = (
            [summary]
            if isinstance(summary, torch.nn.Linear)
            else [m for m in summary if hasattr(m, "weight")]
        )
    with torch.no_grad():
        for layer in layers:
            layer.weight.normal_(0.0, 1.5 / layer.weight.shape[1] ** 0.5)
            layer.bias.normal_(0.0, 0.5)
    model.save_pretrained(path, safe_serialization=True)
    _write_tokenizer(path, vocab_size)
    if pad_token is not None:
        tc_path = path / "tokenizer_config.json"
        tc = json.loads(tc_path.read_text())
        tc["pad_token"] = pad_token
        tc_path.write_text(json.dumps(tc, indent=2))
        from tokenizers import Tokenizer

        cfg_path = path / "config.json"
        raw = json.loads(cfg_path.read_text())
        raw["pad_token_id"] = Tokenizer.from_file(str(path / "tokenizer.json")).token_to_id(pad_token)
        cfg_path.write_text(json.dumps(raw, indent=2))
    return path


def _write_tokenizer(path: Path, vocab_size: int) -> None:
    if vocab_size == SMOLLM2_VOCAB:
        try:
            from rmbench_fast.inputs.demo import ensure_smollm2  # type: ignore[attr-defined]

            src = ensure_smollm2()
            for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
                if (src / name).is_file():
                    shutil.copy(src / name, path / name)
            return
        except Exception:  # noqa: BLE001 - the demo model is optional here
            pass
    from tokenizers import Tokenizer, models, pre_tokenizers

    specials = ["<unk>", "<s>", "</s>"]
    words = [chr(c) for c in range(33, 127)]
    vocab = {w: i for i, w in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "model_max_length": 4096})
    )


# ---------------------------------------------------------------------------------------------
# Synthetic TokSeqs and the HF one-sequence-at-a-time reference (SPEC §4/§5 semantics)
# ---------------------------------------------------------------------------------------------

PAD_EOS = 2  # tiny models: pad = eos = 2, bos = 1


def synthetic_records(
    n: int, *, vocab_size: int, kind: Kind | Literal["dpo"] = "dpo", seed: int = 0, max_answer: int = 14
) -> list[list[Any]]:
    """n records of six TokSeqs with the structures RM-Bench produces.

    DPO: BOS + prompt + a 2-token shared answer header (labels start inside the common
    prefix), then per-slot answers ending in EOS; record r % 4 == 1 has a boundary merge in
    slot 1 (prompt's last token differs, label_start one earlier), r % 4 == 2 has a
    left-truncated prompt in style 2 (common prefix 0), r % 4 == 3 has identical chosen and
    rejected in style 0.
    Classifier: prompt + answer + EOS, pooled at the token before the EOS; r % 3 == 1 starts
    with a duplicated BOS that is masked (mask_first).
    """
    import numpy as np

    from rmbench_fast.records import TokSeq

    rng = np.random.default_rng(seed)

    def toks(k: int) -> list[int]:
        return [int(x) for x in rng.integers(3, vocab_size, size=k)]

    out: list[list[Any]] = []
    for r in range(n):
        prompt = [1] + toks(int(rng.integers(3, 20)))
        header = toks(2)
        answers = [toks(int(rng.integers(1, max_answer))) + [PAD_EOS] for _ in range(6)]
        if kind != "classifier" and r % 4 == 3:
            answers[3] = list(answers[0])
        group = []
        for slot in range(6):
            p = list(prompt)
            if kind == "classifier":
                if r % 3 == 1:
                    p = [1] + p
                ids = p + header + answers[slot]
                group.append(
                    TokSeq(ids=ids, label_start=len(ids), pool_index=len(ids) - 2, mask_first=r % 3 == 1)
                )
                continue
            start = len(p)
            if r % 4 == 1 and slot == 1:
                p[-1] = (p[-1] + 1 - 3) % (vocab_size - 3) + 3
                start -= 1
            if r % 4 == 2 and slot in (2, 5):
                p = p[2:]
                start -= 2
            ids = p + header + answers[slot]
            group.append(TokSeq(ids=ids, label_start=start))
        out.append(group)
    return out


def hf_reference_scores(
    model: Any,
    seqs: list[list[Any]],
    kind: Literal["dpo", "classifier"],
    mode: str = "avg",
    ref_model: Any = None,
) -> Any:
    """Scores [n, 6] float64 from an HF model run on each TokSeq alone (no padding, no sharing).

    DPO: lp_t = log_softmax(logits[t-1].float())[ids[t]] for t >= label_start; reward per
    SPEC §5 (ref: Σ lp - Σ lp_ref; avg / sum / norm). Classifier: the model's pooled logit,
    with attention mask 0 on a masked duplicated BOS.
    """
    import numpy as np
    import torch

    def lps(m: Any, s: Any) -> Any:
        ids = torch.tensor([s.ids])
        logits = m(input_ids=ids).logits[0].float()  # [L, V]
        lp = torch.log_softmax(logits[s.label_start - 1 : -1], dim=-1)
        return lp.gather(1, ids[0, s.label_start :, None])[:, 0].double()

    out = np.zeros((len(seqs), 6))
    with torch.no_grad():
        for r, group in enumerate(seqs):
            for j, s in enumerate(group):
                if kind == "classifier":
                    mask = torch.ones(1, len(s.ids), dtype=torch.long)
                    if s.mask_first:
                        mask[0, 0] = 0
                    out[r, j] = float(
                        model(input_ids=torch.tensor([s.ids]), attention_mask=mask).logits[0, 0]
                    )
                    continue
                lp = lps(model, s)
                if ref_model is not None:
                    out[r, j] = float(lp.sum() - lps(ref_model, s).sum())
                elif mode == "avg":
                    out[r, j] = float(lp.mean())
                elif mode == "sum":
                    out[r, j] = float(lp.sum())
                else:
                    out[r, j] = float(-lp.norm())
    return out
