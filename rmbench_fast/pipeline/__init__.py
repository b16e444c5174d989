"""One evaluation run, end to end: data -> format -> tokenize -> score -> metrics -> report.

Everything that can fail on user input (data, model directory, template, options) is checked
before the first forward pass, so a bad input costs seconds, not a scoring run.

Modules, in data-flow order: this one (RunConfig, the steps load_data -> choose_models ->
tokenize_run -> score_run -> metrics, run_evaluation, evaluate), sweep (many checkpoints in one
process, sharing the reference model's sums), ray_sweep (the sweep as Ray tasks), rewardbench2
(the same steps for RewardBench 2: N completions per prompt).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from rmbench_fast.benchmarks.rmbench.data import (
    HF_DATASET,
    hf_cached_dataset,
    load_records,
    select,
)
from rmbench_fast.benchmarks.rmbench.metrics import compute_metrics
from rmbench_fast.errors import DataError, ModelError, NonFiniteScoreError, UsageError, nonfinite_message
from rmbench_fast.inputs import hub
from rmbench_fast.inputs.datafiles import data_files, hash_files
from rmbench_fast.records import N_STYLES, Record, TokSeq
from rmbench_fast.results.report import check_out_dir, print_report, score_rows, write_outputs
from rmbench_fast.settings import DEFAULT_OUT, ScoreSettings, check_limit
from rmbench_fast.utils.distributed import is_main
from rmbench_fast.utils.dtypes import run_dtype
from rmbench_fast.utils.phases import phase
from rmbench_fast.utils.threads import set_threads
from rmbench_fast.utils.versions import versions


@dataclass
class RunConfig:
    model: str | None = None
    ref_model: str | None = None
    ref_free: str | None = None
    kind: str = "auto"
    data: str | None = None
    limit: int | None = None
    domains: Sequence[str] | None = None
    ids: Sequence[str] | None = None
    chat_template: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    backend: str = "auto"
    batch_tokens: int | None = None
    batch_size: int = 8
    out: str | None = DEFAULT_OUT
    fp32_scores: bool = False
    trust_remote_code: bool = False
    allow_pickle: bool = False
    progress: bool = True
    # Bootstrap confidence intervals in metrics.json (rmbench_fast.results.stats): resamples and seed.
    resamples: int = 10000
    seed: int = 0
    # Native engine choices (--attn, --lm-head, --ref-mode; see ScoreSettings and score_run).
    attn: str = "auto"
    lm_head: str = "auto"
    ref_mode: str = "auto"
    # The results store (rmbench_fast.store.db): its file or directory, or off.
    cache_dir: str | None = None
    no_cache: bool = False
    # Keep going (exit 0) when a score is NaN or inf; such a score loses every comparison.
    allow_nonfinite: bool = False
    # hf backend: "auto" spreads an unsupported architecture over the visible GPUs (accelerate).
    device_map: str | None = None
    # Truncation (SPEC §4/§5). The official scripts use 2048 and, for DPO prompts, 128; another
    # value is marked official: false in meta.settings (Skywork-Reward-V2 recommends 16384).
    max_length: int = 2048
    max_prompt_length: int = 128
    # "causal-logit:<token_id>": a causal LM's logit of that token after the prompt and response
    # (the chat template with its generation prompt), as Llama-3.1-Nemotron-70B-Reward-HF scores.
    reward: str | None = None
    # Tensor-parallel size under torchrun (the world is DP x TP ranks; rmbench_fast.utils.distributed).
    tp: int = 1
    # CPU: the linears' kernel (engine/layers/cpu_gemm.py) and the thread count (None: physical cores).
    cpu_gemm: str = "auto"
    threads: int | None = None


class EvalCache:
    """What consecutive evaluations over the same data can share (`python -m rmbench_fast sweep`).

    Memoizes by key: the validated records, the tokenized sequences (per tokenizer and template
    fingerprint), and, for DPO with a reference model on the native engine, the reference
    model's per-sequence Σ log π_ref. The reference is the same for every checkpoint of a sweep,
    so its forward passes run once instead of once per checkpoint. `hits` counts reuses by kind.
    """

    def __init__(self) -> None:
        self._store: dict[tuple[Any, ...], Any] = {}
        self.hits: Counter[str] = Counter()

    def __contains__(self, key: tuple[Any, ...]) -> bool:
        return key in self._store

    def put(self, key: tuple[Any, ...], value: Any) -> None:
        self._store[key] = value

    def get(self, key: tuple[Any, ...], compute: Callable[[], Any]) -> Any:
        if key in self._store:
            self.hits[str(key[0])] += 1
            return self._store[key]
        value = compute()
        self._store[key] = value
        return value


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


def sample_data_path() -> Path:
    from importlib.resources import files

    return Path(str(files("rmbench_fast") / "sample" / "rm_bench_sample.jsonl"))


def resolve_data(data: str | None) -> tuple[Path, str]:
    """The data path and where it came from: the user's, the HF cache, or the embedded sample."""
    path, origin, _source = resolve_data_source(data)
    return path, origin


