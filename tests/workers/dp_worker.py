"""`python -m rmbench_fast run` under torchrun, optionally failing on one rank (tests/pipeline/test_dp.py).

From the repository root:
torchrun --nproc-per-node 2 -m tests.workers.dp_worker [--fail-rank R] -- RUN_ARGS...
"""

from __future__ import annotations

import os
import sys


def main() -> int:
    args = sys.argv[1:]
    fail = None
    if args[:1] == ["--fail-rank"]:
        fail, args = int(args[1]), args[2:]
    if args[:1] == ["--"]:
        args = args[1:]
    if fail is not None and int(os.environ.get("RANK", "0")) == fail:
        from rmbench_fast.engine import scorer

        def broken(self: object, batch: object) -> object:
            raise RuntimeError("injected failure in a batch")

        scorer.NativeScorer._score_batch = broken  # type: ignore[method-assign]
    from rmbench_fast.commands import main as cli_main

    return cli_main(["run", *args])


if __name__ == "__main__":
    sys.exit(main())
