"""Tokenization (SPEC §4 classifier path, §5 DPO path) against transformers and reward-bench."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from rmbench_fast.errors import DataError
from rmbench_fast.inputs.format import Formatter
from rmbench_fast.inputs.tokenization import (
    Tokenizer,
    encode_classifier,
    encode_dpo_pair,
    legacy_pool_index,
    pool_index,
    split_answer,
)
from rmbench_fast.records import TokSeq

IM_START, IM_END, NL = 1, 2, 198  # SmolLM2: <|im_start|> (BOS), <|im_end|> (EOS = pad), "\n"


@pytest.fixture(scope="module")
def tok(smollm2_dir: Path) -> Tokenizer:
    return Tokenizer(smollm2_dir)


@pytest.fixture(scope="module")
def transformers_mod() -> Any:
    return pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_tok(smollm2_dir: Path, transformers_mod: Any) -> Any:
    t = transformers_mod.AutoTokenizer.from_pretrained(str(smollm2_dir))
    t.pad_token = t.eos_token
    return t


@pytest.fixture(scope="module")
def official(hf_tok: Any) -> Any:
    """reward-bench's DPOInference (tokenize_row only), from the installed wheel.

    rewardbench/__init__.py imports heavy deps, so dpo.py is loaded by file path.
    """
    spec = importlib.util.find_spec("rewardbench")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("rewardbench not installed (pip install --no-deps rewardbench)")
    path = Path(list(spec.submodule_search_locations)[0]) / "dpo.py"
    mspec = importlib.util.spec_from_file_location("_rewardbench_dpo", path)
    assert mspec is not None and mspec.loader is not None
    mod = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(mod)
    inf = mod.DPOInference.__new__(mod.DPOInference)  # skip __init__: it needs a model
    inf.tokenizer = hf_tok
    inf.is_encoder_decoder = False
    inf.label_pad_token_id = -100
    inf.truncation_mode = "keep_end"
    inf.max_prompt_length = 128
    inf.max_length = 2048
    return inf


def assert_matches_official(official: Any, pt: str, fc: str, fr: str, ours: tuple[TokSeq, TokSeq]) -> None:
    row = official.tokenize_row({"prompt": pt, "text_chosen": fc, "text_rejected": fr})
    for seq, key in zip(ours, ("chosen_", "rejected_")):
        assert seq.ids == row[key + "input_ids"]
        # TRL: labels = ids with prompt positions at -100; every answer token is scored.
        assert row[key + "labels"] == [-100] * seq.label_start + seq.ids[seq.label_start :]
        assert seq.label_start >= 1


# ------------------------------------------------------------------------------------------
# Tokenizer wrapper
# ------------------------------------------------------------------------------------------

TEXTS = [
    "Hello world, it's 2024!",
    "consider:\n\n1. **Underwear Drawer**",
    "<|im_start|>user\nhi<|im_end|>\n</s><s>",
    "  naïve café 日本語 🤖\r\n\tdef f(x): return x**2\n",
]


def test_special_tokens(tok: Tokenizer) -> None:
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (IM_START, IM_END, IM_END)
    assert tok.has_chat_template


@pytest.mark.parametrize("text", TEXTS)
def test_encode_matches_transformers(tok: Tokenizer, hf_tok: Any, text: str) -> None:
    for special in (True, False):
        assert (
            tok.encode(text, add_special_tokens=special)
            == hf_tok(text, add_special_tokens=special)["input_ids"]
        )


def _variant(smollm2_dir: Path, dest: Path, *, bos_post: bool, cls: str, template: bool = False) -> Path:
    """A copy of the SmolLM2 tokenizer with a BOS-adding post-processor and another class."""
    dest.mkdir(parents=True, exist_ok=True)
    tj = json.loads((smollm2_dir / "tokenizer.json").read_text())
    if bos_post:
        bos = {"SpecialToken": {"id": "<|im_start|>", "type_id": 0}}
        seq = {"Sequence": {"id": "A", "type_id": 0}}
        tj["post_processor"] = {
            "type": "TemplateProcessing",
            "single": [bos, seq],
            "pair": [bos, seq, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {
                "<|im_start|>": {"id": "<|im_start|>", "ids": [IM_START], "tokens": ["<|im_start|>"]}
            },
        }
    (dest / "tokenizer.json").write_text(json.dumps(tj))
    cfg = json.loads((smollm2_dir / "tokenizer_config.json").read_text())
    cfg["tokenizer_class"] = cls
    cfg.pop("add_bos_token")  # Llama's default (True) then applies under 4.43.4
    if not template:
        cfg.pop("chat_template")
    (dest / "tokenizer_config.json").write_text(json.dumps(cfg))
    return dest


# ------------------------------------------------------------------------------------------
# Classifier path (SPEC §4)
# ------------------------------------------------------------------------------------------


def _hf_classifier_ids(
    transformers_mod: Any, d: Path, text: str, *, add_eos: bool, max_length: int
) -> list[int]:
    """What run_rm.py + RewardBenchPipeline feed the model (transformers 5)."""
    hf = transformers_mod.AutoTokenizer.from_pretrained(str(d))
    hf.truncation_side = "left"
    if add_eos:
        hf.add_eos_token = True
    return hf(text, truncation=True, max_length=max_length)["input_ids"]


@pytest.mark.parametrize("cls", ["PreTrainedTokenizerFast", "GPT2Tokenizer", "Qwen2Tokenizer"])
@pytest.mark.parametrize("add_eos", [False, True])
def test_classifier_matches_transformers(
    smollm2_dir: Path, tmp_path: Path, transformers_mod: Any, cls: str, add_eos: bool
) -> None:
    """transformers 5: add_eos_token=True rebuilds the post-processor of every fast tokenizer,
    dropping the BOS its tokenizer.json added and appending EOS."""
    d = _variant(smollm2_dir, tmp_path / cls, bos_post=True, cls=cls)
    tok = Tokenizer(d)
    text = "Hello there\nsecond line 42 " * 5
    for max_length in (2048, 9):
        seq = encode_classifier(tok, text, max_length=max_length, add_eos=add_eos, pad_id=IM_END)
        assert seq.ids == _hf_classifier_ids(
            transformers_mod, d, text, add_eos=add_eos, max_length=max_length
        )
        assert seq.label_start == len(seq.ids) and seq.n_labels == 0
    short = encode_classifier(tok, text, max_length=9, add_eos=add_eos, pad_id=IM_END)
    full = tok.encode(text, add_special_tokens=False)
    if add_eos:  # [text tail] + EOS, no BOS; the pool skips the trailing EOS (= pad)
        assert short.ids == [*full[-8:], IM_END] and short.pool_index == 7
        assert tok.eos_switch().describe().startswith("add_eos_token rebuilt the post-processor: no BOS")
    else:  # BOS + [text tail]: left truncation keeps the end of the text
        assert short.ids == [IM_START, *full[-8:]] and short.pool_index == 8


def test_eos_switch_legacy_rule(smollm2_dir: Path, tmp_path: Path) -> None:
    """transformers 4.43.4: only Llama/Gemma/CodeLlama classes honour the switch, keeping BOS."""
    llama = Tokenizer(_variant(smollm2_dir, tmp_path / "llama", bos_post=True, cls="LlamaTokenizerFast"))
    gpt2 = Tokenizer(_variant(smollm2_dir, tmp_path / "gpt2", bos_post=True, cls="GPT2TokenizerFast"))
    sw = llama.eos_switch("4.43.4")
    assert sw.applies and sw.adds_bos and sw.appends_eos
    assert not gpt2.eos_switch("4.43.4").applies
    assert "ignored" in gpt2.eos_switch("4.43.4").describe()
    text = "a b c"
    body = llama.encode(text, add_special_tokens=False)
    assert encode_classifier(llama, text, add_eos=True, pad_id=IM_END, rule="4.43.4").ids == [
        IM_START,
        *body,
        IM_END,
    ]
    assert encode_classifier(gpt2, text, add_eos=True, pad_id=IM_END, rule="4.43.4").ids == [IM_START, *body]
    assert encode_classifier(gpt2, text, add_eos=True, pad_id=IM_END).ids == [*body, IM_END]


def test_double_bos_masks_first(smollm2_dir: Path, tmp_path: Path, tok: Tokenizer) -> None:
    # A BOS-adding tokenizer and a template that also writes BOS.
    bos_tok = Tokenizer(_variant(smollm2_dir, tmp_path / "bos", bos_post=True, cls="PreTrainedTokenizerFast"))
    seq = encode_classifier(bos_tok, "<|im_start|>user\nhi", add_eos=False, pad_id=IM_END)
    assert seq.ids[:2] == [IM_START, IM_START] and seq.mask_first
    assert not encode_classifier(bos_tok, "user\nhi", add_eos=False, pad_id=IM_END).mask_first
    # SmolLM2 adds no BOS; a single leading BOS is not doubled, two are.
    assert not encode_classifier(tok, "<|im_start|>user", add_eos=False, pad_id=IM_END).mask_first
    assert encode_classifier(tok, "<|im_start|><|im_start|>user", add_eos=False, pad_id=IM_END).mask_first
    # Left truncation can cut the duplicated BOS away.
    cut = encode_classifier(
        bos_tok, "<|im_start|>user\nhi there you", max_length=4, add_eos=False, pad_id=IM_END
    )
    assert len(cut.ids) == 4 and not cut.mask_first


def test_pool_index_rules() -> None:
    pad = 2
    # Current rule: rightmost non-pad.
    assert pool_index([5, 6, 7], pad) == 2
    assert pool_index([5, 6, 2], pad) == 1  # pad = EOS and text ends with EOS
    assert pool_index([5, 2, 7, 2, 2], pad) == 2
    assert pool_index([2, 2], pad) == 0  # all pad: argmax of zeros
    assert pool_index([5, 2], None) == 1
    # 4.43.4 rule: first pad - 1, modulo the padded length.
    assert legacy_pool_index([5, 6, 7], pad) == 2  # no pad: -1 % L = last
    assert legacy_pool_index([5, 6, 2], pad) == 1
    assert legacy_pool_index([5, 2, 7, 8], pad) == 0  # EOS inside the prompt: pools there
    assert legacy_pool_index([2, 5, 6], pad) == 2  # pad at 0: -1 % L
    assert legacy_pool_index([5, 6], pad, padded_len=4) == 1  # right padding starts at len
    assert legacy_pool_index([2, 6], pad, padded_len=4) == 3  # ... pad at 0 wraps to the batch end


def test_classifier_pool_with_chat_template(tok: Tokenizer) -> None:
    f = Formatter.from_config(tok.config, None)
    text = f.full_text("Hi?", "Yes.")  # ends "<|im_end|>\n": the last token is "\n", not pad
    seq = encode_classifier(tok, text, add_eos=False, pad_id=tok.pad_id)
    assert seq.ids[-2:] == [IM_END, NL] and seq.pool_index == len(seq.ids) - 1
    # pad = EOS appears inside (system and user turns end with it): the 4.43.4 rule pooled in the prompt.
    legacy = legacy_pool_index(seq.ids, tok.pad_id)
    assert seq.ids[legacy + 1] == IM_END and legacy < seq.ids.index(IM_END, 5)


# ------------------------------------------------------------------------------------------
# DPO path (SPEC §5)
# ------------------------------------------------------------------------------------------


def test_dpo_chat_template_answer_has_header_and_eos(tok: Tokenizer, official: Any) -> None:
    f = Formatter.from_config(tok.config, None)
    pt, fc, fr = f.prompt_text("Hi?"), f.full_text("Hi?", "Yes."), f.full_text("Hi?", "No way.")
    chosen, rejected = encode_dpo_pair(tok, pt, fc, fr)
    assert chosen.ids[0] == IM_START  # BOS prepended...
    assert chosen.ids[1] == IM_START  # ...although the template starts with it too (not masked in DPO)
    answer = chosen.ids[chosen.label_start :]
    header = tok.encode("<|im_start|>assistant\n", add_special_tokens=False)
    assert answer[: len(header)] == header  # the assistant header is scored
    assert answer[-3:] == [IM_END, NL, IM_END]  # template EOS + "\n" + appended EOS, all scored
    assert chosen.ids[: chosen.label_start] == rejected.ids[: rejected.label_start]
    assert_matches_official(official, pt, fc, fr, (chosen, rejected))


def test_dpo_boundary_merge(tok: Tokenizer, official: Any) -> None:
    pt, fc, fr = "Hello wor", "Hello world", "Hello wor ok"
    p = tok.encode(pt, add_special_tokens=False)
    f = tok.encode(fc, add_special_tokens=False)
    assert f[: len(p)] != p  # "Ġwor" + "ld" merges into "Ġworld"
    prompt_ids, answer_ids = split_answer(tok, pt, "ld")
    assert prompt_ids == f[: len(p) - 1] and answer_ids == f[len(p) - 1 :]
    chosen, rejected = encode_dpo_pair(tok, pt, fc, fr)
    assert chosen.label_start == len(p)  # BOS + one prompt token less
    assert rejected.label_start == len(p) + 1  # no merge for " ok"
    assert_matches_official(official, pt, fc, fr, (chosen, rejected))


def test_dpo_prompt_not_substring_and_replace_all(tok: Tokenizer, official: Any) -> None:
    # Not a substring: the whole full text is the answer, after the prompt text.
    pt, fc, fr = "PROMPT:", "something else", "PROMPT: x PROMPT: y"
    chosen, rejected = encode_dpo_pair(tok, pt, fc, fr)
    assert chosen.ids == [IM_START, *tok.encode(pt + fc, add_special_tokens=False), IM_END]
    # replace() strips every occurrence: the answer is " x  y".
    assert rejected.ids == [IM_START, *tok.encode(pt + " x  y", add_special_tokens=False), IM_END]
    assert_matches_official(official, pt, fc, fr, (chosen, rejected))


def test_dpo_pair_truncation(tok: Tokenizer, official: Any) -> None:
    pt = "Question: " + "why " * 300
    fc = pt + " Short."
    fr = pt + " Long" * 1950  # the rejected answer alone nearly fills max_length
    chosen, rejected = encode_dpo_pair(tok, pt, fc, fr)
    full_prompt = 1 + len(tok.encode(pt, add_special_tokens=False))
    assert full_prompt > 128
    # L is shared: the short chosen answer still loses its prompt start (BOS included).
    assert chosen.label_start == 128 and chosen.ids[0] != IM_START
    assert rejected.label_start == 128
    assert len(rejected.ids) == 128 + 2048 - 128  # answer cut to max_length - max_prompt_length
    assert rejected.ids[-1] != IM_END  # the appended EOS was cut off
    assert chosen.ids[-1] == IM_END
    assert_matches_official(official, pt, fc, fr, (chosen, rejected))
    # Small limits exercise the same rules without long texts.
    c2, r2 = encode_dpo_pair(
        tok, "a b c d e f", "a b c d e f g", "a b c d e f g h i j", max_length=8, max_prompt_length=3
    )
    assert c2.label_start == r2.label_start == 3
    assert len(r2.ids) == 3 + 5 and len(c2.ids) == 3 + 2


def test_dpo_shorter_full_text_raises(tok: Tokenizer) -> None:
    """prompt + answer tokenizing shorter than the prompt: the official code raises, so do we."""

    class Shrinking(Tokenizer):
        def encode(self, text: str, add_special_tokens: bool) -> list[int]:
            return [7] if len(text) > 2 else [7, 8, 9]

    shrinking = Shrinking.__new__(Shrinking)
    shrinking.__dict__.update(tok.__dict__)
    with pytest.raises(DataError, match="official DPO code fails"):
        split_answer(shrinking, "ab", "cd")


def test_dpo_matches_official_on_rm_bench(tok: Tokenizer, official: Any, rm_bench_data_dir: Path) -> None:
    """First 24 records of each shared domain, 3 styles, SmolLM2 chat template."""
    f = Formatter.from_config(tok.config, None)
    n = 0
    for name in ("chat", "code", "safety-refuse"):
        records = json.loads((rm_bench_data_dir / f"{name}_filtered.json").read_text())[:24]
        for r in records:
            pt = f.prompt_text(r["prompt"])
            for k in range(3):
                fc, fr = f.full_text(r["prompt"], r["chosen"][k]), f.full_text(r["prompt"], r["rejected"][k])
                assert_matches_official(official, pt, fc, fr, encode_dpo_pair(tok, pt, fc, fr))
                n += 1
    assert n == 3 * 24 * 3


def test_gpt2_class_pipeline_rebuilt_like_transformers5(
    smollm2_dir: Path, tmp_path: Path, hf_tok: Any
) -> None:
    """transformers 5 gives a GPT2Tokenizer-class directory a plain byte-level pre-tokenizer
    (dropping SmolLM's Digits step); a PreTrainedTokenizerFast one keeps tokenizer.json's."""
    transformers = pytest.importorskip("transformers")
    d = _variant(smollm2_dir, tmp_path / "gpt2", bos_post=False, cls="GPT2Tokenizer", template=True)
    gpt2 = Tokenizer(d)
    hf_gpt2 = transformers.AutoTokenizer.from_pretrained(str(d))
    text = "consider:\n\n1. **x** 2024\n\n3"
    assert gpt2.rebuilt_pipeline and not Tokenizer(smollm2_dir).rebuilt_pipeline
    assert gpt2.encode(text, add_special_tokens=True) == hf_gpt2(text)["input_ids"]
    plain = Tokenizer(smollm2_dir).encode(text, add_special_tokens=True)
    assert plain == hf_tok(text)["input_ids"]
    assert plain != gpt2.encode(text, add_special_tokens=True)