def resolve_data_source(
    data: str | None, *, progress: bool = True, log: Callable[[str], None] = print
) -> tuple[Path, str, hub.HubSnapshot | None]:
    """`resolve_data` and the hub snapshot behind a `--data ORG/NAME[@REV]` dataset id: a local
    path of that name first, else the hub (inputs.hub; origin "huggingface-hub")."""
    if data is not None:
        path, snap = hub.resolve_dataset(data, progress=progress, log=log)
        return path, ("user" if snap is None else "huggingface-hub"), snap
    cached = hf_cached_dataset()
    if cached is not None:
        return cached, "huggingface-cache", None
    return sample_data_path(), "embedded-sample", None


def resolve_hub_models(
    cfg: RunConfig, log: Callable[[str], None] = print
) -> tuple[RunConfig, dict[str, hub.HubSnapshot]]:
    """`--model` / `--ref-model` given as `ORG/NAME[@REV]` -> the config with their snapshot
    directories (a local directory of that name wins), and the snapshots by option name. A
    branch or tag resolves once per process, so a second call (a sweep's next checkpoint, its
    checks before scoring) gets the same commit."""
    sources: dict[str, hub.HubSnapshot] = {}
    paths: dict[str, str] = {}
    for name in ("model", "ref_model"):
        value = getattr(cfg, name)
        if value is None:
            continue
        path, snap = hub.resolve_model(
            value,
            allow_pickle=cfg.allow_pickle,
            trust_remote_code=cfg.trust_remote_code,
            progress=cfg.progress,
            log=log,
        )
        if snap is not None:
            sources[name], paths[name] = snap, str(path)
    return (replace(cfg, **paths) if paths else cfg), sources


def record_sources(meta: dict[str, Any], asked: RunConfig, sources: dict[str, hub.HubSnapshot]) -> None:
    """metrics.json: each hub input's id, revision asked, commit sha (`<name>_source`, and
    `model_ref` = ORG/NAME@sha); `settings` keeps the arguments as given."""
    for name in ("model", "ref_model"):
        snap = sources.get(name)
        meta[f"{name}_source"] = snap.meta() if snap is not None else None
        meta["settings"][name] = getattr(asked, name)
    meta["model_ref"] = sources["model"].ref if "model" in sources else None


def resolve_device(device: str) -> str:
    """The run's device; under torchrun a CUDA device is this rank's own GPU (cuda:LOCAL_RANK)."""
    import torch

    from rmbench_fast.utils.distributed import local_device

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device} asked for, but torch sees no CUDA device (use --device cpu)")
    return str(local_device(device))


def join_world(cfg: RunConfig) -> Any:
    """torchrun's world (DP x TP ranks), or one process; --tp > 1 needs torchrun."""
    from rmbench_fast.utils import distributed

    if not distributed.launched():
        if cfg.tp != 1:
            raise UsageError(
                f"--tp {cfg.tp} needs torchrun: torchrun --nproc-per-node {cfg.tp} -m rmbench_fast run ..."
            )
        return distributed.world()
    device = "cuda" if (cfg.device in ("auto", "cuda") or cfg.device.startswith("cuda")) else cfg.device
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        device = "cpu"
    return distributed.init(tp_size=cfg.tp, device=device)


def data_shard() -> Any:
    """This rank's data-parallel replica for the engine's scheduler, or None in one replica."""
    from rmbench_fast.engine.scheduler import DataShard
    from rmbench_fast.utils import distributed

    w = distributed.world()
    return DataShard(w.dp_rank, w.dp_size, w.dp_group) if w.dp_size > 1 else None


def causal_logit_token(cfg: RunConfig) -> int | None:
    """The token id of `--reward causal-logit:<id>`, or None for the kind's usual reward."""
    if cfg.reward is None:
        return None
    name, _, tid = cfg.reward.partition(":")
    if name != "causal-logit" or not tid.isdigit():
        raise UsageError(f"unknown --reward {cfg.reward!r}; use causal-logit:<token_id>")
    return int(tid)


