"""Oracle driver: RewardBench 2's official scoring functions, run from the installed wheel.

The functions are the ones `scripts/run_v2.py` calls, read at test time from the installed
`rewardbench` wheel (0.1.4, whose `rewardbench/utils.py` is byte-identical to allenai/reward-bench
at fdc742d, PR 236 "v2 code updates"):
- `reroll_and_score_dataset(dataset, total_completions, cols_to_combine)`: best-of-N credit
  per prompt, 1 / #(scores == max) when scores[0] is the max, else 0;
- `process_single_model(dataset)` with its helper `sample_stats`: the Ties composite.

Nothing is copied: the functions' source is taken out of the wheel's file with `ast` and run
in a namespace that holds numpy, math, defaultdict and a `Dataset` / `pd` pair. The package
`__init__` (and `rewardbench.utils` as a module) does not import here: it needs `datasets`,
`fastchat` and transformers 4.x. When `pandas` and `datasets` are installed they are used as
they are; otherwise two small stand-ins give the few DataFrame / Dataset operations the two
functions call (slicing rows, a column's values, `unique`, building from a dict or rows).
"""

from __future__ import annotations

import ast
import importlib.util
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from tests.helpers.official import CPUTokenizer

OFFICIAL_FUNCTIONS = ("reroll_and_score_dataset", "sample_stats", "process_single_model")


def utils_path() -> Path:
    """The installed wheel's rewardbench/utils.py (ImportError when the wheel is missing)."""
    spec = importlib.util.find_spec("rewardbench")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("official reward-bench code missing: pip install --no-deps rewardbench")
    path = Path(next(iter(spec.submodule_search_locations))) / "utils.py"
    if not path.is_file():
        raise ImportError("rewardbench has no utils.py")
    return path


class _Column:
    def __init__(self, values: list[Any]) -> None:
        self.values = values

    def tolist(self) -> list[Any]:
        return list(self.values)

    def unique(self) -> list[Any]:
        out: list[Any] = []
        for v in self.values:
            if not any(v == u for u in out):
                out.append(v)
        return out


class _Frame:
    """The DataFrame operations `reroll_and_score_dataset` uses, over a dict of columns."""

    def __init__(self, data: Any = None) -> None:
        if isinstance(data, list):  # rows
            cols = list(dict.fromkeys(k for row in data for k in row))
            self.cols = {c: [row.get(c) for row in data] for c in cols}
        else:
            self.cols = {k: list(v) for k, v in (data or {}).items()}

    @property
    def columns(self) -> list[str]:
        return list(self.cols)

    def __len__(self) -> int:
        return len(next(iter(self.cols.values()), []))

    def __getitem__(self, col: str) -> _Column:
        return _Column(self.cols[col])

    @property
    def iloc(self) -> Any:
        frame = self

        class _ILoc:
            def __getitem__(self, sl: slice) -> _Frame:
                return _Frame({k: v[sl] for k, v in frame.cols.items()})

        return _ILoc()


class _Dataset:
    """The datasets.Dataset operations the two functions use: rows, columns, from_dict/pandas."""

    def __init__(self, cols: dict[str, list[Any]]) -> None:
        self.cols = cols

    @classmethod
    def from_dict(cls, d: dict[str, list[Any]]) -> _Dataset:
        return cls({k: list(v) for k, v in d.items()})

    @classmethod
    def from_pandas(cls, df: Any) -> _Dataset:
        return cls({c: list(df[c].tolist()) for c in df.columns})

    @property
    def column_names(self) -> list[str]:
        return list(self.cols)

    def to_pandas(self) -> _Frame:
        return _Frame(self.cols)

    def __len__(self) -> int:
        return len(next(iter(self.cols.values()), []))

    def __iter__(self) -> Any:
        for i in range(len(self)):
            yield {k: v[i] for k, v in self.cols.items()}

    def __getitem__(self, col: str) -> list[Any]:
        return self.cols[col]


def _backends(containers: str) -> tuple[Any, Any, str]:
    if containers == "stand-ins":
        return _Dataset, type("pd", (), {"DataFrame": _Frame}), "stand-ins"
    try:
        import pandas as pd
        from datasets import Dataset

        return Dataset, pd, "datasets+pandas"
    except ImportError:
        return _Dataset, type("pd", (), {"DataFrame": _Frame}), "stand-ins"


