"""Triton kernels A (logits) and B (fused lm_head) against float64 references, plus the dispatcher.

On CPU the kernels run in Triton's interpreter, which must be chosen before triton is first
imported (TRITON_INTERPRET=1; see kernels/_triton_util.py). tests/helpers/triton_env.py, imported
before the kernels, sets it when it is the first to import triton. If another test module imported triton earlier in this pytest process,
the in-process kernel tests skip and `test_rerun_in_interpreter_subprocess` runs this file in a
fresh interpreter-mode process instead, so the checks always run. On a GPU machine the same tests
run compiled kernels on CUDA tensors.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers.paths import BENCH
from tests.helpers.triton_env import DEVICE, HAS_CUDA, RUNNABLE, needs_kernels, rerun_in_interpreter

# isort: split
from rmbench_fast.kernels.dpo_logratio import dpo_logratio_triton
from rmbench_fast.kernels.linear_logratio import linear_logratio_triton
from rmbench_fast.kernels.reference import dpo_logratio_ref

from rmbench_fast.scoring import logprobs, rewards

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Extra absolute slack on top of the same-dtype torch error bound (fp32 rounding of the LSE).
ATOL = {torch.float32: 2e-5, torch.bfloat16: 2e-5, torch.float16: 2e-5}


def _f64_label_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """float64 oracle: log_softmax(logits.double())[t, labels[t]], 0 where ignored -> [T] f64."""
    valid = labels != -100
    lp = torch.log_softmax(logits.double(), -1).gather(-1, torch.where(valid, labels, 0)[:, None].long())[
        :, 0
    ]
    return torch.where(valid, lp, 0.0)


def _lowp_torch(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """What plain torch gives computing log_softmax in the logits' own dtype (then fp32)."""
    valid = labels != -100
    lp = torch.log_softmax(logits, -1).gather(-1, torch.where(valid, labels, 0)[:, None].long())[:, 0]
    return torch.where(valid, lp.float(), 0.0)


def _labels(T: int, V: int, gen: torch.Generator) -> torch.Tensor:
    lab = torch.randint(0, V, (T,), generator=gen)
    lab[::7] = -100  # scattered ignored positions, including row 0
    return lab


def _strided_logits(T: int, V: int, dtype: torch.dtype, gen: torch.Generator, kind: str) -> torch.Tensor:
    """[T, V] logits as a non-contiguous view: a column slice of a wider tensor, or a transpose."""
    if kind == "slice":
        big = torch.randn(T, V + 9, generator=gen) * 4
        x = big.to(dtype)[:, 3 : V + 3]  # row stride V + 9
    else:
        x = (torch.randn(V, T, generator=gen) * 4).to(dtype).t()  # column stride T
    return x.to(DEVICE)


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("V", [1000, 32003])
@pytest.mark.parametrize("with_ref", [True, False])
def test_dpo_logratio_kernel_vs_float64(dtype: torch.dtype, V: int, with_ref: bool) -> None:
    gen = torch.Generator().manual_seed(V + len(str(dtype)))
    T = 37  # not a multiple of any block size
    pol = _strided_logits(T, V, dtype, gen, "slice")
    ref = _strided_logits(T, V, dtype, gen, "transpose") if with_ref else None
    lab = _labels(T, V, gen).to(DEVICE)
    assert not pol.is_contiguous()

    lp, lpr, diff = dpo_logratio_triton(pol, ref, lab)
    exact = _f64_label_logprobs(pol, lab)
    err = (lp.double() - exact).abs().max().item()
    torch_err = (_lowp_torch(pol, lab).double() - exact).abs().max().item()
    # CCE-style bound: no worse than torch in the input dtype, and fp32-accurate in absolute terms.
    assert err <= torch_err + ATOL[dtype], (err, torch_err)
    assert err < 1e-4
    ignored = lab == -100
    assert torch.all(lp[ignored] == 0.0)
    assert torch.isfinite(lp).all()
    if with_ref:
        assert lpr is not None and diff is not None
        exact_r = _f64_label_logprobs(ref, lab)
        assert (lpr.double() - exact_r).abs().max().item() < 1e-4
        torch.testing.assert_close(diff, lp - lpr, rtol=0, atol=0)
        assert torch.all(diff[ignored] == 0.0)
    else:
        assert lpr is None and diff is None