def check_kind(cfg: RunConfig, info: Any) -> tuple[str, str | None]:
    """The model kind and the reference-free mode, with the option conflicts rejected.

    "causal-logit": a causal LM scored by one logit (`--reward causal-logit:<id>`)."""
    if causal_logit_token(cfg) is not None:
        if info.kind != "dpo":
            raise UsageError(f"--reward causal-logit needs a causal LM, but {info.path} is a {info.kind}")
        if cfg.ref_model or cfg.ref_free:
            raise UsageError("--reward causal-logit takes no --ref-model or --ref-free")
        return "causal-logit", None
    kind = info.kind if cfg.kind == "auto" else cfg.kind
    if kind == "classifier":
        if cfg.ref_model:
            raise UsageError(
                f"--ref-model was given, but {info.path} is a sequence classifier (kind classifier); "
                "a reference model applies to DPO policies only"
            )
        if cfg.ref_free:
            raise UsageError(
                "--ref-free applies to DPO policies only, but the model is a sequence classifier"
            )
        return kind, None
    return kind, (None if cfg.ref_model else (cfg.ref_free or "avg"))


def kind_hint(cfg: RunConfig) -> str | None:
    """The kind the options imply, for a config.json without `architectures`: --kind, else DPO
    when --ref-model, --ref-free or --reward causal-logit is given, else None (ask for --kind)."""
    if cfg.kind != "auto":
        return cfg.kind
    if cfg.ref_model or cfg.ref_free or causal_logit_token(cfg) is not None:
        return "dpo"
    return None


def classifier_pad_id(info: Any, tok: Any) -> int | None:
    """The pad id run_rm.py leaves in `model.config.pad_token_id`, which the classifier pools
    with: a tokenizer without a pad token gets pad = EOS, which also overrides the config's
    value; otherwise a missing config pad is filled from the tokenizer's."""
    from rmbench_fast.backends.hf import resolve_classifier_pad_id

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
    from dataclasses import replace

    from rmbench_fast.inputs.tokenization import legacy_pool_index

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
    from rmbench_fast.inputs.tokenization import legacy_pool_index

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


def score_settings(
    cfg: RunConfig, kind: str, ref_free: str | None, device: str, dtype: str, pad_id: int | None
) -> ScoreSettings:
    """The run's options, as the scorers take them (a causal-logit run scores like a classifier
    whose head is one row of the LM head)."""
    logit = causal_logit_token(cfg) if kind == "causal-logit" else None
    kind = "classifier" if kind == "causal-logit" else kind
    budget = {} if cfg.batch_tokens is None else {"batch_tokens": cfg.batch_tokens}
    return ScoreSettings(
        kind=kind,  # type: ignore[arg-type]
        ref_free_mode=ref_free or "avg",
        dtype=dtype,
        device=device,
        batch_size=cfg.batch_size,
        fp32_scores=cfg.fp32_scores,
        allow_pickle=cfg.allow_pickle,
        trust_remote_code=cfg.trust_remote_code,
        pad_token_id=pad_id,
        attn_impl=cfg.attn,
        lm_head=cfg.lm_head,
        device_map=cfg.device_map,
        causal_logit_token=logit,
        tp_size=cfg.tp,
        cpu_gemm=cfg.cpu_gemm,
        **budget,
    )


def _make_scorer(
    cfg: RunConfig,
    model: ModelChoice,
    settings: ScoreSettings,
    log: Callable[[str], None],
    *,
    with_ref: bool,
) -> tuple[str, Any]:
    """The scorer for --backend: native where it supports the model(s) (auto), else hf."""
    ref_dir = Path(cfg.ref_model) if (with_ref and cfg.ref_model) else None
    ref_info = model.ref_info if with_ref else None
    if cfg.device_map is not None and cfg.backend == "native":
        raise UsageError(
            "--device-map spreads a model with the hf backend; it does not apply to --backend native"
        )
    if cfg.backend in ("auto", "native") and cfg.device_map is None:
        from rmbench_fast.engine.scorer import NativeScorer, native_supports

        want_head = "classifier" if model.kind == "classifier" else "causal"
        reason = native_supports(model.info.config, want_head) or (
            native_supports(ref_info.config, "causal") if ref_info else None
        )
        if reason is None:
            scorer = NativeScorer(model.model_dir, settings, ref_model_dir=ref_dir, log=log)
            scorer.shard = data_shard()
            return "native", scorer
        if cfg.backend == "native":
            raise ModelError(
                f"the native engine does not support this model: {reason}", file=str(model.model_dir)
            )
        log(f"native engine: {reason}; falling back to the hf backend")
    head = model.info.native_head
    if head is not None and model.info.needs_remote_code and not cfg.trust_remote_code:
        raise ModelError(
            f"model directory {model.model_dir} needs remote code on the hf backend ({head.reason}); "
            "the native engine runs it without (--backend native), or pass --trust-remote-code",
            file=str(model.model_dir),
        )
    if data_shard() is not None:
        raise UsageError(
            "data parallelism under torchrun runs the native engine; the hf backend is one process"
        )
    from rmbench_fast.backends.hf import HFScorer

    return "hf", HFScorer(model.model_dir, settings, ref_model_dir=ref_dir)


