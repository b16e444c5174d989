"""Tokenization for both scoring paths, with the `tokenizers` library only (SPEC §4, §5).

`Tokenizer` loads `tokenizer.json` + `tokenizer_config.json` (+ `special_tokens_map.json`) and
encodes like transformers' fast tokenizer (`TokenizersBackend` in transformers 5) loaded from the
same directory: the `tokenizer.json` pipeline, plus the named special tokens of the config as
added special tokens (transformers adds the missing ones on load). transformers 5 replaces the
normalizer/pre-tokenizer/decoder of classes with their own `__init__` by the class's; we
replicate that for GPT2Tokenizer only (`Tokenizer.rebuilt_pipeline`), see
`_rebuild_like_transformers5`.

Classifier path (SPEC §4, RM-Bench run_rm.py + reward-bench RewardBenchPipeline):
    ids = post_process(last (max_length - n_special) tokens of tok(text))     (left truncation)
    mask_first = bos_token set and ids[0] == ids[1] == bos_id                   (double BOS)
    pool_index = max{t : ids[t] != pad_id}  (0 if none; last token if pad_id is None)

`tokenizer.add_eos_token = True` (set by run_rm.py when there is no chat template). What it does
depends on the transformers version (see `eos_switch`):
- transformers 5 (current; the default here): the setter exists on the `TokenizersBackend` base
  class, so *every* fast tokenizer honours it, whatever its class. It replaces the
  tokenizer.json post-processor by `$A <eos>`: EOS is appended and a BOS that the post-processor
  used to add is dropped (transformers 5 ignores `add_bos_token` from tokenizer_config.json when a
  tokenizer.json exists, so `add_bos_token` is False there). With no EOS token nothing is added.
- transformers 4.43.4 (the pinned version): only Llama/Gemma/CodeLlama fast tokenizers implement
  the switch; they rebuild the post-processor as `[<bos>] $A <eos>` (BOS kept if
  `add_bos_token`, default true); every other class ignores it.

DPO path (SPEC §5, reward-bench `DPOInference.tokenize_row` / `build_tokenized_answer`): see
`encode_dpo_pair`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rmbench_fast.errors import DataError, ModelError, TemplateError
from rmbench_fast.records import TokSeq

SPECIAL_TOKEN_KEYS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)
# Class defaults transformers applies when the config does not name a token at all.
_CLASS_DEFAULT_TOKENS: dict[str, dict[str, str]] = {
    "GPT2Tokenizer": {
        "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
    },
    "LlamaTokenizer": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
}
# transformers 4.43.4 fast tokenizers whose `add_eos_token` setter rebuilt the post-processor.
_V4_EOS_SWITCH_CLASSES = ("LlamaTokenizer", "GemmaTokenizer", "CodeLlamaTokenizer")

EosRule = Literal["current", "4.43.4"]


def _token_content(value: Any) -> str | None:
    """A special token as written in a config: a string, or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _base_class(name: str | None) -> str:
    return (name or "").removesuffix("Fast")


@dataclass(frozen=True)
class TokenizerConfig:
    """What a model directory says about its tokenizer, beyond tokenizer.json."""

    model_dir: Path
    raw: dict[str, Any]
    special_tokens: dict[str, str]  # named special tokens (bos_token, ...) -> content; set ones only
    extra_special_tokens: tuple[str, ...]
    chat_template: str | None
    tokenizer_class: str | None
    add_bos_token: bool | None = None  # as written in the config (ignored by transformers 5)
    added_tokens_decoder: dict[int, dict[str, Any]] = field(default_factory=dict)


def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read JSON: {e}", file=str(path)) from None
    if not isinstance(data, dict):
        raise ModelError("expected a JSON object", file=str(path))
    return data


