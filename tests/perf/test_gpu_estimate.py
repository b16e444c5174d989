"""bench/gpu_estimate.py: the paper estimate of full RM-Bench on an H100/H200 (issue 21, Part 2).

The counts are checked against brute force on small planner batches, the published parameter
count, and a measured-vs-predicted comparison on a synthetic gpu_check JSON. All fast: a few
records, no model runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench import gpu_estimate as ge
from rmbench_fast.records import TokSeq
from tests.helpers.paths import REPO


def _record(prompt: int, answers: list[int], seed: int) -> list[TokSeq]:
    rng = np.random.default_rng(seed)
    p = [1, *rng.integers(3, 100, size=prompt - 1).tolist()]
    return [TokSeq(p + rng.integers(3, 100, size=n).tolist(), label_start=len(p)) for n in answers]


def _flash_pairs_brute(batch) -> int:
    """The flash backend's query-key pairs by enumeration: call A (each piece causally to itself)
    and call B (each segment's rows to its prefix keys)."""
    from rmbench_fast.scoring.plan import branch_bounds

    pairs = 0
    starts, ends = branch_bounds(batch)
    for s in range(batch.n_segments):
        a, P = int(batch.seg_offsets[s]), int(batch.prefix_len[s])
        pieces = [(a, a + P)] + [(int(starts[j]), int(ends[j])) for j in range(6 * s, 6 * s + 6)]
        for lo, hi in pieces:
            pairs += sum(i - lo + 1 for i in range(lo, hi))
        pairs += (int(batch.seg_offsets[s + 1]) - a) * P
    return pairs


def test_dims_match_the_published_parameter_counts() -> None:
    shapes = ge.shapes()
    d8 = ge.Dims.of(shapes["llama-3.1-8b"])
    # Llama-3.1-8B: 8.03 B parameters = decoder matmuls + embedding + LM head (+ 266k norm weights)
    assert d8.body_params == 6_979_321_856
    assert d8.body_params + 2 * d8.vocab * d8.H + (2 * 32 + 1) * 4096 == 8_030_261_248
    d70 = ge.Dims.of(shapes["llama-3.1-70b"])
    assert round((d70.body_params + 2 * d70.vocab * d70.H) / 1e9, 1) == 70.6
    q = ge.Dims.of(shapes["qwen3-8b"])
    assert q.qk_norm and not d8.qk_norm
    assert round((q.body_params + 2 * q.vocab * q.H) / 1e9, 2) == 8.19  # Qwen3-8B: 8.2 B


def test_attention_pairs_match_the_flash_calls() -> None:
    from rmbench_fast.scoring.plan import plan_batches

    seqs = [_record(5, [3, 0, 7, 2, 4, 1], 0), _record(1, [6, 6, 6, 6, 6, 6], 1)]
    seqs.append(
        [TokSeq([7, 8, 9], label_start=1), *(TokSeq([4, 5], label_start=1) for _ in range(5))]
    )  # P = 0
    (batch,) = plan_batches(seqs, batch_tokens=4096)
    pairs, merged = ge.attention_pairs(batch)
    assert pairs == _flash_pairs_brute(batch)
    assert merged == batch.n_tokens  # the merge runs over every row once some segment has a prefix
    (alone,) = plan_batches(seqs[2:], batch_tokens=4096)
    assert alone.prefix_len.tolist() == [0] and ge.attention_pairs(alone)[1] == 0


def test_batch_cost_counts_linears_head_and_models() -> None:
    from rmbench_fast.scoring.plan import plan_batches

    d = ge.Dims.of(ge.shapes()["llama-3.1-8b"])
    seqs = [_record(40, [30, 31, 32, 33, 34, 35], r) for r in range(3)]
    (batch,) = plan_batches(seqs, batch_tokens=8192)
    T, n_lab = batch.n_tokens, len(batch.label_ids)
    rf = ge.batch_cost(batch, d, "ref-free")
    assert rf["flops_linear"] == 2 * d.body_params * T
    assert rf["flops_head"] == 2 * d.H * d.vocab * n_lab  # answer rows only
    assert rf["bytes_weights"] == 2 * (d.body_params + d.vocab * d.H)
    pair = ge.batch_cost(batch, d, "dpo-pair")
    for k in ("flops_linear", "flops_attention", "flops_head", "bytes_weights", "bytes_elementwise"):
        assert pair[k] == 2 * rf[k], k
    cls = ge.batch_cost(batch, d, "classifier")
    assert cls["flops_head"] == 2 * d.H * 18 and cls["bytes_logits"] == 0
    tp2 = ge.batch_cost(batch, d, "ref-free", tp=2)
    assert tp2["flops_linear"] == rf["flops_linear"] / 2 and rf["bytes_comm"] == 0
    # 2 all-reduces per layer + the embedding's, of [T, H] bf16, a ring over 2 sends half
    assert tp2["bytes_comm"] == (2 * d.layers + 1) * T * d.H * 2 * 2 * 0.5
    secs = ge.batch_seconds(rf, ge.GPUS["h100"], ge.EFFICIENCY)
    assert secs["gemm"] == pytest.approx((rf["flops_linear"] + rf["flops_head"]) / (0.7 * 989.4e12))
    assert secs["comm"] == 0 and secs["elementwise"] > 0


def test_official_path_flops_pad_and_score_the_full_vocabulary() -> None:
    d = ge.Dims.of(ge.shapes()["llama-3.1-8b"])
    seqs = [_record(10, [5, 6, 7, 8, 9, 20], r) for r in range(9)]  # 9 records: groups of 8 and 1
    off = ge.official_flops(seqs, d, "ref-free")
    want = 0
    for k in range(3):
        for group in (seqs[:8], seqs[8:]):
            batch = [g[k] for g in group] + [g[k + 3] for g in group]
            want += len(batch) * max(len(s.ids) for s in batch)
    assert off["processed_tokens"] == want
    assert off["flops_head"] == 2 * d.H * d.vocab * want
    cls = ge.official_flops(seqs, d, "classifier")  # chosen and rejected in separate forwards
    assert cls["processed_tokens"] < want and cls["flops_head"] == 2 * d.H * cls["processed_tokens"]
    assert ge.official_flops(seqs, d, "dpo-pair")["flops"] == 2 * off["flops"]


def test_fits_picks_tensor_parallelism_for_70b() -> None:
    sh = ge.shapes()
    d8, d70 = ge.Dims.of(sh["llama-3.1-8b"]), ge.Dims.of(sh["llama-3.1-70b"])
    h100, h200 = ge.GPUS["h100"], ge.GPUS["h200"]
    assert ge.fits(d8, "dpo-pair", h100, 1, 8192)
    assert not ge.fits(d70, "ref-free", h200, 1, 8192) and ge.fits(d70, "ref-free", h200, 2, 8192)
    assert not ge.fits(d70, "dpo-pair", h200, 2, 8192) and ge.fits(d70, "dpo-pair", h200, 4, 8192)


def test_full_rm_bench_uses_the_published_counts(rm_bench_data_dir: Path) -> None:
    records, about = ge.full_rm_bench(rm_bench_data_dir)
    assert len(records) == 1327
    counts = {dom: sum(r.domain == dom for r in records) for dom in ge.PUBLISHED_COUNTS}
    assert counts == ge.PUBLISHED_COUNTS
    assert about["math"]["source"].startswith("stand-in") and about["chat"]["source"].startswith("official")
    # ids are unique within a domain (the real files share 23 ids across domains)
    assert len({(r.domain, r.id) for r in records}) == 1327
    again, _ = ge.full_rm_bench(rm_bench_data_dir)
    assert [r.prompt for r in again] == [r.prompt for r in records]  # seeded


def test_table_on_a_few_records(rm_bench_data_dir: Path, smollm2_dir: Path) -> None:
    from rmbench_fast.benchmarks.rmbench.data import load_records, select

    recs = select(load_records(rm_bench_data_dir), limit=1)
    res = ge.run_table(
        ["llama-3.1-8b", "llama-3.1-70b"], ["h100", "h200"], list(ge.KINDS), None, 8192, records=recs
    )
    assert len(res["rows"]) == 2 * 2 * 3
    by = {(r["shape"], r["gpu"], r["kind"]): r for r in res["rows"]}
    assert by[("llama-3.1-8b", "h100", "dpo-pair")]["tp"] == 1
    assert by[("llama-3.1-70b", "h200", "dpo-pair")]["tp"] == 4
    for r in res["rows"]:
        assert r["fits"] and r["seconds"] > 0 and 0 < r["mfu"] < ge.EFFICIENCY["gemm"]
        assert r["official_over_native_flops"] > 1
    h100, h200 = by[("llama-3.1-8b", "h100", "ref-free")], by[("llama-3.1-8b", "h200", "ref-free")]
    assert h200["seconds"] < h100["seconds"]  # the same peak, more bandwidth
    text = ge.format_table(res)
    assert "llama-3.1-70b" in text and "classifier" in text
    forced = ge.run_table(["llama-3.1-70b"], ["h100"], ["ref-free"], 1, 8192, records=recs)
    assert "(does not fit)" in ge.format_table(forced)


def _synthetic_gpu_json(path: Path) -> Path:
    """A report with the schema bench/gpu_check.py writes (its speed stage's keys)."""
    report = {
        "command": "python bench/gpu_check.py --out /tmp/out",
        "device": "NVIDIA-H200",
        "torch": "2.11.0+cu128",
        "build": {"command": "pip install ...", "cuda_archs": "90"},
        "correctness": {"llama": {"float32": {"within_tol": True}}},
        "speed": {
            "shape": "llama-3.1-8b",
            "dtype": "bfloat16",
            "records": 6,
            "useful_tokens": 5000,
            "native_processed_tokens": 4000,
            "official_processed_tokens": 9000,
            "official_s": 0.9,
            "native_s": 0.25,
            "speedup": 3.6,
            "native_model_tflops": 300.0,
            "matmul_tflops_measured": 750.0,
            "mfu": 0.4,
            "attention_calls": {"flash": 64},
            "peak_mem_mib": {"official": 30000.0, "native": 20000.0},
            "goals": {"mfu": False, "speedup": True},
        },
        "speed_dry": {
            "shape": "tiny llama (dry run)",
            "records": 3,
            "native_s": 1.0,
            "native_processed_tokens": 10,
        },
        "seconds": {"build": 1.0, "correctness": 2.0, "speed": 3.0},
    }
    path.write_text(json.dumps(report))
    return path


def test_speed_keys_are_what_gpu_check_writes() -> None:
    src = (REPO / "bench" / "gpu_check.py").read_text()
    for key in (*ge.SPEED_KEYS, "matmul_tflops_measured", "mfu"):
        assert f'"{key}":' in src, key


def test_measured_against_predicted(
    tmp_path: Path, rm_bench_data_dir: Path, smollm2_dir: Path, capsys
) -> None:
    path = _synthetic_gpu_json(tmp_path / "gpu-NVIDIA-H200.json")
    rows = ge.compare_measured(json.loads(path.read_text()), data=rm_bench_data_dir)
    speed = next(r for r in rows if r["stage"] == "speed")
    assert speed["gpu"] == "h200" and speed["kind"] == "ref-free"
    assert speed["measured_s"] == 0.25
    assert speed["measured_over_predicted"] == pytest.approx(0.25 / speed["predicted_s"])
    # the rebuilt workload (2 records per domain) has its own token count: scaled to the measured one
    assert speed["scaled"] and speed["tokens_rebuilt"] != 4000
    # the run's own matmul rate (750 TFLOP/s) is above 70% of 989: the calibrated prediction is faster
    assert speed["predicted_s_at_measured_matmul"] < speed["predicted_s"]
    assert next(r for r in rows if r["stage"] == "speed_dry")["skipped"]
    assert ge.main(["--measured", str(path), "--data", str(rm_bench_data_dir)]) == 0
    out = capsys.readouterr().out
    assert "NVIDIA-H200" in out and "llama-3.1-8b" in out and "skipped" in out
    unknown = json.loads(path.read_text()) | {"device": "NVIDIA A100"}
    with pytest.raises(ValueError, match="--gpu"):
        ge.compare_measured(unknown, data=rm_bench_data_dir)
    assert ge.compare_measured(unknown, gpu="h100", data=rm_bench_data_dir)[0]["gpu"] == "h100"


def test_committed_estimate_is_marked_and_complete() -> None:
    res = json.loads((REPO / "bench" / "results" / "gpu-estimate.json").read_text())
    assert res["estimate"] is True and res["records"] == 1327
    got = {(r["shape"], r["gpu"], r["kind"]) for r in res["rows"]}
    assert got == {(s, g, k) for s in ge.shapes() for g in ge.GPUS for k in ge.KINDS}