def _ref_sums_cacheable(cfg: RunConfig, model: ModelChoice) -> bool:
    """DPO with a reference model that the native engine runs for both models."""
    if not cfg.ref_model or model.ref_info is None or cfg.backend == "hf" or cfg.device_map is not None:
        return False
    from rmbench_fast.engine.scorer import native_supports

    return native_supports(model.info.config) is None and native_supports(model.ref_info.config) is None


@dataclass
class ReferenceSums:
    """A reference model's per-sequence Σ log π_ref, the batches they came from, its stats."""

    sums: np.ndarray  # [n_records, 6] float64
    schedule: Any  # engine.scheduler.Schedule
    stats: dict[str, Any]


def _native_sums(
    cfg: RunConfig,
    model_dir: Path,
    seqs: list[list[TokSeq]],
    settings: ScoreSettings,
    log: Callable[[str], None],
    progress: Callable[[int], None] | None = None,
    replay: Any = None,
    store: Store | None = None,
) -> ReferenceSums:
    """Per-sequence Σ log π over the answer tokens with the native engine; the model is freed
    on return. `replay`: score exactly these batches (another pass's schedule); `store`: the
    results store (stored batches are not recomputed)."""
    from rmbench_fast.engine.scorer import NativeScorer
    from rmbench_fast.scoring.rewards import SUM

    log(f"reference model {model_dir}: Σ log π_ref over {len(seqs)} records")
    scorer = NativeScorer(model_dir, settings.with_kind_dpo_sum(), log=log)
    scorer.shard = data_shard()
    batch_cache = store.batch_cache(scorer, [model_dir], seqs) if store is not None else None
    stats = scorer.score_stats(seqs, progress=progress, replay=replay, cache=batch_cache)
    scorer.stats["store"] = batch_cache.summary() if batch_cache is not None else None
    return ReferenceSums(np.ascontiguousarray(stats[..., SUM]), scorer.schedule, scorer.stats)


@dataclass
class Store:
    """The run's results store and the fingerprints its scopes need (see rmbench_fast.store.resume)."""

    store: Any  # rmbench_fast.store.db.ResultStore
    tokenizer: str
    kind: str

    def batch_cache(self, scorer: Any, model_dirs: list[Path], seqs: list[list[TokSeq]]) -> Any:
        from rmbench_fast.store.resume import StoreBatchCache, scope_parts

        vs = scorer.value_settings()
        scopes = []
        for d in model_dirs:
            parts = scope_parts(self.store, d, tokenizer=self.tokenizer, kind=self.kind, **vs)
            scopes.append(self.store.scope(parts, label=str(d)))
        return StoreBatchCache(self.store, scopes, seqs, vs["share_prefix"])


def open_run_store(cfg: RunConfig, model: ModelChoice, toks: Tokenized) -> Store | None:
    """The results store for a native run, or None (--no-cache, or the hf backend)."""
    if cfg.no_cache or cfg.backend == "hf" or cfg.device_map is not None:
        return None
    from rmbench_fast.store.db import open_store

    tok = f"{tokenizer_fingerprint(model.model_dir)}:{cfg.chat_template}:{toks.add_eos}:{toks.pad_id}"
    kind = cfg.reward if model.kind == "causal-logit" else model.kind  # the token id is part of it
    return Store(open_store(cfg.cache_dir), tok, str(kind))


def _both_fit(model: ModelChoice, cfg: RunConfig) -> bool:
    """Whether the policy and the reference fit on the device together (CUDA: their weight
    bytes and a 25% margin against the free memory)."""
    if not model.device.startswith("cuda"):
        return False
    import torch

    from rmbench_fast.engine.config import EngineConfig
    from rmbench_fast.engine.loader import model_class

    def n_params(d: Path) -> int:
        cfg = EngineConfig.from_model_dir(d, head_hint="causal")
        with torch.device("meta"):  # shapes only, no memory
            return sum(p.numel() for p in model_class(cfg)(cfg).parameters())

    free, _ = torch.cuda.mem_get_info(torch.device(model.device))
    bytes_per = 4 if model.dtype == "float32" else 2
    need = sum(n_params(d) * bytes_per for d in (model.model_dir, Path(cfg.ref_model or "")))
    return need * 1.25 < free


def reference_mode(cfg: RunConfig, model: ModelChoice, sweep: bool) -> str:
    """ "together" (both models on each batch, kernel A's fused ratio) or "reference-first" (the
    reference's sums in their own pass, one model in memory at a time, shared by a sweep).

    auto: together when both models fit on a CUDA device and this is not a sweep; otherwise
    reference-first. Both give bit-identical scores.
    """
    if cfg.ref_mode not in ("auto", "together", "reference-first"):
        raise UsageError(f"unknown --ref-mode {cfg.ref_mode!r}; use auto, together or reference-first")
    if cfg.ref_mode != "auto":
        return cfg.ref_mode
    return "together" if (not sweep and _both_fit(model, cfg)) else "reference-first"