def _read_chat_template(model_dir: Path, raw: dict[str, Any]) -> str | None:
    """The template transformers' apply_chat_template would use (no tools, no name given)."""
    templates: dict[str, str] = {}
    jinja_file = model_dir / "chat_template.jinja"
    if jinja_file.is_file():  # separate template files win over the config entry
        templates["default"] = jinja_file.read_text(encoding="utf-8")
    extra_dir = model_dir / "additional_chat_templates"
    if extra_dir.is_dir():
        for f in sorted(extra_dir.glob("*.jinja")):
            templates[f.stem] = f.read_text(encoding="utf-8")
    if not templates:
        value = raw.get("chat_template")
        if value is None or isinstance(value, str):
            return value
        if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
            raise TemplateError(
                "chat_template must be a string or a list of {name, template}", field="chat_template"
            )
        templates = {str(t.get("name")): str(t.get("template")) for t in value}
    if "default" in templates:
        return templates["default"]
    raise TemplateError(
        f"{model_dir}: several chat templates ({', '.join(sorted(templates))}) and none named 'default'"
    )


def read_tokenizer_config(model_dir: Path) -> TokenizerConfig:
    """Read tokenizer_config.json (+ special_tokens_map.json, chat template files) like transformers 5."""
    model_dir = Path(model_dir)
    cfg_path = model_dir / "tokenizer_config.json"
    raw = _load_json(cfg_path) if cfg_path.is_file() else {}
    values: dict[str, Any] = dict(raw)
    # transformers 5 merges special_tokens_map.json over the config only for legacy configs
    # (those without added_tokens_decoder).
    stm = model_dir / "special_tokens_map.json"
    if stm.is_file() and "added_tokens_decoder" not in raw:
        values.update(_load_json(stm))
    tok_class = raw.get("tokenizer_class")
    defaults = _CLASS_DEFAULT_TOKENS.get(_base_class(tok_class), {})
    special: dict[str, str] = {}
    for key in SPECIAL_TOKEN_KEYS:
        content = _token_content(values[key]) if key in values else defaults.get(key)
        if content is not None:
            special[key] = content
    extra_raw = values.get("extra_special_tokens") or values.get("additional_special_tokens") or []
    # A dict here holds model-specific named tokens, which transformers does not add as a list.
    extra_list = extra_raw if isinstance(extra_raw, list) else []
    extra = tuple(c for c in (_token_content(v) for v in extra_list) if c)
    added = {int(k): v for k, v in (raw.get("added_tokens_decoder") or {}).items() if isinstance(v, dict)}
    add_bos = raw.get("add_bos_token")
    return TokenizerConfig(
        model_dir=model_dir,
        raw=raw,
        special_tokens=special,
        extra_special_tokens=extra,
        chat_template=_read_chat_template(model_dir, raw),
        tokenizer_class=tok_class,
        add_bos_token=bool(add_bos) if add_bos is not None else None,
        added_tokens_decoder=added,
    )


@dataclass(frozen=True)
class EosSwitch:
    """What `tokenizer.add_eos_token = True` does to this tokenizer (for run metadata)."""

    applies: bool  # the post-processor is rebuilt
    appends_eos: bool
    adds_bos: bool  # only meaningful when `applies`
    rule: str  # "current" (transformers 5) or "4.43.4"

    def describe(self) -> str:
        if not self.applies:
            return f"add_eos_token ignored by this tokenizer class (transformers {self.rule})"
        parts = ["BOS kept" if self.adds_bos else "no BOS", "EOS appended" if self.appends_eos else "no EOS"]
        return f"add_eos_token rebuilt the post-processor: {', '.join(parts)} (transformers {self.rule})"