def official_functions(containers: str = "auto") -> dict[str, Any]:
    """{name: function} for OFFICIAL_FUNCTIONS, compiled from the wheel's source; "backend" says
    whether the real datasets/pandas ("auto" when installed) or the stand-ins are in use.

    The real `Dataset` stores a float NaN as null (Arrow), so the Ties code then sees None and
    raises TypeError in `max`; the stand-ins keep the float, which is the function's arithmetic
    on the scores as produced."""
    path = utils_path()
    tree = ast.parse(path.read_text(), filename=str(path))
    found = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in OFFICIAL_FUNCTIONS}
    missing = set(OFFICIAL_FUNCTIONS) - set(found)
    if missing:
        raise ImportError(f"{path} has no {sorted(missing)} (not the PR 236 scoring code)")
    Dataset, pd, backend = _backends(containers)
    ns: dict[str, Any] = {"np": np, "math": math, "defaultdict": defaultdict, "Dataset": Dataset, "pd": pd}
    module = ast.Module(body=[found[n] for n in OFFICIAL_FUNCTIONS], type_ignores=[])
    exec(compile(module, str(path), "exec"), ns)
    out = {n: ns[n] for n in OFFICIAL_FUNCTIONS}
    out["backend"] = backend
    out["Dataset"] = Dataset
    return out


def official_scores(
    prompts: list[dict[str, Any]], scores: list[list[float]], containers: str = "auto"
) -> tuple[dict[str, float], list[float]]:
    """run_v2.py's results for RB2 records (`prompts`, in file order) and their per-completion
    scores (chosen first, then rejected): ({subset: score}, per-prompt best-of-N credit).

    Mirrors run_v2.py's flow after inference: unrolled rows (id, subset, text, scores) ->
    `reroll_and_score_dataset` -> num_correct column -> per subset the mean of "results", or
    `process_single_model` for the subset whose lower-cased name is "ties".
    """
    f = official_functions(containers)
    rows: dict[str, list[Any]] = {"text": [], "scores": [], "subset": [], "id": []}
    for rec, sc in zip(prompts, scores):
        for s in sc:
            rows["text"].append("x")
            rows["scores"].append(s)
            rows["subset"].append(rec["subset"])
            rows["id"].append(rec["id"])
    ds = f["Dataset"].from_dict(rows)
    rolled = f["reroll_and_score_dataset"](ds, [r["total_completions"] for r in prompts], ["text", "scores"])
    cols = {k: list(rolled[k]) for k in rolled.column_names}
    cols["num_correct"] = [r["num_correct"] for r in prompts]
    results = [float(x) for x in cols["results"]]
    out: dict[str, float] = {}
    for subset in sorted(set(cols["subset"])):
        idx = [i for i, s in enumerate(cols["subset"]) if s == subset]
        sub = f["Dataset"].from_dict({k: [v[i] for i in idx] for k, v in cols.items()})
        if subset.lower() == "ties":
            _, overall = f["process_single_model"](sub)
            out[subset] = float(overall)
        else:
            out[subset] = float(sum(results[i] for i in idx) / len(idx))
    return out, results