@dataclass
class LoadedData:
    path: Path
    origin: str
    files: list[Path]
    sha256: str
    records: list[Record]
    key: tuple[Any, ...]
    source: hub.HubSnapshot | None = None  # a dataset id's commit and files


@dataclass
class ModelChoice:
    model_dir: Path
    demo: bool
    info: Any  # modelio.ModelInfo
    ref_info: Any | None
    kind: str
    ref_free: str | None
    device: str
    dtype: str


@dataclass
class Tokenized:
    formatter: Any
    tok: Any
    add_eos: bool
    pad_id: int | None
    key: tuple[Any, ...]
    seqs: list[list[TokSeq]]
    legacy: list[dict[str, Any]]


@dataclass
class Scored:
    backend: str
    scorer: Any
    scores: np.ndarray  # [n_records, 6] float64
    reference: ReferenceSums | None
    reference_mode: str | None  # together | reference-first | None (no reference on the native engine)
    seconds: float
    reference_note: str | None = None
    budget: dict[str, int] | None = None  # --batch-tokens raised to the longest record


def load_data(cfg: RunConfig, cache: EvalCache) -> LoadedData:
    """Step 1: the records, validated in full before anything else runs."""
    path, origin, source = resolve_data_source(cfg.data, progress=cfg.progress)
    key = ("records", str(path), tuple(cfg.domains or ()), cfg.limit, tuple(cfg.ids or ()))

    def load() -> tuple[list[Path], str, list[Record]]:
        files = data_files(path)
        selected = select(load_records(path), domains=cfg.domains, limit=cfg.limit, ids=cfg.ids)
        return files, hash_files(files), selected

    files, sha, records = cache.get(key, load)
    if not records:
        raise UsageError(f"no records left to score in {path} after --domains/--limit/--ids")
    return LoadedData(path, origin, files, sha, records, key, source)


def choose_models(cfg: RunConfig, log: Callable[[str], None]) -> ModelChoice:
    """Step 2: the model directories, their kind, and the device and dtype."""
    from rmbench_fast.inputs.modelio import inspect_model_dir

    demo = cfg.model is None
    if demo:
        from rmbench_fast.inputs.demo import ensure_smollm2

        log("no --model given: using the embedded demo policy SmolLM2-135M-Instruct (reference-free DPO)")
        model_dir = ensure_smollm2()
    else:
        model_dir = Path(cfg.model)  # type: ignore[arg-type]
    trust, pickle_ok = cfg.trust_remote_code, cfg.allow_pickle
    hint = kind_hint(cfg)
    info = inspect_model_dir(model_dir, trust_remote_code=trust, allow_pickle=pickle_ok, kind_hint=hint)
    kind, ref_free = check_kind(cfg, info)
    ref_info = None
    if cfg.ref_model:
        ref_dir = Path(cfg.ref_model)
        ref_info = inspect_model_dir(
            ref_dir, trust_remote_code=trust, allow_pickle=pickle_ok, kind_hint="dpo"
        )
    device = resolve_device(cfg.device)
    return ModelChoice(model_dir, demo, info, ref_info, kind, ref_free, device, run_dtype(cfg.dtype, device))


def tokenize_run(
    cfg: RunConfig, data: LoadedData, model: ModelChoice, cache: EvalCache, log: Callable[[str], None]
) -> Tokenized:
    """Step 3: format with the chat template and tokenize (shared across a sweep by fingerprint)."""
    from rmbench_fast.inputs.format import Formatter
    from rmbench_fast.inputs.tokenization import Tokenizer

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


