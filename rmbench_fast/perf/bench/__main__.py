"""`python -m rmbench_fast.perf.bench`: the child entry of one path and the benchmark classifier."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from rmbench_fast.perf.bench.child import child_main


def make_smollm2_classifier(dst: Path, *, seed: int = 0, std: float = 0.02) -> Path:
    """A sequence classifier at a real model's size for benchmarks: the demo SmolLM2-135M-Instruct
    body and tokenizer with a random score head ([1, H], N(0, std), seeded), written as
    LlamaForSequenceClassification (pad = EOS, as the tokenizer's). Its scores mean nothing;
    its cost is a 135M classifier's, and every path loads it (native, transformers, vLLM)."""
    import torch  # start-up cost: torch
    from safetensors.torch import load_file, save_file  # start-up cost: safetensors

    from rmbench_fast.inputs.demo import ensure_smollm2  # start-up cost: numpy and the demo model's files

    src = ensure_smollm2()
    dst.mkdir(parents=True, exist_ok=True)
    config = json.loads((src / "config.json").read_text())
    config.update(
        architectures=["LlamaForSequenceClassification"],
        num_labels=1,
        tie_word_embeddings=False,
        id2label={"0": "LABEL_0"},
        label2id={"LABEL_0": 0},
    )
    tensors = load_file(str(src / "model.safetensors"))
    gen = torch.Generator().manual_seed(seed)
    tensors["score.weight"] = torch.randn(1, config["hidden_size"], generator=gen) * std
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    (dst / "README.txt").write_text(
        f"SmolLM2-135M-Instruct body with a random score head (seed {seed}, std {std}), "
        "made by rmbench_fast.perf.bench (make_smollm2_classifier) for benchmarks.\n"
    )
    return dst


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m rmbench_fast.perf.bench`: the child entry of one path (`--child SPEC OUT`) and
    the benchmark classifier (`--make-smollm2-classifier DIR`). The bench command itself is
    `python -m rmbench_fast bench` (its parser lives in commands, above this layer)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"] and len(argv) == 3:
        return child_main(argv[1], argv[2])
    if argv[:1] == ["--make-smollm2-classifier"] and len(argv) == 2:
        print(make_smollm2_classifier(Path(argv[1])))
        return 0
    print(
        "error: python -m rmbench_fast.perf.bench takes --child SPEC OUT or --make-smollm2-classifier DIR; "
        "the benchmark is `python -m rmbench_fast bench`",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
