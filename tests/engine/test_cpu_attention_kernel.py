"""The C++ CPU attention kernel (csrc/attention_cpu.cpp, engine/layers/attention/cpu_kernel.py)
against the fp64 dense reference: GQA groupings, both head sizes, pieces that cross its key and
query blocks, records with no shared prefix, peaked softmaxes, strided views, thread counts,
the dispatch rule and its input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rmbench_fast import _core
from rmbench_fast.engine.layers.attention import cpu_kernel, default_impl, packed_attention
from rmbench_fast.engine.layout import PackedLayout
from rmbench_fast.records import TokSeq
from rmbench_fast.scoring.plan import plan_batches

pytestmark = pytest.mark.skipif(
    not _core.packed_attention_supported(64), reason="this CPU has neither AVX-512F nor AVX2 with FMA"
)
ISAS = [isa for isa in ("avx512", "avx2") if _core.packed_attention_supported(64, isa)]


def _layout(specs: list[tuple[int, list[int]]], mask_first: bool = False) -> PackedLayout:
    """One planned batch: per record (prompt length, six answer lengths)."""
    g = torch.Generator().manual_seed(0)
    groups = []
    for prompt, lens in specs:
        head = torch.randint(3, 90, (prompt,), generator=g).tolist()
        if mask_first:
            head = [1, 1, *head]
        seqs = []
        for n in lens:
            ids = head + torch.randint(3, 90, (n,), generator=g).tolist()
            seqs.append(TokSeq(ids=ids, label_start=len(ids), pool_index=len(ids) - 1, mask_first=mask_first))
        groups.append(seqs)
    batches = plan_batches(groups, batch_tokens=1 << 16)
    assert len(batches) == 1
    return PackedLayout.from_batch(batches[0], torch.device("cpu"))


# Answer lengths around the kernel's key block (64) and query blocks (96 / G rows), a 1-token
# answer, and a record whose answers share no prompt token.
SPECS = [(7, [3, 63, 64, 65, 1, 130]), (0, [5, 97, 2, 33, 1, 8]), (101, [200, 4, 96, 31, 0, 12])]


def _qkv(T: int, hq: int, hk: int, d: int, seed: int, scale: float = 1.0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(
        torch.randn(T, h, d, generator=g, dtype=torch.float64) * s for h, s in ((hq, scale), (hk, 1), (hk, 1))
    )


@pytest.mark.parametrize(("hq", "hk", "d"), [(9, 3, 64), (4, 4, 64), (6, 1, 64), (8, 2, 128), (32, 8, 128)])
@pytest.mark.parametrize("q_scale", [1.0, 8.0])
def test_kernel_matches_dense(hq: int, hk: int, d: int, q_scale: float) -> None:
    """fp32 against the fp64 dense reference (2e-5, as the other fp32 paths); q_scale 8 makes the
    softmax nearly one-hot, which an unstable max or sum would get wrong. A wrong KV-head grouping
    fails by far."""
    layout = _layout(SPECS)
    q, k, v = _qkv(layout.n_tokens, hq, hk, d, seed=hq + d, scale=q_scale)
    ref = packed_attention(q, k, v, layout, None, "dense")
    out = cpu_kernel.cpu_kernel_attention(q.float(), k.float(), v.float(), layout)
    torch.testing.assert_close(out.double(), ref, rtol=2e-5, atol=2e-5)
    if hk > 1:
        perm = [*range(1, hk), 0]
        wrong = packed_attention(q, k[:, perm], v[:, perm], layout, None, "dense")
        assert (out.double() - wrong).abs().max() > 1e-2


def test_kernel_custom_scale_and_exact_ties() -> None:
    """`scale=` is applied; keys with equal scores get exactly equal weights (v's mean)."""
    layout = _layout([(3, [70, 1, 2, 3, 4, 5])])
    T = layout.n_tokens
    q, k, v = (t.float() for t in _qkv(T, 4, 2, 64, seed=5))
    ref = packed_attention(q.double(), k.double(), v.double(), layout, None, "dense", scale=0.05)
    out = cpu_kernel.cpu_kernel_attention(q, k, v, layout, scale=0.05)
    torch.testing.assert_close(out.double(), ref, rtol=2e-5, atol=2e-5)
    # every key identical -> every score ties -> each row is the mean of the values it sees
    k_same = k[:1].expand(T, -1, -1).contiguous()
    out = cpu_kernel.cpu_kernel_attention(q, k_same, v, layout)
    ref = packed_attention(q.double(), k_same.double(), v.double(), layout, None, "dense")
    torch.testing.assert_close(out.double(), ref, rtol=1e-6, atol=1e-6)


def test_kernel_reads_strided_views_and_ignores_thread_count() -> None:
    """q/k/v as views of one packed projection (as the engine passes them) give the same bits as
    contiguous copies, and the result does not depend on the thread count (one thread computes
    each task in a fixed order)."""
    layout = _layout(SPECS)
    T, hq, hk, d = layout.n_tokens, 9, 3, 64
    qkv = torch.randn(T, (hq + 2 * hk) * d, generator=torch.Generator().manual_seed(7))
    q = qkv[:, : hq * d].view(T, hq, d)
    k = qkv[:, hq * d : (hq + hk) * d].view(T, hk, d)
    v = qkv[:, (hq + hk) * d :].view(T, hk, d)
    pieces = cpu_kernel._pieces(layout)
    outs = []
    for args, threads in [
        ((q, k, v), 1),
        ((q.contiguous(), k.contiguous(), v.contiguous()), 1),
        ((q, k, v), 2),
        ((q, k, v), 3),
    ]:
        out = torch.empty(T, hq, d)
        _core.packed_attention_f32(
            *(t.numpy() for t in args), out.numpy(), *pieces, scale=d**-0.5, n_threads=threads
        )
        outs.append(out)
    for out in outs[1:]:
        assert torch.equal(out, outs[0])


@pytest.mark.skipif(len(ISAS) < 2, reason="this CPU runs only one of the AVX-512 and AVX2 copies")
def test_avx512_and_avx2_copies_give_the_same_bits() -> None:
    """Each lane is one stacked query row and every sum runs in the same order in both copies, so
    the store's scope may name the kernel and not the instruction set (cpu_kernel.KERNEL)."""
    layout = _layout(SPECS)
    q, k, v = (t.float() for t in _qkv(layout.n_tokens, 9, 3, 64, seed=11, scale=4.0))
    pieces = cpu_kernel._pieces(layout)
    outs = []
    for isa in ISAS:
        out = torch.empty_like(q)
        _core.packed_attention_f32(
            q.numpy(), k.numpy(), v.numpy(), out.numpy(), *pieces, scale=0.125, n_threads=2, isa=isa
        )
        outs.append(out)
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("isa", ISAS)
def test_each_copy_matches_dense(isa: str) -> None:
    """Every instruction-set copy this CPU runs, against the fp64 dense reference (GQA 8/2, D 128)."""
    layout = _layout(SPECS)
    q, k, v = _qkv(layout.n_tokens, 8, 2, 128, seed=12, scale=4.0)
    ref = packed_attention(q, k, v, layout, None, "dense")
    out = torch.empty(q.shape)
    _core.packed_attention_f32(
        *(t.float().numpy() for t in (q, k, v)),
        out.numpy(),
        *cpu_kernel._pieces(layout),
        scale=128**-0.5,
        n_threads=2,
        isa=isa,
    )
    torch.testing.assert_close(out.double(), ref, rtol=2e-5, atol=2e-5)


def test_dispatch_takes_the_kernel_only_where_it_is_exact() -> None:
    """ "cpu" in fp32 with head size 64 runs the kernel; bf16, a head size it lacks, a window that
    bites and a masked BOS fall back to the torch paths, each counted in `layout.ran`; "sdpa"
    never runs the kernel."""
    layout = _layout(SPECS)
    T = layout.n_tokens
    q, k, v = (t.float() for t in _qkv(T, 9, 3, 64, seed=1))
    packed_attention(q, k, v, layout, None, "cpu")
    assert layout.ran["cpu_kernel"] == 1
    packed_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), layout, None, "cpu")
    q2, k2, v2 = (t.float() for t in _qkv(T, 9, 3, 24, seed=1))
    packed_attention(q2, k2, v2, layout, None, "cpu")
    packed_attention(q, k, v, layout, 8, "cpu")  # a window of 8 bites
    assert layout.ran["cpu_kernel"] == 1 and layout.ran["cpu_fallback"] == 3
    assert layout.ran["split"] == 2 and layout.ran["sdpa"] == 1
    packed_attention(q, k, v, layout, None, "sdpa")
    assert layout.ran["cpu_kernel"] == 1 and layout.ran["split"] == 3
    masked = _layout(SPECS, mask_first=True)  # a masked duplicated BOS runs the kernel too
    qm, km, vm = (t.float() for t in _qkv(masked.n_tokens, 9, 3, 64, seed=1))
    packed_attention(qm, km, vm, masked, None, "cpu")
    assert masked.ran["cpu_kernel"] == 1 and not masked.ran["cpu_fallback"]