def score_run(
    cfg: RunConfig,
    model: ModelChoice,
    toks: Tokenized,
    cache: EvalCache,
    log: Callable[[str], None],
    progress: Callable[[int], None] | None,
    set_total: Callable[[int], None] | None,
    *,
    sweep: bool = False,
) -> Scored:
    """Step 4: the scores [n_records, 6].

    With a reference model on the native engine, `reference_mode` decides: "together" runs both
    models on each batch; "reference-first" computes Σ log π_ref in its own pass (once per sweep,
    and kept in the results store across runs), then the policy alone (reward "sum") replaying
    the reference's batches, one model in memory at a time. Both are bit-identical.
    """
    t0 = time.perf_counter()
    n = len(toks.seqs)
    settings = score_settings(cfg, model.kind, model.ref_free, model.device, model.dtype, toks.pad_id)
    settings, budget = raise_budget(cfg, settings, toks.seqs, log)
    store = open_run_store(cfg, model, toks)
    mode = reference_mode(cfg, model, sweep) if _ref_sums_cacheable(cfg, model) else None
    if mode != "reference-first":
        backend, scorer = _make_scorer(cfg, model, settings, log, with_ref=True)
        if set_total is not None:
            set_total(n)
        dirs = [model.model_dir] + ([Path(cfg.ref_model)] if mode == "together" else [])  # type: ignore[arg-type]
        if backend == "native":
            batch_cache = store.batch_cache(scorer, dirs, toks.seqs) if store else None
            scores = scorer.score(toks.seqs, progress=progress, cache=batch_cache)
            scorer.stats["store"] = batch_cache.summary() if batch_cache is not None else None
        else:  # the transformers backend batches its own way: no store
            scores = scorer.score(toks.seqs, progress=progress)
        scores = np.asarray(scores, dtype=np.float64)
        return Scored(backend, scorer, scores, None, mode, time.perf_counter() - t0, budget=budget)
    ref_dir = Path(cfg.ref_model)  # type: ignore[arg-type]
    ref_key = reference_key(cfg, model, toks)
    fresh = ref_key not in cache
    if set_total is not None:
        set_total(n * (2 if fresh else 1))  # the bar covers both passes
    ref = cache.get(
        ref_key, lambda: _native_sums(cfg, ref_dir, toks.seqs, settings, log, progress, store=store)
    )
    note = "computed in this run" if fresh else "reused from an earlier run of this sweep"
    backend, scorer = _make_scorer(cfg, model, settings.with_kind_dpo_sum(), log, with_ref=False)
    batch_cache = store.batch_cache(scorer, [model.model_dir], toks.seqs) if store else None
    sums = np.asarray(
        scorer.score(toks.seqs, progress=progress, replay=ref.schedule, cache=batch_cache), dtype=np.float64
    )
    scorer.stats["store"] = batch_cache.summary() if batch_cache is not None else None
    if not scorer.schedule.same_as(ref.schedule):
        # The policy ran out of memory and re-planned: pair it with reference sums over its own
        # batches, never with sums from another batching.
        log("native: the policy's batching differs from the reference's; recomputing the reference sums")
        ref = _native_sums(cfg, ref_dir, toks.seqs, settings, log, None, replay=scorer.schedule, store=store)
        cache.put(ref_key, ref)
        note = "recomputed on the policy's batches (out-of-memory back-off)"
    seconds = time.perf_counter() - t0
    return Scored(backend, scorer, sums - ref.sums, ref, "reference-first", seconds, note, budget)


def raise_budget(
    cfg: RunConfig, settings: ScoreSettings, seqs: list[list[TokSeq]], log: Callable[[str], None]
) -> tuple[ScoreSettings, dict[str, int] | None]:
    """A `--batch-tokens` below the longest record's packed length (plan.segment_lengths, the
    smallest budget the planner accepts) is raised to it, said once here rather than once per
    pass by each scheduler (which would raise it to the same value), and returned for meta."""
    if cfg.batch_tokens is None or cfg.backend == "hf" or cfg.device_map is not None or not seqs:
        return settings, None
    from rmbench_fast.scoring.plan import segment_lengths

    longest = int(segment_lengths(seqs, share_prefix=settings.share_prefix).max())
    if longest <= settings.batch_tokens:
        return settings, None
    log(
        f"note: --batch-tokens {cfg.batch_tokens} is smaller than the longest record ({longest} packed tokens); "
        f"raised to {longest} (metrics.json meta.batch_tokens_raised)"
    )
    return replace(settings, batch_tokens=longest), {"asked": cfg.batch_tokens, "used": longest}


def json_safe_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Non-finite scores as None (JSON null: NaN is not JSON)."""
    for row in rows:
        for key in ("score_chosen", "score_rejected"):
            row[key] = [x if math.isfinite(x) else None for x in row[key]]
    return rows


def reference_key(cfg: RunConfig, model: ModelChoice, toks: Tokenized) -> tuple[Any, ...]:
    """The EvalCache key of a reference model's sums: the reference, the tokens, device, dtype, budget."""
    ref = str(Path(cfg.ref_model).resolve())  # type: ignore[arg-type]
    return ("ref_sums", ref, toks.key, model.device, model.dtype, cfg.batch_tokens)


def prepare_reference(cfg: RunConfig, log: Callable[[str], None] = print) -> dict[tuple[Any, ...], Any]:
    """The reference pass of a sweep on its own (a Ray sweep runs it as one task): steps 1-3 for
    `cfg`'s model, then Σ log π_ref. Returns EvalCache entries to seed every checkpoint's run
    with, so they share one set of reference sums (and batches), exactly as a local sweep does.
    Empty when `cfg` has no reference model the native engine runs."""
    cache = EvalCache()
    cfg, _sources = resolve_hub_models(cfg, log)
    data = load_data(cfg, cache)
    model = choose_models(cfg, log)
    if not _ref_sums_cacheable(cfg, model) or reference_mode(cfg, model, sweep=True) != "reference-first":
        return {}
    toks = tokenize_run(cfg, data, model, cache, log)
    settings = score_settings(cfg, model.kind, model.ref_free, model.device, model.dtype, toks.pad_id)
    store = open_run_store(cfg, model, toks)
    key = reference_key(cfg, model, toks)
    return {key: _native_sums(cfg, Path(cfg.ref_model), toks.seqs, settings, log, store=store)}  # type: ignore[arg-type]


