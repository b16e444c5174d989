"""A RewardBench 2 prompt's N completions as N token sequences (docs/rewardbench2.md).

The official runner unrolls a prompt into N rows, chosen first then rejected, each row's text
`apply_chat_template([user: prompt, assistant: completion], tokenize=False)`, and tokenizes each
row on its own. We tokenize the same N texts the same way (`encode_classifier`, the RM-Bench
classifier rule), so every sequence's ids are the official row's ids; the planner then finds
the prompt's common token prefix and stores it once per prompt (one segment, N branches).

DPO (ours: RewardBench 2 has no DPO script): each completion is tokenized by reward-bench's
`DPOInference.tokenize_row` rule (`encode_dpo_pair`) with the completion as both members of the
pair, so its truncation depends on its own length only (a best-of-N prompt has no canonical
chosen/rejected pairing), and its reward is SPEC §5's over its answer tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rmbench_fast.benchmarks.rewardbench2.data import Prompt
from rmbench_fast.errors import DataError
from rmbench_fast.records import TokSeq


def completion_texts(p: Prompt, formatter: Any, *, generation_prompt: bool = False) -> list[str]:
    """The N chat-template texts of prompt p, in completion order (chosen, then rejected)."""
    return [formatter.full_text(p.prompt, c, generation_prompt=generation_prompt) for c in p.completions]


def tokenize_prompts(
    prompts: Sequence[Prompt],
    formatter: Any,
    tok: Any,
    *,
    kind: str,
    add_eos: bool,
    pad_id: int | None,
    max_length: int,
    max_prompt_length: int = 128,
) -> list[list[TokSeq]]:
    """seqs[p]: prompt p's N TokSeqs in completion order. kind: "classifier" (a sequence
    classifier or custom head: pooled score), "causal-logit" (one logit after the text) or
    "dpo" (the answer tokens' log-probs, module docstring)."""
    from rmbench_fast.inputs.tokenization import (  # start-up cost: tokenizers
        encode_causal_logit,
        encode_classifier,
        encode_dpo_pair,
    )

    out = []
    for p in prompts:
        try:
            if kind == "dpo":
                prompt_text = formatter.prompt_text(p.prompt)
                texts = completion_texts(p, formatter)
                out.append(
                    [
                        encode_dpo_pair(
                            tok, prompt_text, t, t, max_length=max_length, max_prompt_length=max_prompt_length
                        )[0]
                        for t in texts
                    ]
                )
            elif kind == "causal-logit":
                texts = completion_texts(p, formatter, generation_prompt=True)
                out.append([encode_causal_logit(tok, t, max_length=max_length) for t in texts])
            else:
                texts = completion_texts(p, formatter)
                out.append(
                    [
                        encode_classifier(tok, t, add_eos=add_eos, pad_id=pad_id, max_length=max_length)
                        for t in texts
                    ]
                )
        except DataError as e:
            # Name the record: the tokenizer only knows the text.
            raise DataError(str(e), file=p.source, record=p.index, record_id=p.id) from None
    return out