@needs_kernels
def test_dpo_logratio_int32_labels_and_strided_labels() -> None:
    gen = torch.Generator().manual_seed(1)
    T, V = 21, 1000
    pol = (torch.randn(T, V, generator=gen) * 3).to(DEVICE)
    lab_big = torch.stack([_labels(T, V, gen), torch.zeros(T, dtype=torch.long)], 1)  # [T, 2]
    lab = lab_big[:, 0].contiguous().to(DEVICE)
    lab_strided = lab_big.to(DEVICE)[:, 0]
    assert lab_strided.stride(0) == 2
    want = dpo_logratio_ref(pol, None, lab)[0]
    for labels in (lab_strided, lab.int()):
        got = dpo_logratio_triton(pol, None, labels)[0]
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("softcap", [None, 3.0])
def test_linear_kernel_vs_float64(dtype: torch.dtype, softcap: float | None) -> None:
    gen = torch.Generator().manual_seed(7)
    T, H, V = 37, 40, 1000  # T, H and V all off the block sizes
    hidden = torch.randn(T, H, generator=gen).to(dtype).to(DEVICE)
    weight = (torch.randn(H, V, generator=gen) * 0.4).to(dtype).to(DEVICE).t()  # [V, H], strided (tied-style)
    lab = _labels(T, V, gen).to(DEVICE)

    got = linear_logratio_triton(hidden, weight, lab, softcap=softcap)
    z = hidden.double() @ weight.double().T  # [T, V] float64 oracle
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    exact = _f64_label_logprobs(z, lab)
    err = (got.double() - exact).abs().max().item()
    # Same-dtype torch: the matmul in the input dtype (logits rounded to it), softmax in fp32.
    zl = (hidden @ weight.T).float()
    if softcap is not None:
        zl = softcap * torch.tanh(zl / softcap)
    torch_err = (_f64_label_logprobs(zl, lab) - exact).abs().max().item()
    assert err <= torch_err + 5e-5, (err, torch_err)
    assert err < 1e-4  # fp32 accumulation: far better than bf16/fp16 logits
    assert torch.all(got[lab == -100] == 0.0)


@needs_kernels
def test_dispatch_segments_and_all_ignored_segment() -> None:
    """dpo_logratio via backend='triton' vs 'torch'; segment 2 has no scored token."""
    gen = torch.Generator().manual_seed(3)
    T, V, S = 30, 1000, 4
    pol = (torch.randn(T, V, generator=gen) * 3).bfloat16().to(DEVICE)
    ref = (torch.randn(T, V, generator=gen) * 3).bfloat16().to(DEVICE)
    seg = torch.tensor([0] * 8 + [1] * 10 + [2] * 5 + [3] * 7).to(DEVICE)
    lab = torch.randint(0, V, (T,), generator=gen).to(DEVICE)
    lab[seg == 2] = -100
    lab[0] = -100
    valid = lab != -100
    outs = {}
    for b in ("triton", "torch"):
        lp, lp_ref, _ = logprobs.token_logprobs(pol, lab, ref, backend=b)
        ref_sum = rewards.sequence_stats(lp_ref, seg, S, valid)[:, rewards.SUM]
        outs[b] = (rewards.sequence_stats(lp, seg, S, valid), ref_sum)
    for mode in ("ref", "avg", "sum", "norm"):
        a = rewards.rewards_from_stats(outs["triton"][0], mode, outs["triton"][1])
        b = rewards.rewards_from_stats(outs["torch"][0], mode, outs["torch"][1])
        torch.testing.assert_close(a, b, rtol=0, atol=5e-5, equal_nan=True)
    o = outs["triton"][0]
    assert o[:, rewards.COUNT].tolist() == [7, 10, 0, 7]
    assert o[2, rewards.SUM].item() == 0.0 and rewards.rewards_from_stats(o, "norm")[2].item() == 0.0
    assert torch.isnan(rewards.rewards_from_stats(o, "avg")[2])  # official 0/0
    exact = _f64_label_logprobs(pol, lab).cpu()
    for s in range(S):
        m = (seg.cpu() == s) & (lab.cpu() != -100)
        assert abs(o[s, rewards.SUM].item() - exact[m].sum().item()) < 1e-4
        norm = rewards.rewards_from_stats(o, "norm")[s].item()
        assert abs(norm + exact[m].pow(2).sum().sqrt().item()) < 1e-4