def _rebuild_like_transformers5(backend: Any, config: TokenizerConfig) -> bool:
    """transformers 5 rebuilds the pipeline of tokenizer classes that define their own
    `__init__`: only vocab, merges and post-processor come from tokenizer.json; normalizer,
    pre-tokenizer and decoder come from the class. We replicate the class we know to change
    real tokenizers: GPT2Tokenizer (plain byte-level split, so e.g. SmolLM's `Digits` step is
    dropped). Returns whether the pipeline was changed. Other classes keep tokenizer.json's
    pipeline (PreTrainedTokenizerFast/TokenizersBackend load it as is)."""
    if _base_class(config.tokenizer_class) != "GPT2Tokenizer":
        return False
    from tokenizers import decoders, pre_tokenizers  # start-up cost: tokenizers

    before = (backend.normalizer, backend.pre_tokenizer)
    prefix = bool(config.raw.get("add_prefix_space", False))
    backend.normalizer = None
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix)
    backend.decoder = decoders.ByteLevel()
    return repr(before) != repr((backend.normalizer, backend.pre_tokenizer))


class Tokenizer:
    """A fast tokenizer from a model directory, encoding like transformers' AutoTokenizer."""

    def __init__(self, model_dir: Path | str, config: TokenizerConfig | None = None) -> None:
        from tokenizers import AddedToken  # start-up cost: tokenizers
        from tokenizers import Tokenizer as Backend  # start-up cost: tokenizers

        self.model_dir = Path(model_dir)
        path = self.model_dir / "tokenizer.json"
        if not path.is_file():
            raise ModelError("no tokenizer.json (only fast tokenizers are supported)", file=str(path))
        self.config = config if config is not None else read_tokenizer_config(self.model_dir)
        try:
            self.backend = Backend.from_file(str(path))
        except Exception as e:  # the tokenizers library raises plain Exception subclasses
            raise ModelError(f"cannot load tokenizer: {e}", file=str(path)) from None
        # transformers adds the config's special tokens that tokenizer.json lacks (on load).
        present = {t.content for t in self.backend.get_added_tokens_decoder().values()}
        missing = []
        for entry in self.config.added_tokens_decoder.values():
            content = entry.get("content")
            if isinstance(content, str) and content not in present:
                flags = {
                    k: bool(entry[k]) for k in ("single_word", "lstrip", "rstrip", "normalized") if k in entry
                }
                missing.append(AddedToken(content, special=bool(entry.get("special", True)), **flags))
                present.add(content)
        for content in [*self.config.special_tokens.values(), *self.config.extra_special_tokens]:
            if content not in present:
                missing.append(AddedToken(content, special=True, normalized=False))
                present.add(content)
        if missing:
            self.backend.add_special_tokens(missing)
        self.rebuilt_pipeline = _rebuild_like_transformers5(self.backend, self.config)
        self._truncating: dict[tuple[int, bool, str], Any] = {}

    # -- special tokens -------------------------------------------------------------------
    def _token(self, key: str) -> str | None:
        return self.config.special_tokens.get(key)

    def token_id(self, token: str | None) -> int | None:
        return None if token is None else self.backend.token_to_id(token)

    @property
    def bos_token(self) -> str | None:
        return self._token("bos_token")

    @property
    def eos_token(self) -> str | None:
        return self._token("eos_token")

    @property
    def pad_token(self) -> str | None:
        return self._token("pad_token")

    @property
    def bos_id(self) -> int | None:
        return self.token_id(self.bos_token)

    @property
    def eos_id(self) -> int | None:
        return self.token_id(self.eos_token)

    @property
    def pad_id(self) -> int | None:
        return self.token_id(self.pad_token)

    @property
    def has_chat_template(self) -> bool:
        return self.config.chat_template is not None

    # -- encoding -------------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        """transformers' `tok(text, add_special_tokens=...)["input_ids"]` (no truncation)."""
        return list(self.backend.encode(text, add_special_tokens=add_special_tokens).ids)

    def eos_switch(self, rule: EosRule = "current") -> EosSwitch:
        """What `add_eos_token = True` does here, under transformers 5 or 4.43.4 (module doc)."""
        if rule == "current":
            has_eos = self.eos_id is not None
            return EosSwitch(applies=True, appends_eos=has_eos, adds_bos=False, rule="current")
        if _base_class(self.config.tokenizer_class) in _V4_EOS_SWITCH_CLASSES:
            add_bos = self.config.add_bos_token if self.config.add_bos_token is not None else True
            return EosSwitch(
                applies=True,
                appends_eos=self.eos_id is not None,
                adds_bos=add_bos and self.bos_id is not None,
                rule="4.43.4",
            )
        return EosSwitch(applies=False, appends_eos=False, adds_bos=False, rule="4.43.4")

    def _classifier_backend(self, max_length: int, add_eos: bool, rule: EosRule) -> Any:
        """A copy of the backend with left truncation at max_length and, if asked, the
        post-processor that `add_eos_token = True` installs."""
        key = (max_length, add_eos, rule)
        if key not in self._truncating:
            from tokenizers import Tokenizer as Backend  # start-up cost: tokenizers
            from tokenizers import processors  # start-up cost: tokenizers

            backend = Backend.from_str(self.backend.to_str())
            switch = self.eos_switch(rule) if add_eos else None
            if switch is not None and switch.applies:
                bos, eos = self.bos_token, self.eos_token
                single = ([f"{bos}:0"] if switch.adds_bos else []) + ["$A:0"]
                special = [(bos, self.bos_id)] if switch.adds_bos else []
                if switch.appends_eos:
                    single.append(f"{eos}:0")
                    special.append((eos, self.eos_id))
                backend.post_processor = processors.TemplateProcessing(
                    single=" ".join(single), pair=" ".join(single) + " $B:1", special_tokens=special
                )
            # transformers: truncation=True, max_length=..., truncation_side="left"; the Rust
            # truncation leaves room for the post-processor's special tokens.
            backend.enable_truncation(max_length, direction="left")
            self._truncating[key] = backend
        return self._truncating[key]


