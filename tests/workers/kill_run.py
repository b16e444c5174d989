"""A run that kills itself with SIGKILL at a chosen point (for tests/store/test_resume.py).

From the repository root:
    python -m tests.workers.kill_run MODEL DATA OUT STORE POINT

POINT: none | load (while the weights load) | after_batch:N (once N batches are committed) |
in_txn:N (inside the N-th batch's transaction, after some of its rows are written).
The hooks are installed here, around the public API; the package has no test hooks.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    model, data, out, store, point = sys.argv[1:6]
    from rmbench_fast.engine import loader
    from rmbench_fast.store import db as store_mod

    if point == "load":
        real_tensors = loader._checkpoint_tensors

        def tensors(*a: object, **k: object) -> Iterator[object]:
            for i, item in enumerate(real_tensors(*a, **k)):  # type: ignore[arg-type]
                if i == 3:  # a few tensors in
                    _die()
                yield item

        loader._checkpoint_tensors = tensors  # type: ignore[assignment]
    elif point.startswith("after_batch:"):
        n = int(point.split(":")[1])
        real_put = store_mod.ResultStore.put_batch
        done = [0]

        def put(self: store_mod.ResultStore, *a: object, **k: object) -> bool:
            ok = real_put(self, *a, **k)  # type: ignore[arg-type]
            done[0] += 1
            if done[0] == n:
                _die()
            return ok

        store_mod.ResultStore.put_batch = put  # type: ignore[method-assign]
    elif point.startswith("in_txn:"):
        n = int(point.split(":")[1])
        real_put = store_mod.ResultStore.put_batch
        done = [0]

        def put(self: store_mod.ResultStore, *a: object, **k: object) -> bool:
            done[0] += 1
            if done[0] == n:
                rows = [0]

                def trace(sql: str) -> None:
                    if sql.lstrip().upper().startswith("INSERT"):
                        rows[0] += 1
                        if rows[0] == 4:  # the batch row and a few sequence rows are in
                            _die()

                self.db.set_trace_callback(trace)
            return real_put(self, *a, **k)  # type: ignore[arg-type]

        store_mod.ResultStore.put_batch = put  # type: ignore[method-assign]

    from rmbench_fast import evaluate

    evaluate(
        model, data=data, limit=4, batch_tokens=600, device="cpu", dtype="float32", out=out, cache_dir=store
    )


if __name__ == "__main__":
    main()
