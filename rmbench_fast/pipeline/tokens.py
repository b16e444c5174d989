"""Step 3, the tokens: the records formatted with the chat template and tokenized, six sequences
per record, with the pooling rules (the classifier's pad id, a reward head's own pooled token,
where transformers 4.43.4 would have pooled differently)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rmbench_fast.errors import DataError
from rmbench_fast.pipeline.data import LoadedData
from rmbench_fast.pipeline.memo import EvalCache
from rmbench_fast.pipeline.models import ModelChoice
from rmbench_fast.records import N_STYLES, Record, TokSeq
from rmbench_fast.settings import RunConfig


def tokenizer_fingerprint(model_dir: Path) -> str:
    """sha256 over the files that decide tokenization and the chat template (those `Tokenizer`
    and `Formatter` read)."""
    h = hashlib.sha256()
    names = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"]
    extra = model_dir / "additional_chat_templates"
    if extra.is_dir():
        names += [f"additional_chat_templates/{f.name}" for f in sorted(extra.glob("*.jinja"))]
    for name in names:
        path = model_dir / name
        h.update(name.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"-") + b"\0")
    return h.hexdigest()


def classifier_pad_id(info: Any, tok: Any) -> int | None:
    """The pad id run_rm.py leaves in `model.config.pad_token_id`, which the classifier pools
    with: a tokenizer without a pad token gets pad = EOS, which also overrides the config's
    value; otherwise a missing config pad is filled from the tokenizer's."""
    from rmbench_fast.backends.hf import resolve_classifier_pad_id  # start-up cost: torch (backends.hf)

    return resolve_classifier_pad_id(info.pad_token_id, tok.pad_id, tok.eos_id)


def tokenize_records(
    records: Sequence[Record],
    formatter: Any,
    tok: Any,
    kind: str,
    *,
    add_eos: bool = False,
    pad_id: int | None = None,
    max_length: int = 2048,
    max_prompt_length: int = 128,
) -> list[list[TokSeq]]:
    """Six TokSeqs per record in slot order (chosen 0..2, rejected 0..2).

    DPO: each style k's (chosen, rejected) is tokenized as a pair (SPEC §5).
    Classifier: each full text alone (SPEC §4), pooled at the rightmost non-`pad_id` token.
    """
    out: list[list[TokSeq]] = []
    for rec in records:
        try:
            out.append(
                _tokenize_record(
                    rec,
                    formatter,
                    tok,
                    kind,
                    add_eos=add_eos,
                    pad_id=pad_id,
                    lengths=(max_length, max_prompt_length),
                )
            )
        except DataError as e:
            # Name the record: the tokenizer only knows the text.
            raise DataError(str(e), file=rec.source, record=rec.index, record_id=rec.id) from None
    return out


def _tokenize_record(
    rec: Record,
    formatter: Any,
    tok: Any,
    kind: str,
    *,
    add_eos: bool,
    pad_id: int | None,
    lengths: tuple[int, int] = (2048, 128),
) -> list[TokSeq]:
    # start-up cost: tokenizers
    from rmbench_fast.inputs.tokenization import encode_causal_logit, encode_classifier, encode_dpo_pair

    if kind == "causal-logit":
        texts = [
            formatter.full_text(rec.prompt, rec.response(s), generation_prompt=True)
            for s in range(2 * N_STYLES)
        ]
        return [encode_causal_logit(tok, t, max_length=lengths[0]) for t in texts]
    prompt_text = formatter.prompt_text(rec.prompt)
    fulls = [formatter.full_text(rec.prompt, rec.response(s)) for s in range(2 * N_STYLES)]
    max_length, max_prompt = lengths
    if kind == "dpo":
        pairs = [
            encode_dpo_pair(
                tok,
                prompt_text,
                fulls[k],
                fulls[N_STYLES + k],
                max_length=max_length,
                max_prompt_length=max_prompt,
            )
            for k in range(N_STYLES)
        ]
        return [p[0] for p in pairs] + [p[1] for p in pairs]
    return [
        encode_classifier(tok, text, add_eos=add_eos, pad_id=pad_id, max_length=max_length) for text in fulls
    ]