def _official_batch_logps(logits: torch.Tensor, labels: torch.Tensor, mode: str) -> torch.Tensor:
    """The official get_batch_logps semantics (reward-bench dpo.py), re-stated: shift, mask, reduce."""
    labels = labels[:, 1:].clone()
    logits = logits[:, :-1, :]
    mask = labels != -100
    labels[~mask] = 0
    lp = torch.gather(logits.log_softmax(-1), 2, labels.unsqueeze(2)).squeeze(2)
    if mode == "avg":
        return (lp * mask).sum(-1) / mask.sum(-1)
    if mode == "norm":
        return -torch.norm(lp * mask, p=2, dim=-1)
    return (lp * mask).sum(-1)


def test_segment_rewards_match_official_batch_logps() -> None:
    """Padded [B, L, V] official path == flattened tokens + seg ids through our torch backend."""
    gen = torch.Generator().manual_seed(11)
    B, L, V = 3, 9, 50
    logits = torch.randn(B, L, V, generator=gen, dtype=torch.float64) * 2
    labels = torch.randint(0, V, (B, L), generator=gen)
    labels[:, :3] = -100  # prompt
    labels[1, 6:] = -100  # padding
    # Flatten with the shift: row (b, t) predicts labels[b, t + 1].
    flat_logits = logits[:, :-1].reshape(-1, V)
    flat_labels = labels[:, 1:].reshape(-1)
    seg = torch.arange(B).repeat_interleave(L - 1)

    def stats(lab: torch.Tensor) -> torch.Tensor:
        lp = logprobs.token_logprobs(flat_logits, lab, backend="torch")[0]
        return rewards.sequence_stats(lp, seg, B, lab != -100)

    out = stats(flat_labels)
    for mode in ("avg", "sum", "norm"):
        want = _official_batch_logps(logits, labels, mode)
        got = rewards.rewards_from_stats(out, mode)  # type: ignore[arg-type]
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    empty = stats(torch.full_like(flat_labels, -100))
    official_empty = _official_batch_logps(logits, torch.full_like(labels, -100), "avg")
    assert torch.isnan(official_empty).all() and torch.isnan(rewards.rewards_from_stats(empty, "avg")).all()


def test_dispatch_rejects_bad_input() -> None:
    x = torch.randn(4, 10)
    with pytest.raises(ValueError, match="outside"):
        logprobs.token_logprobs(x, torch.tensor([1, 2, 10, -100]), backend="torch")
    with pytest.raises(ValueError, match="outside"):
        logprobs.token_logprobs(x, torch.tensor([1, -5, 3, 4]), backend="torch")
    with pytest.raises(ValueError, match="backend"):
        logprobs.token_logprobs(x, torch.tensor([1, 2, 3, 4]), backend="nope")  # type: ignore[arg-type]
    with pytest.raises(IndexError):
        lp = logprobs.token_logprobs(x, torch.tensor([1, 2, 3, 4]), backend="torch")[0]
        rewards.sequence_stats(lp, torch.tensor([0, 0, 1, 2]), 2)
    with pytest.raises(ValueError, match="needs the reference"):
        lp = logprobs.token_logprobs(x, torch.tensor([1, 2, 3, 4]), backend="torch")[0]
        rewards.rewards_from_stats(rewards.sequence_stats(lp, torch.tensor([0, 0, 1, 1]), 2), "ref")
    with pytest.raises(ValueError, match="no CUDA C"):
        logprobs.linear_token_logprobs(
            torch.randn(4, 3), torch.randn(10, 3), torch.tensor([1, 2, 3, 4]), backend="cuda"
        )


