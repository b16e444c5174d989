"""Which files of a hub repo a run reads, decided from the repo's file listing alone.

- a model (`model_meta_files`, then `model_weight_files` once the index is here): config.json,
  the tokenizer and chat-template files, the weight indexes; the shards the safetensors index
  names, else `model.safetensors`, else every top-level *.safetensors. Pickle weights
  (pytorch_model*.bin, *.pt, *.pth) only with --allow-pickle and only when there are no
  safetensors (the refusal is the local directory's); *.py only with --trust-remote-code;
- a dataset (`dataset_files`): total_dataset.json, else one folder of parquet shards, else the
  `<domain>_filtered.json` files. Never a loading script.

Only top-level files count (and `additional_chat_templates/*.jinja`): a repo's subfolders hold
other formats (original/, onnx/, checkpoints), which a run never reads.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from rmbench_fast.errors import RMBenchError
from rmbench_fast.inputs.modelio import pickle_only_message
from rmbench_fast.records import DOMAINS

Listing = dict[str, int | None]  # repo file path -> size in bytes (None: the hub did not say)

CONFIG_FILES = ("config.json",)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "spiece.model",
)
TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
TEMPLATE_DIR = "additional_chat_templates"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_INDEX = "pytorch_model.bin.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


class HubError(RMBenchError):
    """A model or dataset id that cannot be resolved (one line, exit code 2)."""


def top_level(names: Iterable[str]) -> list[str]:
    return sorted(n for n in names if "/" not in n)


def model_meta_files(listing: Listing, *, trust_remote_code: bool) -> list[str]:
    """The small files of a model repo that a run reads: config, tokenizer, chat templates, the
    weight indexes, and (with --trust-remote-code only) the top-level *.py."""
    wanted = set(CONFIG_FILES + TOKENIZER_FILES + TEMPLATE_FILES + (SAFETENSORS_INDEX, PICKLE_INDEX))
    out = [n for n in top_level(listing) if n in wanted]
    out += sorted(n for n in listing if n.startswith(TEMPLATE_DIR + "/") and n.endswith(".jinja"))
    if trust_remote_code:
        out += [n for n in top_level(listing) if n.endswith(".py")]
    return out


def _index_files(index: Path) -> list[str] | None:
    """The shard names a weight index's `weight_map` points to; None when it is unreadable."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return sorted({str(v) for v in weight_map.values()})
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        return None


def model_weight_files(listing: Listing, snapshot: Path, where: str, *, allow_pickle: bool) -> list[str]:
    """The weight files to fetch: the shards the safetensors index names, else `model.safetensors`,
    else every top-level *.safetensors; with none, pickle weights only with `allow_pickle` (the
    refusal is the one a local directory gets). `snapshot` holds the index once fetched."""
    top = top_level(listing)
    safetensors = [n for n in top if n.endswith(".safetensors")]
    if safetensors:
        if SAFETENSORS_INDEX in listing:
            shards = _index_files(snapshot / SAFETENSORS_INDEX)
            if shards is not None:
                return shards
        return ["model.safetensors"] if "model.safetensors" in safetensors else safetensors
    pickles = [n for n in top if n.endswith(PICKLE_SUFFIXES) and n != "training_args.bin"]
    if not pickles:
        raise HubError(f"model {where} has no weights (no *.safetensors, pytorch_model*.bin or *.pt)")
    if not allow_pickle:
        raise HubError(pickle_only_message(f"model {where}", pickles))
    if PICKLE_INDEX in listing:
        shards = _index_files(snapshot / PICKLE_INDEX)
        if shards is not None:
            return shards
    main = [n for n in pickles if n.startswith("pytorch_model") and n.endswith(".bin")]
    return main or pickles


def dataset_files(listing: Listing, where: str) -> tuple[list[str], str]:
    """The RM-Bench data files of a dataset repo and the path (file or folder) to load:
    `total_dataset.json` (the shallowest), else every parquet shard of the first folder that has
    any, else the `<domain>_filtered.json` files of the first folder that has any."""

    def per_domain(name: str) -> bool:
        return name.endswith("_filtered.json") and name.removesuffix("_filtered.json") in DOMAINS

    def depth(n: str) -> tuple[int, str]:
        return (n.count("/"), n)

    total = sorted((n for n in listing if PurePosixPath(n).name == "total_dataset.json"), key=depth)
    if total:
        return [total[0]], total[0]
    for suffix, keep in ((".parquet", lambda _n: True), (".json", per_domain)):
        found = sorted((n for n in listing if n.endswith(suffix)), key=depth)
        found = [n for n in found if keep(PurePosixPath(n).name)]
        if found:
            folder = str(PurePosixPath(found[0]).parent)
            files = [n for n in found if str(PurePosixPath(n).parent) == folder]
            return files, ("" if folder == "." else folder)
    raise HubError(
        f"dataset {where} holds no RM-Bench data (no total_dataset.json, parquet shards or "
        "<domain>_filtered.json files)"
    )
