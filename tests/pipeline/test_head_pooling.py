"""A custom reward head's pooled token and BOS masking follow its official pipeline."""

from __future__ import annotations

from rmbench_fast.inputs.modelio import NativeHead
from rmbench_fast.pipeline.tokens import head_pooling
from rmbench_fast.records import TokSeq

PAD = 2


def _seq(ids: list[int], mask_first: bool = False) -> TokSeq:
    return TokSeq(ids=ids, label_start=len(ids), pool_index=len(ids) - 2, mask_first=mask_first)


def test_last_token_first_pad_and_bos_masking() -> None:
    grm = NativeHead(name="grm", reason="test", pooling="last_token", mask_double_bos=False)
    inform = NativeHead(name="inform", reason="test", pooling="first_pad", mask_double_bos=True)
    group = [_seq([1, 1, 5, 6, PAD, 7, 8], mask_first=True), _seq([1, 5, 6, 7])] + [_seq([1, 9])] * 4
    (g,) = head_pooling([group], grm, PAD)
    assert [s.pool_index for s in g[:2]] == [6, 3]  # len(ids) - 1
    assert not g[0].mask_first  # GRMPipeline does not mask a duplicated BOS
    (i,) = head_pooling([group], inform, PAD)
    assert i[0].pool_index == 3 and i[0].mask_first  # (first pad) - 1, inside the text
    assert i[1].pool_index == 3  # no pad: -1 modulo the length, the last token
    assert [s.ids for s in i] == [s.ids for s in group]


def test_max_length_is_applied_and_marked_unofficial(smollm2_dir: object, rm_bench_data_dir: object) -> None:
    from pathlib import Path

    from rmbench_fast import evaluate

    data = str(Path(str(rm_bench_data_dir)) / "chat_filtered.json")
    common = dict(data=data, limit=2, device="cpu", dtype="float32", no_cache=True, resamples=0, ids=None)
    short = evaluate(None, max_length=64, max_prompt_length=16, **common)  # type: ignore[arg-type]
    assert short["meta"]["settings"]["official"] is False
    assert short["meta"]["tokens"]["total"] <= 2 * 6 * 64
    full = evaluate(None, **common)  # type: ignore[arg-type]
    assert (
        full["meta"]["settings"]["official"] is True
        and full["meta"]["tokens"]["total"] > short["meta"]["tokens"]["total"]
    )
