"""Native engine vs HF transformers on the real SmolLM2-135M-Instruct and real RM-Bench records.

fp32 CPU; records tokenized by the project's formatter + tokenizer (SPEC §3, §5); HF runs each
sequence alone. Reference-free avg and sum; |Δ| <= 1e-4 (1 + |s|).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")


@pytest.mark.slow
def test_smollm2_real_records_match_hf(smollm2_dir: Path, rm_bench_data_dir: Path) -> None:
    import transformers

    from rmbench_fast.benchmarks.rmbench.data import load_records
    from rmbench_fast.engine import NativeScorer
    from rmbench_fast.inputs.format import Formatter
    from rmbench_fast.inputs.tokenization import Tokenizer
    from rmbench_fast.pipeline.tokens import tokenize_records
    from tests.helpers.tiny import hf_reference_scores

    recs = [
        load_records(rm_bench_data_dir / f)[0] for f in ("chat_filtered.json", "safety-refuse_filtered.json")
    ]
    seqs = tokenize_records(recs, Formatter.from_model_dir(smollm2_dir, None), Tokenizer(smollm2_dir), "dpo")
    hf = transformers.AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    for mode in ("avg", "sum"):
        want = hf_reference_scores(hf, seqs, "dpo", mode)
        sc = NativeScorer(
            smollm2_dir, kind="dpo", ref_free_mode=mode, dtype="float32", batch_tokens=1024, log=None
        )
        got = sc.score(seqs)
        assert sc.stats["prefix_savings"] > 0
        assert np.all(np.abs(got - want) <= 1e-4 * (1 + np.abs(want))), np.abs(got - want).max()
