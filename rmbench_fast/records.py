"""The records and token sequences that flow through the pipeline.

data -> format -> tokenize -> plan -> engine -> scores -> metrics -> report

Below the benchmarks (plan, engine, store) a record is a prompt with N token sequences, N = 1..64
per record, in slot order. An RM-Bench record has six, always in this slot order (SPEC §1):
    slot 0..2 = chosen[style 0..2], slot 3..5 = rejected[style 0..2]
with style 0 = concise, 1 = detailed plain, 2 = detailed markdown.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

STYLES = ("concise", "detailed_plain", "detailed_markdown")
N_STYLES = 3
N_SLOTS = 6  # chosen 0..2, rejected 0..2
DOMAINS = ("chat", "math", "code", "safety-refuse", "safety-response")
# Metric groups: safety-refuse and safety-response are pooled into one "safety" matrix (SPEC §2).
METRIC_DOMAINS = ("chat", "math", "code", "safety")


def metric_domain(domain: str) -> str:
    """The metric group of a record domain: 'safety-refuse' -> 'safety'."""
    return "safety" if domain.startswith("safety") else domain


def domain_groups(domains: Iterable[str]) -> dict[str, list[int]]:
    """Positions per metric domain (safety-refuse and safety-response pooled into 'safety'), in
    leaderboard order (chat, math, code, safety), then any other domain sorted by name.

    domains: each record's raw domain, in record order."""
    groups: dict[str, list[int]] = {}
    for n, d in enumerate(domains):
        groups.setdefault(metric_domain(d), []).append(n)
    order = [d for d in METRIC_DOMAINS if d in groups] + sorted(set(groups) - set(METRIC_DOMAINS))
    return {d: groups[d] for d in order}


@dataclass(frozen=True)
class Record:
    """One RM-Bench prompt with its 3 chosen and 3 rejected responses (style order)."""

    index: int  # position in its source file (0-based)
    id: str
    domain: str  # one of DOMAINS
    prompt: str
    chosen: tuple[str, str, str]
    rejected: tuple[str, str, str]
    source: str  # file the record came from
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def response(self, slot: int) -> str:
        return self.chosen[slot] if slot < N_STYLES else self.rejected[slot - N_STYLES]


@dataclass
class TokSeq:
    """One tokenized sequence to score.

    DPO (SPEC §5): `ids` = prompt tokens + answer tokens; tokens ids[label_start:] are scored,
    each by the log-prob the model gives it at the previous position. label_start >= 1.
    Classifier (SPEC §4): no labels (label_start == len(ids)); the score is read at
    `pool_index`; if `mask_first`, token 0 (a duplicated BOS) gets attention mask 0 but keeps
    its position.
    """

    ids: list[int]
    label_start: int
    pool_index: int = -1
    mask_first: bool = False

    @property
    def n_labels(self) -> int:
        return len(self.ids) - self.label_start


@dataclass
class PackedBatch:
    """One batch from the planner: whole records packed with a shared prompt prefix (SPEC §7).

    A segment is one record: its N sequences' longest common token prefix (P tokens, stored
    once), then N branches (slot order 0..N-1), each the rest of its sequence. N may differ
    between segments (RM-Bench: 6; RewardBench 2: 4, or more in Ties). Flat layout:
        [seg0: prefix | branch0 | ... | branch(N0-1)][seg1: ...]...
    Position ids run 0..P-1 over the prefix and continue P, P+1, ... inside each branch.
    Attention: token q sees key k iff same segment, flat(k) <= flat(q), and k is in the prefix
    or in q's own branch; and key_valid[k] (False only for a masked duplicated BOS, SPEC §4).
    The masked token's own output is never read (it is neither pooled nor a label predictor:
    mask_first only occurs on the classifier path), so an implementation may let it attend to
    itself to avoid an all-masked softmax row.
    With prefix sharing off, P = 0 and every branch is a whole sequence.

    Sequence index j = seg_seqs[s] + b for segment s, branch (slot) b (= 6s + b when every
    record has six). J = seg_seqs[S] sequences in all. All arrays are numpy int32 (key_valid: bool).
    """

    input_ids: Any  # [T] token ids
    position_ids: Any  # [T]
    key_valid: Any  # [T] bool
    seg_offsets: Any  # [S+1] flat start of each segment (cu_seqlens over segments)
    prefix_len: Any  # [S]
    branch_offsets: Any  # [J+1] flat start of branch j = seg_seqs[s] + b
    # Segment s's prefix occupies seg_offsets[s] .. seg_offsets[s]+prefix_len[s]; its branches
    # follow contiguously, so branch_offsets[seg_seqs[s]] == seg_offsets[s] + prefix_len[s].
    # Branch j ends at branch_offsets[j+1], except a segment's last branch, which ends at
    # seg_offsets[s+1] (branch_offsets[seg_seqs[s+1]] is after the next segment's prefix).
    # plan.branch_bounds has both.
    label_pos: Any  # [K] flat index whose output predicts label k (the previous token)
    label_ids: Any  # [K] the label token ids
    label_seq: Any  # [K] sequence index j of label k; labels are grouped by j, in token order
    pool_pos: Any  # [J] flat index of the classifier's pooled token, -1 for DPO
    seq_record: Any  # [J] index of the record (in the planner's input list) of sequence j
    seg_seqs: Any  # [S+1] first sequence j of each segment, then J (cu_seqlens over sequences)

    @property
    def n_tokens(self) -> int:
        return int(len(self.input_ids))

    @property
    def n_segments(self) -> int:
        return int(len(self.prefix_len))