# -- the classifier flow of run_v2.py (default_v2 config: RewardBenchPipeline) ------------------
def official_classifier_scores(
    model_dir: str | Path, prompts: list[dict[str, Any]], *, batch_size: int = 64, max_length: int = 2048
) -> list[list[float]]:
    """run_v2.py's scores for a sequence classifier, fp32 on the CPU: per prompt, one score per
    completion (chosen first, then rejected).

    What is reproduced: `load_bon_dataset_v2` unrolls every prompt into rows (chosen, then
    rejected), each text `apply_chat_template([user prompt, assistant completion],
    tokenize=False)` (`prepare_dialogue_from_tokenizer(ift=True)`); the tokenizer keeps its own
    truncation side (run_v2.py never sets "left"); pad := EOS when missing (config pad too);
    add_eos_token when there is no chat template; DataLoader batches of `batch_size` rows ->
    `RewardBenchPipeline(texts, truncation, padding, max_length, function_to_apply="none")` ->
    `.float().cpu().numpy().tolist()`, then cut back per prompt by `total_completions`.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tests.helpers.official import official_classes

    _, pipe_cls = official_classes()
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    if getattr(tok, "chat_template", None) is None:
        raise ImportError(
            "this driver covers tokenizers with a chat template (the FastChat path is not reproduced)"
        )
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), dtype=torch.float32)
    pipe = pipe_cls("text-classification", model=model, tokenizer=tok)
    if pipe.tokenizer.pad_token_id is None:
        pipe.model.config.pad_token_id = pipe.tokenizer.eos_token_id
        pipe.tokenizer.pad_token_id = pipe.tokenizer.eos_token_id
    if pipe.model.config.pad_token_id is None:
        pipe.model.config.pad_token_id = pipe.tokenizer.pad_token_id
    pipe.tokenizer = CPUTokenizer(pipe.tokenizer)
    kwargs = {
        "batch_size": batch_size,
        "truncation": True,
        "padding": True,
        "max_length": max_length,
        "function_to_apply": "none",
        "return_token_type_ids": False,
    }
    texts = [
        tok.apply_chat_template(
            [{"role": "user", "content": p["prompt"]}, {"role": "assistant", "content": c}], tokenize=False
        )
        for p in prompts
        for c in list(p["chosen"]) + list(p["rejected"])
    ]
    flat: list[float] = []
    for b0 in range(0, len(texts), batch_size):
        out = pipe(texts[b0 : b0 + batch_size], **kwargs)
        flat += [v[0] if isinstance(v, list) else v for v in out.float().cpu().numpy().tolist()]
    rows, i = [], 0
    for p in prompts:
        rows.append(flat[i : i + p["total_completions"]])
        i += p["total_completions"]
    return rows


# -- the generative ratings mode (scripts/run_generative_v2.py --score_w_ratings) ---------------
RATINGS_NAMES = ("ratings_prompt", "ratings_prompt_ties", "API_ERROR_OUTPUT")
RATINGS_FUNCTIONS = ("_get_single_rating", "run_judge_ratings_multi")


def official_ratings(answer: Any) -> dict[str, Any]:
    """The wheel's ratings prompts and its rating functions (`generative_v2.py`), compiled from
    the file with `ast` (the module itself imports anthropic, google and together). The judge
    is `answer(messages, max_tokens, temperature) -> str`, called where the official code calls
    its API (`chat_completion`); the judge model is put in the OpenAI list so that path runs."""
    path = utils_path().parent / "generative_v2.py"
    tree = ast.parse(path.read_text(), filename=str(path))
    body: list[ast.stmt] = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in RATINGS_FUNCTIONS:
            body.append(node)
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id in RATINGS_NAMES for t in node.targets
        ):
            body.append(node)
    import re

    def chat_completion(model: str, messages: Any, temperature: float, max_tokens: int) -> str:
        return str(answer(messages, max_tokens, temperature))

    ns: dict[str, Any] = {
        "re": re,
        "chat_completion": chat_completion,
        "OPENAI_MODEL_LIST": ("fake-judge",),
        "ANTHROPIC_MODEL_LIST": (),
        "GEMINI_MODEL_LIST": (),
        "TOGETHER_MODEL_LIST": (),
    }
    exec(compile(ast.Module(body=body, type_ignores=[]), str(path), "exec"), ns)
    missing = [n for n in (*RATINGS_NAMES, *RATINGS_FUNCTIONS) if n not in ns]
    if missing:
        raise ImportError(f"{path} has no {missing} (not the ratings-mode code)")
    return ns


def official_ratings_scores(
    prompts: list[dict[str, Any]], answer: Any
) -> tuple[dict[str, float], list[float], list[list[int]]]:
    """run_generative_v2.py --score_w_ratings on RB2 records with the judge `answer`:
    ({subset: score}, per-prompt result, per-prompt ratings).

    What the script does after `run_judge_ratings_multi` (transcribed from allenai/reward-bench
    scripts/run_generative_v2.py, `get_judgement` and the results section; the script is not in
    the wheel): a best-of-N prompt gives 0.25 when the winners are "error" (no valid rating),
    else `(0 in winners) / len(winners)`; a subset's score is sum(results) / len(results). A Ties
    prompt gives its ratings list, which becomes the "scores" column of `process_single_model`.
    """
    ns = official_ratings(answer)
    f = official_functions("stand-ins")
    results: list[float] = []
    ratings: list[list[int]] = []
    ties: dict[str, list[Any]] = {"id": [], "scores": [], "num_correct": [], "subset": []}
    for p in prompts:
        answers = [
            [{"role": "user", "content": p["prompt"]}, {"role": "assistant", "content": c}]
            for c in list(p["chosen"]) + list(p["rejected"])
        ]
        is_ties = p["subset"] == "Ties"
        winners, _, info = ns["run_judge_ratings_multi"](
            p["prompt"], answers, "fake-judge", multi_turn=False, model_modifier=None, is_ties=is_ties
        )
        ratings.append(list(info["ratings"]))
        if is_ties:
            results.append(math.nan)
            for k, v in (("id", p["id"]), ("scores", info["ratings"]), ("num_correct", p["num_correct"])):
                ties[k].append(v)
            ties["subset"].append(p["subset"])
        else:
            results.append(0.25 if winners == "error" else (0 in winners) / len(winners))
    out: dict[str, float] = {}
    for subset in sorted({p["subset"] for p in prompts}):
        if subset == "Ties":
            _, score = f["process_single_model"](f["Dataset"].from_dict(ties))
            out[subset] = float(score)
        else:
            idx = [i for i, p in enumerate(prompts) if p["subset"] == subset]
            out[subset] = float(sum(results[i] for i in idx) / len(idx))
    return out, results, ratings