# ---------------------------------------------------------------------------------------------
# Classifier path (SPEC §4)
# ---------------------------------------------------------------------------------------------


def pool_index(ids: list[int], pad_id: int | None) -> int:
    """transformers' current sequence-classifier pooling: the rightmost token != pad_id.

    All tokens pad -> 0 (argmax of an all-zero mask); pad_id None -> the last token.
    """
    if pad_id is None:
        return len(ids) - 1
    for t in range(len(ids) - 1, -1, -1):
        if ids[t] != pad_id:
            return t
    return 0


def legacy_pool_index(ids: list[int], pad_id: int | None, padded_len: int | None = None) -> int:
    """Where transformers 4.43.4 pooled: (first position equal to pad_id) - 1, modulo the
    padded length L = `padded_len` (default len(ids), i.e. the longest sequence of its batch
    or a right-padded one, whose padding starts right after its last token).

    - No pad in ids (and right padding): argmax finds no pad -> 0 - 1 = -1 -> L - 1, the last token
      when the sequence is not padded; when padded (len < L) the first pad is at len, so len - 1.
    - Pad at position 0: -1 -> L - 1.
    - Pad inside the text (pad = EOS and a template writing EOS): pools just before it, inside
      the prompt, so all six responses of a record tie.
    pad_id None -> the last token (as today).
    """
    L = padded_len if padded_len is not None else len(ids)
    if pad_id is None:
        return len(ids) - 1
    first = next((t for t, i in enumerate(ids) if i == pad_id), len(ids) if len(ids) < L else 0)
    return (first - 1) % L


def encode_classifier(
    tok: Tokenizer,
    text: str,
    *,
    max_length: int = 2048,
    add_eos: bool,
    pad_id: int | None,
    rule: EosRule = "current",
) -> TokSeq:
    """One classifier sequence (SPEC §4): special tokens on, left truncation to max_length.

    add_eos: the script set `add_eos_token = True` (no chat template); its effect follows
    `tok.eos_switch(rule)`. pad_id: the model config's pad_token_id (pad = EOS if none).
    Returns TokSeq with label_start = len(ids) (no labels), pool_index, mask_first.
    """
    backend = tok._classifier_backend(max_length, add_eos, rule)
    ids = list(backend.encode(text, add_special_tokens=True).ids)
    bos = tok.bos_id if tok.bos_token else None
    mask_first = bos is not None and len(ids) >= 2 and ids[0] == bos and ids[1] == bos
    return TokSeq(ids=ids, label_start=len(ids), pool_index=pool_index(ids, pad_id), mask_first=mask_first)