@pytest.mark.parametrize("isa", ISAS)
def test_masked_bos_is_seen_by_its_own_row_only(isa: str) -> None:
    """Records whose first token is a masked duplicated BOS (layout.key_valid False): against the
    fp64 dense reference, which applies layout.py's rule (a masked key is seen by its own row
    only); without the flags the same call is far off, so the test sees the mask act."""
    layout = _layout(SPECS[:2], mask_first=True)
    assert not layout.all_keys_valid
    q, k, v = _qkv(layout.n_tokens, 9, 3, 64, seed=13, scale=4.0)
    ref = packed_attention(q, k, v, layout, None, "dense")
    args = [t.float().numpy() for t in (q, k, v)]
    pieces = cpu_kernel._pieces(layout)
    out = torch.empty(q.shape)
    flags = layout.key_valid.numpy().view(np.uint8)
    _core.packed_attention_f32(
        *args, out.numpy(), *pieces, scale=0.125, n_threads=2, isa=isa, key_valid=flags
    )
    torch.testing.assert_close(out.double(), ref, rtol=2e-5, atol=2e-5)
    _core.packed_attention_f32(*args, out.numpy(), *pieces, scale=0.125, n_threads=2, isa=isa)
    assert (out.double() - ref).abs().max() > 1e-2
    with pytest.raises(ValueError, match="key_valid"):
        _core.packed_attention_f32(*args, out.numpy(), *pieces, scale=0.125, key_valid=flags[:-1])