def nonfinite_scores(records: Sequence[Record], scores: np.ndarray) -> list[dict[str, Any]]:
    """The (record, slot) pairs whose score is NaN or inf."""
    bad = np.argwhere(~np.isfinite(scores))
    return [
        {"record": records[r].index, "id": records[r].id, "domain": records[r].domain, "slot": int(j)}
        for r, j in bad
    ]


def run_meta(
    cfg: RunConfig, data: LoadedData, model: ModelChoice, toks: Tokenized, scored: Scored, total_s: float
) -> dict[str, Any]:
    """Step 5: metrics.json's `meta` (what ran, on what, how long)."""
    seqs, scores, kind = toks.seqs, scored.scores, model.kind
    ties = int(sum(int(np.sum(s[:N_STYLES, None] == s[None, N_STYLES:])) for s in scores))
    tok, add_eos = toks.tok, toks.add_eos
    meta: dict[str, Any] = {
        "model": str(model.model_dir),
        "ref_model": cfg.ref_model,
        "demo_model": model.demo,
        "kind": kind,
        "native_head": model.info.native_head.name if model.info.native_head is not None else None,
        "reward": "ref"
        if cfg.ref_model
        else (
            model.ref_free
            if kind == "dpo"
            else (cfg.reward if kind == "causal-logit" else "classifier-logit")
        ),
        "backend": scored.backend,
        "device": model.device,
        "dtype": model.dtype,
        "data": {
            "path": str(data.path),
            "origin": data.origin,
            "files": [str(f) for f in data.files],
            "sha256": data.sha256,
            "n_records": len(data.records),
            "source": data.source.meta() if data.source is not None else None,
        },
        "settings": {
            **{k: v for k, v in asdict(cfg).items() if k not in ("progress",)},
            # The official scripts' truncation: 2048 tokens, DPO prompts cut to their last 128.
            "official": cfg.max_length == 2048 and cfg.max_prompt_length == 128,
        },
        "chat_template": "model" if toks.formatter.uses_chat_template else toks.formatter.template_name,
        "classifier_add_eos": tok.eos_switch("current").describe() if add_eos else None,
        "classifier_add_eos_4_43_4": tok.eos_switch("4.43.4").describe() if add_eos else None,
        "pooling_4_43_4_differs": toks.legacy,
        "tokens": {
            "total": sum(len(s.ids) for group in seqs for s in group),
            "scored": sum(s.n_labels for group in seqs for s in group),
        },
        "tied_comparisons": ties,
        "scorer_stats": getattr(scored.scorer, "stats", None),
        "versions": versions(("torch", "transformers", "tokenizers", "triton", "numpy", "safetensors")),
        "seconds": {"total": total_s, "scoring": scored.seconds},
    }
    meta["reference_mode"] = scored.reference_mode
    meta["batch_tokens_raised"] = scored.budget
    if scored.reference_note is not None:
        meta["reference_sums"] = scored.reference_note
        meta["reference_scorer_stats"] = scored.reference.stats if scored.reference else None
    bad = nonfinite_scores(data.records, scores)
    meta["nonfinite"] = {"count": len(bad), "scores": bad[:100], "allowed": cfg.allow_nonfinite}
    meta.update(getattr(scored.scorer, "meta", None) or {})
    return meta