def encode_causal_logit(tok: Tokenizer, text: str, *, max_length: int = 2048) -> TokSeq:
    """A causal-logit reward sequence: the chat template's text (its own special tokens
    included, so none are added, as apply_chat_template(tokenize=True) does), left-truncated
    to max_length, read at its last token (the next token's logits)."""
    ids = tok.encode(text, add_special_tokens=False)[-max_length:]
    return TokSeq(ids=ids, label_start=len(ids), pool_index=len(ids) - 1, mask_first=False)


# ---------------------------------------------------------------------------------------------
# DPO path (SPEC §5)
# ---------------------------------------------------------------------------------------------


def split_answer(tok: Tokenizer, prompt_text: str, answer: str) -> tuple[list[int], list[int]]:
    """reward-bench `build_tokenized_answer`: (prompt ids, answer ids), no special tokens.

    p = tok(prompt), f = tok(prompt + answer). Answer = f[len(p):], unless p is not a prefix of f
    (a merge across the boundary): then the split moves one token left, f[:len(p)-1] | f[len(p)-1:].
    """
    p = tok.encode(prompt_text, add_special_tokens=False)
    f = tok.encode(prompt_text + answer, add_special_tokens=False)
    if len(f) < len(p):
        # The official code raises here ("Prompt input ids and answer input ids should have the same length").
        raise DataError(
            "prompt + answer tokenizes shorter than the prompt alone; the official DPO code fails here"
        )
    start = len(p) if f[: len(p)] == p else len(p) - 1
    return f[:start], f[start:]


def encode_dpo_pair(
    tok: Tokenizer,
    prompt_text: str,
    chosen_full: str,
    rejected_full: str,
    *,
    max_length: int = 2048,
    max_prompt_length: int = 128,
) -> tuple[TokSeq, TokSeq]:
    """reward-bench `DPOInference.tokenize_row` for one (chosen, rejected) pair of one style.

    For each member: answer = full.replace(prompt_text, "") (every occurrence); split_answer;
    prompt = [BOS] + prompt ids (BOS = EOS when the tokenizer has none), answer += [EOS].
    L = max(len(chosen answer), len(rejected answer)), shared by the pair. If len(prompt) + L >
    max_length: prompt = prompt[-max_prompt_length:]; if still over, answer =
    answer[:max_length - max_prompt_length]. Sequence = prompt + answer.

    Labels (TRL): labels = ids with the prompt positions set to -100, then shifted
    (labels[1:] vs logits[:-1]): every answer token, the first included, is scored by the
    log-prob at the previous position. So label_start = len(prompt) >= 1.
    """
    bos = tok.bos_id if tok.bos_id is not None else tok.eos_id
    eos = tok.eos_id
    if bos is None or eos is None:
        raise ModelError("the tokenizer has no EOS token; DPO scoring needs one", file=str(tok.model_dir))
    members = []
    for full in (chosen_full, rejected_full):
        prompt_ids, answer_ids = split_answer(tok, prompt_text, full.replace(prompt_text, ""))
        members.append(([bos, *prompt_ids], [*answer_ids, eos]))
    longest = max(len(a) for _, a in members)
    out = []
    for prompt_ids, answer_ids in members:
        if len(prompt_ids) + longest > max_length:
            prompt_ids = prompt_ids[-max_prompt_length:]
        if len(prompt_ids) + longest > max_length:
            answer_ids = answer_ids[: max_length - max_prompt_length]
        out.append(TokSeq(ids=prompt_ids + answer_ids, label_start=len(prompt_ids)))
    return out[0], out[1]