def test_default_impl_names_the_kernel_where_it_runs() -> None:
    """`--attn auto` on the CPU: "cpu" for fp32 at head size 64/128 without a soft-cap, else "sdpa"."""
    cpu = torch.device("cpu")
    assert default_impl(cpu, None, 64, torch.float32) == "cpu"
    assert default_impl(cpu, None, 128, torch.float32) == "cpu"
    assert default_impl(cpu, None, 64, torch.bfloat16) == "sdpa"
    assert default_impl(cpu, None, 16, torch.float32) == "sdpa"
    assert default_impl(cpu, 50.0, 64, torch.float32) == "sdpa"  # Gemma-2's soft-cap


def test_kernel_name_in_the_scope() -> None:
    """The kernel's name (the results store's scope) says when it runs."""
    cpu = torch.device("cpu")
    assert cpu_kernel.kernel_name(64, torch.float32, cpu) == cpu_kernel.KERNEL
    assert cpu_kernel.kernel_isa() in ("avx512", "avx2")
    assert cpu_kernel.kernel_name(64, torch.bfloat16, cpu) is None
    assert cpu_kernel.kernel_name(80, torch.float32, cpu) is None


def test_entry_point_checks_every_input() -> None:
    """Bad shapes, dtypes, strides and pieces are refused before any C++ runs."""
    T, d = 10, 64
    q, k, v, out = torch.randn(T, 4, d), torch.randn(T, 2, d), torch.randn(T, 2, d), torch.empty(T, 4, d)
    ok = [
        np.array([0], dtype=np.int64),
        np.array([T], dtype=np.int64),
        np.array([0], dtype=np.int64),
        np.array([0], dtype=np.int64),
    ]

    def call(q=q, k=k, v=v, out=out, pieces=ok, scale=0.125, isa="auto"):  # noqa: ANN001, ANN202
        _core.packed_attention_f32(
            q.numpy(), k.numpy(), v.numpy(), out.numpy(), *pieces, scale=scale, isa=isa
        )

    call()  # the valid call runs
    bad = [
        ({"q": q.double()}, "float32"),
        ({"k": torch.randn(T, 3, d), "v": torch.randn(T, 3, d)}, "divide"),
        ({"k": torch.randn(T, 3, d)}, "same heads"),
        ({"v": torch.randn(T, 2, d + 1)}, "head size"),
        ({"q": torch.randn(T + 1, 4, d)}, "token count"),
        ({"q": torch.randn(T, d, 4).transpose(1, 2)}, "contiguous"),
        (
            {
                "q": torch.randn(T, 4, 80),
                "k": torch.randn(T, 2, 80),
                "v": torch.randn(T, 2, 80),
                "out": torch.empty(T, 4, 80),
            },
            "head size of 64 or 128",
        ),
        ({"pieces": [ok[0], np.array([T + 1], dtype=np.int64), ok[2], ok[3]]}, "piece 0"),
        (
            {
                "pieces": [
                    np.array([2], dtype=np.int64),
                    ok[1],
                    np.array([0], dtype=np.int64),
                    np.array([3], dtype=np.int64),
                ]
            },
            "piece 0",
        ),
        ({"scale": float("nan")}, "scale"),
        ({"isa": "sse4"}, "isa must be"),
    ]
    for kwargs, words in bad:
        with pytest.raises(ValueError, match=words):
            call(**kwargs)