def run_evaluation(
    cfg: RunConfig,
    *,
    progress: Callable[[int], None] | None = None,
    set_total: Callable[[int], None] | None = None,
    log: Callable[[str], None] = print,
    cache: EvalCache | None = None,
    sweep: bool = False,
) -> dict[str, Any]:
    """Run RM-Bench on one reward model. Returns {"domains", "total", "meta", "rows"}:
    metrics.json's structure plus the scored records (scores.json's rows).

    `set_total(n_records)` is called once before scoring, `progress(k)` as k more records finish.
    `cache` shares data, tokenization and reference log-probs across runs (see EvalCache).
    """
    cache = cache or EvalCache()
    t0 = time.perf_counter()
    check_limit(cfg.limit, "limit")  # the CLI refused --limit already; evaluate(limit=) arrives here
    if cfg.max_length < 2 or not 0 < cfg.max_prompt_length < cfg.max_length:
        raise UsageError(
            f"--max-length {cfg.max_length} and --max-prompt-length {cfg.max_prompt_length}: need "
            "0 < max-prompt-length < max-length"
        )
    world = join_world(cfg)
    with phase("load"):  # the run's CPU set-up belongs to its start-up
        threads = set_threads(cfg.threads)
    asked = cfg
    with phase("data_tokenize"):
        data = load_data(cfg, cache)
    with phase("load"):
        cfg, sources = resolve_hub_models(cfg, log)
        model = choose_models(cfg, log)
    with phase("data_tokenize"):
        toks = tokenize_run(cfg, data, model, cache, log)
    scored = score_run(cfg, model, toks, cache, log, progress, set_total, sweep=sweep)
    with phase("metrics"):
        result = compute_metrics(data.records, scored.scores, resamples=cfg.resamples, seed=cfg.seed)
    # The run's bookkeeping is its own phase: reading package versions alone takes milliseconds,
    # which on a one-record profile is more than the model's compute.
    with phase("report"):
        result["meta"] = run_meta(cfg, data, model, toks, scored, time.perf_counter() - t0)
        record_sources(result["meta"], asked, sources)
        result["meta"]["distributed"] = {
            "world_size": world.world_size,
            "tp": world.tp_size,
            "dp": world.dp_size,
            "backend": world.backend,
        }
        result["meta"]["threads"] = threads  # the CPU scores' last bits follow it
        result["rows"] = json_safe_rows(score_rows(data.records, scored.scores))
        # Freeing the weights, KV buffers and tokenizer takes milliseconds too (munmap): it is the
        # run's teardown, counted here rather than left to an unmarked return.
        del scored, model, toks, data
    return result


def run_and_report(
    cfg: RunConfig, console: Any, *, cache: EvalCache | None = None, tables: bool = True, sweep: bool = False
) -> dict[str, Any]:
    """`python -m rmbench_fast run`: evaluate with a progress bar, write the outputs, print tables
    (`tables=False`: only the closing line; `cache`: see EvalCache)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    if is_main():  # rank 0 writes the outputs: find out now, not after scoring, that it cannot
        check_out_dir(Path(cfg.out or DEFAULT_OUT))
    with Progress(
        TextColumn("scoring"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("records"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not cfg.progress or not is_main(),
        transient=True,
    ) as bar:
        task = bar.add_task("scoring", total=None)

        result = run_evaluation(
            cfg,
            progress=lambda n: bar.advance(task, n),
            set_total=lambda n: bar.update(task, total=n),
            log=console.print,
            cache=cache,
            sweep=sweep,
        )
    rows = result.pop("rows")
    out_dir = Path(cfg.out or DEFAULT_OUT)
    if not is_main():  # rank 0 alone writes and reports; every rank has the whole result
        check_finite(result)
        return result
    write_outputs(out_dir, rows, result)
    check_finite(result)
    if tables:
        print_report(result, console)
    meta = result["meta"]
    console.print(
        f"{meta['data']['n_records']} records scored in {meta['seconds']['scoring']:.1f} s "
        f"({meta['backend']} backend, {meta['device']}, {meta['dtype']}); wrote {out_dir / 'scores.json'} "
        f"and {out_dir / 'metrics.json'}"
    )
    if meta["data"]["origin"] == "embedded-sample":
        console.print(
            "[bold]This was the embedded 10-record sample, not RM-Bench.[/bold] For real numbers, run on the hub "
            f"dataset {HF_DATASET} (or github.com/THU-KEG/RM-Bench's data/total_dataset.json, as a path):\n"
            f"  python -m rmbench_fast run --model ORG/NAME --data {HF_DATASET}"
        )
    return result


def evaluate(model: str | None = None, **options: Any) -> dict[str, Any]:
    """Python API: `evaluate(model_dir, ref_model=..., ref_free=..., data=..., limit=..., ...)`.

    Takes the same options as `python -m rmbench_fast run` (see `RunConfig`), writes nothing
    unless `out=` is given, and returns {"domains", "total", "meta", "rows"} (metrics.json's
    structure plus the scored records).
    """
    out = options.pop("out", None)
    options.setdefault("progress", False)
    cfg = RunConfig(model=model, out=out, **options)
    if out is not None:
        check_out_dir(Path(out))
    result = run_evaluation(cfg, log=lambda _msg: None)
    if out is not None:
        rows = result["rows"]
        write_outputs(Path(out), rows, {k: v for k, v in result.items() if k != "rows"})
    check_finite(result)
    return result


def check_finite(result: dict[str, Any]) -> None:
    """Stop with exit code 3 when a score is NaN or inf (unless --allow-nonfinite)."""
    nonfinite = result["meta"].get("nonfinite") or {}
    if nonfinite.get("count") and not nonfinite.get("allowed"):
        err = NonFiniteScoreError(nonfinite_message(nonfinite))
        err.result = result  # type: ignore[attr-defined]
        raise err