@needs_kernels
def test_kernel_launchers_reject_bad_shapes() -> None:
    x = torch.randn(4, 10).to(DEVICE)
    with pytest.raises(ValueError, match="ref_logits shape"):
        dpo_logratio_triton(x, torch.randn(4, 11).to(DEVICE), torch.zeros(4, dtype=torch.long).to(DEVICE))
    with pytest.raises(ValueError, match="labels"):
        dpo_logratio_triton(x, None, torch.zeros(5, dtype=torch.long).to(DEVICE))
    with pytest.raises(ValueError, match="float32"):
        dpo_logratio_triton(x.double(), None, torch.zeros(4, dtype=torch.long).to(DEVICE))
    with pytest.raises(ValueError, match="mismatch"):
        linear_logratio_triton(x, torch.randn(7, 9).to(DEVICE), torch.zeros(4, dtype=torch.long).to(DEVICE))
    assert dpo_logratio_triton(x[:0], None, torch.zeros(0, dtype=torch.long).to(DEVICE))[0].shape == (0,)


@needs_kernels
def test_auto_backend_and_linear_dispatch() -> None:
    gen = torch.Generator().manual_seed(5)
    hidden = torch.randn(9, 32, generator=gen).to(DEVICE)
    weight = torch.randn(100, 32, generator=gen).to(DEVICE)
    lab = torch.randint(0, 100, (9,), generator=gen).to(DEVICE)
    a = logprobs.linear_token_logprobs(hidden, weight, lab, backend="triton")
    b = logprobs.linear_token_logprobs(hidden, weight, lab, backend="torch")
    torch.testing.assert_close(a, b, rtol=0, atol=2e-5)
    c = logprobs.token_logprobs(hidden @ weight.T, lab)[0]  # auto
    torch.testing.assert_close(c, b, rtol=0, atol=2e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_gpu_large_vocab_bf16() -> None:
    """Llama-3-sized vocabulary on the GPU: compiled kernels A and B vs float64."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    T, V, H = 257, 128256, 256
    pol = torch.randn(T, V, device="cuda", generator=gen).mul(4).bfloat16()
    lab = torch.randint(0, V, (T,), device="cuda", generator=gen)
    lab[::5] = -100
    lp = dpo_logratio_triton(pol, None, lab)[0]
    assert (lp.double() - _f64_label_logprobs(pol, lab)).abs().max().item() < 1e-4
    hidden = torch.randn(T, H, device="cuda", generator=gen).bfloat16()
    weight = torch.randn(V, H, device="cuda", generator=gen).mul(0.1).bfloat16()
    got = linear_logratio_triton(hidden, weight, lab)
    exact = _f64_label_logprobs(hidden.double() @ weight.double().T, lab)
    assert (got.double() - exact).abs().max().item() < 1e-3


@pytest.mark.skipif(RUNNABLE, reason="kernels already ran in this process")
def test_rerun_in_interpreter_subprocess() -> None:
    rerun_in_interpreter(str(Path(__file__)))


def test_gpu_bench_script_dry_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """bench/gpu_kernels.py imports and its CPU-safe path (inputs, torch paths, report) runs."""
    import importlib.util

    path = BENCH / "gpu_kernels.py"
    monkeypatch.syspath_prepend(str(path.parent))  # as `python bench/gpu_kernels.py` would have it
    spec = importlib.util.spec_from_file_location("rmbf_gpu_kernels_bench", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.main(["--dry-run", "--impls", "torch_logits", "torch_linear"])
    assert res["device"].startswith("cpu") and res["ceilings"]["mem_bytes_per_s"] > 0
    rows = res["results"]
    assert {r["impl"] for r in rows} == {"torch_logits", "torch_linear"}
    assert all(r["finite"] and r["ms"] > 0 for r in rows)