@pytest.mark.parametrize("kind", ["dpo", "classifier"])
def test_engine_runs_the_kernel_by_default_and_matches_dense(tmp_path, kind: str) -> None:  # noqa: ANN001
    """A whole model (tiny Llama, GQA 4/2, head size 64, so the kernel applies) scored by the
    engine's default CPU path against the dense reference backend, 1e-5 as the other backends
    agree; the stats say the kernel ran, for the classifier's records with a masked BOS
    (r % 3 == 1) too."""
    pytest.importorskip("transformers")
    from rmbench_fast.engine import NativeScorer
    from tests.helpers.tiny import make_tiny_model_dir, synthetic_records

    path = make_tiny_model_dir(
        tmp_path / "m", "llama", kind="causal" if kind == "dpo" else "classifier", head_dim=64, seed=3
    )
    seqs = synthetic_records(5, vocab_size=32000, kind=kind, seed=8, max_answer=90)
    extra = {"ref_free_mode": "norm"} if kind == "dpo" else {}
    auto = NativeScorer(path, kind=kind, batch_tokens=700, **extra)
    assert auto.attn_impl == "cpu"
    got = auto.score(seqs)
    calls = auto.stats["attention_calls"]
    assert calls["cpu_kernel"] > 0
    assert auto.stats["cpu_attention"] == cpu_kernel.KERNEL
    assert auto.stats["cpu_attention_isa"] in ISAS
    assert "cpu_fallback" not in calls  # the classifier's masked-BOS records (r % 3 == 1) included
    want = NativeScorer(path, kind=kind, attn_impl="dense", batch_tokens=700, **extra).score(seqs)
    assert np.all(np.abs(got - want) <= 1e-5 * (1.0 + np.abs(want)))
    torch_path = NativeScorer(path, kind=kind, attn_impl="sdpa", batch_tokens=700, **extra)
    torch_path.score(seqs)
    assert "cpu_kernel" not in torch_path.stats["attention_calls"]
    assert torch_path.stats["cpu_attention"] is None