def head_pooling(seqs: list[list[TokSeq]], head: Any, pad_id: int | None) -> list[list[TokSeq]]:
    """A custom reward head's own pooled token and BOS masking (modelio.NativeHead), as its
    official pipeline scores it: "last_token" (GRM) reads len(ids) - 1; "first_pad" (INF-ORM)
    reads (first pad) - 1, transformers 4.43.4's rule written into the head's forward; a
    duplicated BOS is masked only where that pipeline masks it."""

    from rmbench_fast.inputs.tokenization import legacy_pool_index  # start-up cost: tokenizers

    def one(s: TokSeq) -> TokSeq:
        pool = s.pool_index
        if head.pooling == "last_token":
            pool = len(s.ids) - 1
        elif head.pooling == "first_pad":
            pool = legacy_pool_index(s.ids, pad_id)
        return replace(s, pool_index=pool, mask_first=s.mask_first and head.mask_double_bos)

    return [[one(s) for s in group] for group in seqs]


def legacy_pooling_diffs(
    records: Sequence[Record], seqs: Sequence[Sequence[TokSeq]], pad_id: int | None
) -> list[dict[str, Any]]:
    """Sequences where transformers 4.43.4's pooling ((first pad) - 1) differs from today's
    (rightmost non-pad): those records would have scored differently under the pinned version."""
    from rmbench_fast.inputs.tokenization import legacy_pool_index  # start-up cost: tokenizers

    diffs = []
    for rec, group in zip(records, seqs):
        for slot, s in enumerate(group):
            legacy = legacy_pool_index(s.ids, pad_id)
            if legacy != s.pool_index:
                diffs.append(
                    {
                        "record": rec.index,
                        "id": rec.id,
                        "slot": slot,
                        "pool": s.pool_index,
                        "pool_4_43_4": legacy,
                    }
                )
    return diffs


@dataclass
class Tokenized:
    formatter: Any
    tok: Any
    add_eos: bool
    pad_id: int | None
    key: tuple[Any, ...]
    seqs: list[list[TokSeq]]
    legacy: list[dict[str, Any]]


def tokenize_run(
    cfg: RunConfig, data: LoadedData, model: ModelChoice, cache: EvalCache, log: Callable[[str], None]
) -> Tokenized:
    """Step 3: format with the chat template and tokenize (shared across a sweep by fingerprint)."""
    from rmbench_fast.inputs.format import Formatter  # start-up cost: jinja2
    from rmbench_fast.inputs.tokenization import Tokenizer  # start-up cost: tokenizers

    formatter = Formatter.from_model_dir(model.model_dir, cfg.chat_template)
    tok = Tokenizer(model.model_dir)
    kind = model.kind
    # The official classifier script sets add_eos_token = True when there is no chat template.
    add_eos = kind == "classifier" and not formatter.uses_chat_template
    pad_id = classifier_pad_id(model.info, tok) if kind == "classifier" else None
    fingerprint = tokenizer_fingerprint(model.model_dir)
    head = model.info.native_head if kind == "classifier" else None
    lengths = (cfg.max_length, cfg.max_prompt_length)
    key = ("tokens", data.key, fingerprint, cfg.chat_template, kind, add_eos, pad_id, head, lengths)

    def tokenize() -> list[list[TokSeq]]:
        seqs = tokenize_records(
            data.records,
            formatter,
            tok,
            kind,
            add_eos=add_eos,
            pad_id=pad_id,
            max_length=cfg.max_length,
            max_prompt_length=cfg.max_prompt_length,
        )
        return seqs if head is None else head_pooling(seqs, head, pad_id)

    seqs = cache.get(key, tokenize)
    legacy = legacy_pooling_diffs(data.records, seqs, pad_id) if kind == "classifier" else []
    if legacy:
        log(
            f"[yellow]warning:[/yellow] transformers 4.43.4 would have pooled {len(legacy)} sequence(s) at a different "
            "token (pad = EOS inside the text); scores follow today's rule, the list is in metrics.json meta"
        )
    return Tokenized(formatter, tok, add_eos, pad_id, key, seqs, legacy)
