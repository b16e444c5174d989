"""Generative runs against a tiny fake OpenAI-compatible server (http.server on 127.0.0.1).

No vLLM needed. The fake judge's answer to each request is a fixed function of which answers
it sees as A and B, so the tests know every verdict without the package's parser and recompute
M[i][j] on their own.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rmbench_fast.commands.judge import main

MODEL = "fake-judge"
# The fake judge's outputs and, for each, who it prefers ("A", "B", "tie" or None: unparseable).
OUTPUTS = [
    ("Both fine, but A is clearer. \\boxed{A>>B}", "A"),
    ("Verdict: \\boxed{ A > B }", "A"),
    ("They are the same: $\\boxed{A=B}$", "tie"),
    ("\\boxed{A>B} ... no, wait: \\boxed{B>A}", "B"),
    ("\\boxed{B>>A}", "B"),
    ("I cannot decide.", None),
]


def _answers(prompt: str) -> tuple[str, str]:
    a = prompt.split("<|The Start of Assistant A's Answer|>\n", 1)[1].split(
        "\n<|The End of Assistant A's", 1
    )[0]
    b = prompt.split("<|The Start of Assistant B's Answer|>\n", 1)[1].split(
        "\n<|The End of Assistant B's", 1
    )[0]
    return a, b


def fake_output(prompt: str) -> int:
    """Index into OUTPUTS: a fixed function of the (A, B) answers."""
    a, b = _answers(prompt)
    return hashlib.sha256(f"{a}|{b}".encode()).digest()[0] % len(OUTPUTS)


class FakeServer:
    """A threaded fake chat-completions server. `hook(n, body, headers)` may return a
    (status, headers, body) to send instead of the normal answer to the n-th chat request."""

    def __init__(
        self,
        *,
        models: list[str] | None = None,
        has_models_route: bool = True,
        api_key: str | None = None,
        hook: Callable[[int, dict[str, Any], dict[str, str]], tuple[int, dict[str, str], Any] | None]
        | None = None,
        delay: float = 0.0,
    ) -> None:
        self.models = models if models is not None else [MODEL]
        self.has_models_route = has_models_route
        self.api_key = api_key
        self.hook = hook
        self.delay = delay
        self.chat: list[dict[str, Any]] = []  # every chat request body, in arrival order
        self.answered: list[str] = []  # prompts answered 200, in order
        self.headers_seen: list[dict[str, str]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _send(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
                data = (obj if isinstance(obj, str) else json.dumps(obj)).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self) -> bool:
                if server.api_key is None:
                    return True
                if self.headers.get("Authorization") == f"Bearer {server.api_key}":
                    return True
                self._send(401, {"error": {"message": "bad key", "code": 401}})
                return False

            def do_GET(self) -> None:  # noqa: N802
                if not self._authorized():
                    return
                if self.path.rstrip("/") == "/v1/models" and server.has_models_route:
                    self._send(200, {"object": "list", "data": [{"id": m} for m in server.models]})
                else:
                    self._send(404, {"detail": "Not Found"})

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path != "/v1/chat/completions":
                    self._send(404, {"detail": "Not Found"})
                    return
                with server.lock:
                    n = len(server.chat)
                    server.chat.append(body)
                    server.headers_seen.append(dict(self.headers.items()))
                if not self._authorized():
                    return
                if server.hook is not None:
                    special = server.hook(n, body, dict(self.headers.items()))
                    if special is not None:
                        self._send(special[0], special[2], special[1])
                        return
                if body.get("model") not in server.models:
                    self._send(
                        404,
                        {
                            "error": {
                                "message": f"The model `{body.get('model')}` does not exist.",
                                "code": 404,
                            }
                        },
                    )
                    return
                if server.delay:
                    time.sleep(server.delay)
                prompt = body["messages"][0]["content"]
                text = OUTPUTS[fake_output(prompt)][0][: 8 * int(body["max_tokens"])]
                with server.lock:
                    server.answered.append(prompt)
                self._send(
                    200,
                    {
                        "id": f"c{n}",
                        "object": "chat.completion",
                        "model": body["model"],
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": text},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {
                            "prompt_tokens": len(prompt) // 4,
                            "completion_tokens": 7,
                            "total_tokens": 0,
                        },
                    },
                )

        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # the client opens up to --concurrency connections at once

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that gave up (the timeout test) is not an error here

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> FakeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


def _rec(n: int, domain: str) -> dict[str, Any]:
    return {
        "id": f"r{n}",
        "domain": domain,
        "prompt": f"Question {n}: what is {{x}}?",
        "chosen": [f"chosen {s} of {n}" for s in ("concise", "detailed", "markdown")],
        "rejected": [f"rejected {s} of {n}" for s in ("concise", "detailed", "markdown")],
    }


@pytest.fixture
def data(tmp_path: Path) -> Path:
    p = tmp_path / "data.jsonl"
    rows = [
        _rec(0, "chat"),
        _rec(1, "chat"),
        _rec(2, "code"),
        _rec(3, "safety-refuse"),
        _rec(4, "safety-response"),
    ]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with FakeServer() as s:
        yield s


def _run(
    capsys: pytest.CaptureFixture[str], data: Path, out: Path, url: str, *extra: str, model: str = MODEL
) -> tuple[int, str, str]:
    argv = [
        "--data", str(data), "--out", str(out), "--judge-endpoint", url, "--judge-model", model,
        "--max-new-tokens", "16", "--retry-backoff", "0.01", "--resamples", "50", "--no-progress", *extra,
    ]  # fmt: skip
    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _one_line_error(rc: int, err: str, *needles: str) -> str:
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _expected(data: Path) -> dict[str, np.ndarray]:
    """Per metric domain, M recomputed from the fake judge's known outputs (no package code)."""
    template_a = "<|The Start of Assistant A's Answer|>\n{a}\n<|The End of Assistant A's Answer|>"
    template_b = "<|The Start of Assistant B's Answer|>\n{b}\n<|The End of Assistant B's Answer|>"
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for line in data.read_text().splitlines():
        rec = json.loads(line)
        dom = "safety" if rec["domain"].startswith("safety") else rec["domain"]
        m = np.zeros((3, 3))
        for i in range(3):
            for j in range(3):
                total = 0.0
                for chosen_is_a in (True, False):
                    a, b = (rec["chosen"][i], rec["rejected"][j])[:: 1 if chosen_is_a else -1]
                    prompt = template_a.format(a=a) + "\n\n" + template_b.format(b=b)
                    winner = OUTPUTS[fake_output(prompt)][1]
                    if winner == "tie":
                        total += 0.5
                    elif winner is not None and (winner == "A") == chosen_is_a:
                        total += 1.0
                m[i, j] = total / 2
        sums[dom] = sums.get(dom, np.zeros((3, 3))) + m
        counts[dom] = counts.get(dom, 0) + 1
    return {d: sums[d] / counts[d] for d in sums}


def test_full_run(tmp_path: Path, data: Path, server: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    rc, stdout, err = _run(capsys, data, out, server.url)
    assert rc == 0, err
    assert len(server.chat) == 5 * 18  # 18 requests per record reach the server
    assert all(b["max_tokens"] == 16 and b["temperature"] == 0.0 and b["model"] == MODEL for b in server.chat)
    judgments = [json.loads(ln) for ln in (out / "judgments.jsonl").read_text().splitlines()]
    assert len(judgments) == 90
    assert [j["index"] for j in judgments] == list(range(90))
    assert {(j["record_id"], j["i"], j["j"], j["order"]) for j in judgments} == {
        (f"r{n}", i, j, o)
        for n in range(5)
        for i in range(3)
        for j in range(3)
        for o in ("chosen_first", "rejected_first")
    }
    metrics = json.loads((out / "metrics.json").read_text())
    for dom, m in _expected(data).items():
        np.testing.assert_allclose(metrics["domains"][dom]["matrix"], m, atol=1e-12)
    assert list(metrics["domains"]) == ["chat", "code", "safety"]
    assert metrics["domains"]["safety"]["n"] == 2
    for key in ("hard", "normal", "easy", "score", "ci"):
        assert key in metrics["domains"]["chat"]
    meta = metrics["meta"]
    unparseable = sum(1 for p in server.answered if OUTPUTS[fake_output(p)][1] is None)
    assert meta["judgments"]["parse_failures"] == unparseable > 0
    assert meta["parse_failure_rate"] == pytest.approx(unparseable / 90)
    ties = sum(1 for p in server.answered if OUTPUTS[fake_output(p)][1] == "tie")
    assert meta["tie_rate"] == pytest.approx(ties / 90)
    assert 0 <= meta["position_consistency"] <= 1
    assert len(meta["judgments"]["first_parse_failures"]) == min(5, unparseable)
    assert meta["judgments"]["first_parse_failures"][0]["text"] == "I cannot decide."
    assert "1/2 for a tie" in meta["scoring"] and meta["kind"] == "generative"
    assert meta["template"]["name"] == "rm-bench" and "THU-KEG/RM-Bench" in meta["template"]["source"]
    assert meta["sampling"] == {"max_tokens": 16, "temperature": 0.0, "top_p": 1.0, "greedy": True}
    assert meta["requests"]["sent"] == 90 and meta["requests"]["from_log"] == 0
    assert meta["judge"]["retries"] == 0 and meta["tokens"]["completion"] == 90 * 7
    rows = json.loads((out / "scores.json").read_text())
    assert len(rows) == 5 and "judge_matrix" in rows[0] and "score_chosen" not in rows[0]
    assert "judge requests (0 from the log, 0 from the results store, 90 sent)" in " ".join(stdout.split())


def test_prefix_order_on_the_wire(
    tmp_path: Path, data: Path, server: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """With one request in flight, requests arrive record by record, grouped by answer A."""
    rc, _, err = _run(capsys, data, tmp_path / "out", server.url, "--concurrency", "1")
    assert rc == 0, err
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    expected = []
    for rec in rows:
        expected += [(rec["chosen"][i], rec["rejected"][j]) for i in range(3) for j in range(3)]
        expected += [(rec["rejected"][j], rec["chosen"][i]) for j in range(3) for i in range(3)]
    got = [_answers(b["messages"][0]["content"]) for b in server.chat]
    assert got == expected


def test_retries_on_500(tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def hook(n: int, body: dict[str, Any], headers: dict[str, str]) -> Any:
        return (500, {}, {"error": {"message": "boom"}}) if n < 2 else None

    with FakeServer(hook=hook) as s:
        rc, _, err = _run(capsys, data, tmp_path / "out", s.url, "--concurrency", "1")
    assert rc == 0, err
    assert len(s.chat) == 90 + 2
    meta = json.loads((tmp_path / "out" / "metrics.json").read_text())["meta"]
    assert meta["judge"]["retries"] == 2 and meta["judge"]["retries_by_reason"] == {"500": 2}
    assert meta["judge"]["http_requests"] == 92
    judgments = [json.loads(ln) for ln in (tmp_path / "out" / "judgments.jsonl").read_text().splitlines()]
    assert judgments[0]["retries"] == 2 and all(j["retries"] == 0 for j in judgments[1:])


def test_429_backoff_honours_retry_after(
    tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    times: list[float] = []

    def hook(n: int, body: dict[str, Any], headers: dict[str, str]) -> Any:
        times.append(time.monotonic())
        return (429, {"Retry-After": "0.3"}, {"error": {"message": "slow down"}}) if n == 0 else None

    with FakeServer(hook=hook) as s:
        rc, _, err = _run(capsys, data, tmp_path / "out", s.url, "--concurrency", "1")
    assert rc == 0, err
    assert times[1] - times[0] >= 0.29
    meta = json.loads((tmp_path / "out" / "metrics.json").read_text())["meta"]
    assert meta["judge"]["retries_by_reason"] == {"429": 1} and meta["judge"]["backoff_seconds"] >= 0.3


def test_retries_exhausted(tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with FakeServer(hook=lambda n, b, h: (503, {}, {"error": {"message": "overloaded"}})) as s:
        rc, _, err = _run(capsys, data, tmp_path / "out", s.url, "--judge-retries", "2", "--concurrency", "1")
    _one_line_error(rc, err, "failed a request 3 times", "HTTP 503: overloaded")
    assert len(s.chat) == 3


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_endpoint(tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    t0 = time.monotonic()
    rc, _, err = _run(capsys, data, tmp_path / "out", f"http://127.0.0.1:{_closed_port()}/v1")
    _one_line_error(rc, err, "cannot reach the judge endpoint http://127.0.0.1:")
    assert time.monotonic() - t0 < 30
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_wrong_model_name(
    tmp_path: Path, data: Path, server: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = _run(capsys, data, tmp_path / "out", server.url, model="nope")
    _one_line_error(rc, err, "does not serve model 'nope'", "fake-judge")
    assert server.chat == []  # refused before the first request


def test_wrong_model_name_without_models_route(
    tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeServer(has_models_route=False) as s:
        rc, _, err = _run(capsys, data, tmp_path / "out", s.url, model="nope")
    _one_line_error(rc, err, "does not serve model 'nope'", "HTTP 404", "does not exist")


def test_bad_options(tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["--data", str(data), "--judge-model", MODEL])
    _one_line_error(rc, capsys.readouterr().err, "--judge-endpoint URL --judge-model NAME")
    rc, _, err = _run(capsys, data, tmp_path / "o", "ftp://x")
    _one_line_error(rc, err, "expected an http:// or https:// URL")
    rc, _, err = _run(capsys, data, tmp_path / "o", "http://127.0.0.1:1", "--max-new-tokens", "0")
    _one_line_error(rc, err, "--max-new-tokens must be >= 1")
    rc, _, err = _run(capsys, data, tmp_path / "o", "http://127.0.0.1:1", "--ref-free", "avg")
    _one_line_error(rc, err, "--ref-free does not apply to --kind generative")
    rc, _, err = _run(
        capsys, data, tmp_path / "o", "http://127.0.0.1:1", "--api-key-env", "RMBF_SURELY_UNSET"
    )
    _one_line_error(rc, err, "RMBF_SURELY_UNSET")


def test_resume_with_the_server_gone(tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    with FakeServer() as s:
        rc, _, err = _run(capsys, data, out, s.url)
        url = s.url
    assert rc == 0, err
    first = json.loads((out / "metrics.json").read_text())
    (out / "metrics.json").unlink()
    rc, stdout, err = _run(capsys, data, out, url)  # nothing listens there any more
    assert rc == 0, err
    again = json.loads((out / "metrics.json").read_text())
    assert again["domains"] == first["domains"] and again["total"] == first["total"]
    assert again["meta"]["requests"]["from_log"] == 90 and again["meta"]["requests"]["sent"] == 0
    assert "(90 from the log, 0 from the results store, 0 sent)" in " ".join(stdout.split())


def test_results_store_answers_another_out_dir(
    tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Answers also go to the results store as they arrive: a run into a fresh --out finishes
    from it with the server gone; --no-cache does not read it; another server URL is another judge."""
    with FakeServer() as s:
        rc, _, err = _run(capsys, data, tmp_path / "a", s.url)
        url = s.url
    assert rc == 0, err
    first = json.loads((tmp_path / "a" / "metrics.json").read_text())
    rc, stdout, err = _run(capsys, data, tmp_path / "b", url)  # nothing listens there any more
    assert rc == 0, err
    again = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert again["domains"] == first["domains"] and again["total"] == first["total"]
    req = again["meta"]["requests"]
    assert (req["from_log"], req["from_store"], req["sent"]) == (0, 90, 0)
    assert "(0 from the log, 90 from the results store, 0 sent)" in " ".join(stdout.split())
    rc, _, err = _run(capsys, data, tmp_path / "c", url, "--no-cache")
    _one_line_error(rc, err, url.split("//")[1].split("/")[0])
    with FakeServer() as s2:  # another port: a server can't say what it serves, so ask it
        rc, _, err = _run(capsys, data, tmp_path / "d", s2.url)
    assert rc == 0, err
    assert len(s2.chat) == 90


def test_resume_after_a_failed_run(tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A run stopped by a fatal error keeps what arrived; the rerun sends only the rest."""
    out = tmp_path / "out"

    def hook(n: int, body: dict[str, Any], headers: dict[str, str]) -> Any:
        return (401, {}, {"error": {"message": "key revoked"}}) if n >= 40 else None

    with FakeServer(hook=hook) as s:
        rc, _, err = _run(capsys, data, out, s.url, "--concurrency", "1")
    _one_line_error(rc, err, "refused the request", "key revoked")
    logged = (out / "judge_log.jsonl").read_text().splitlines()
    assert len(logged) == 40
    # A torn last line (as a crash mid-write leaves) is skipped, and the next line starts clean.
    with open(out / "judge_log.jsonl", "a") as fh:
        fh.write('{"key": "abc", "te')
    with FakeServer() as s2:
        rc, _, err = _run(capsys, data, out, s2.url, "--concurrency", "4")
    assert rc == 0, err
    assert len(s2.chat) == 50
    meta = json.loads((out / "metrics.json").read_text())["meta"]
    assert meta["requests"]["from_log"] == 40 and meta["requests"]["sent"] == 50
    assert meta["requests"]["log_unreadable_lines"] == 1
    for dom, m in _expected(data).items():
        got = json.loads((out / "metrics.json").read_text())["domains"][dom]["matrix"]
        np.testing.assert_allclose(got, m, atol=1e-12)
    # Another model name (or other decoding settings) does not reuse these answers.
    with FakeServer(models=["other"]) as s3:
        rc, _, err = _run(capsys, data, tmp_path / "out", s3.url, model="other")
    assert rc == 0, err and len(s3.chat) == 90


def test_api_key_is_sent_but_never_written(
    tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = "sk-test-0123456789abcdef"
    out = tmp_path / "out"

    def hook(n: int, body: dict[str, Any], headers: dict[str, str]) -> Any:
        if n == 0:  # a server that echoes the key in an error message
            return (400, {}, {"error": {"message": f"prompt too long for key {secret}"}})
        return None

    with FakeServer(api_key=secret, hook=hook) as s:
        mp = pytest.MonkeyPatch()
        mp.setenv("RMBF_TEST_JUDGE_KEY", secret)
        try:
            rc, stdout, err = _run(capsys, data, out, s.url, "--api-key-env", "RMBF_TEST_JUDGE_KEY")
        finally:
            mp.undo()
    assert rc == 0, err
    assert all(h.get("Authorization") == f"Bearer {secret}" for h in s.headers_seen)
    for f in out.iterdir():
        assert secret not in f.read_text(), f
    assert secret not in stdout and secret not in err
    meta = json.loads((out / "metrics.json").read_text())["meta"]
    assert meta["judge"]["api_key"] == "set" and meta["settings"]["api_key_env"] == "RMBF_TEST_JUDGE_KEY"
    assert meta["judgments"]["request_errors"] == 1 and meta["judge"]["request_errors"] == 1
    errors = [j for j in map(json.loads, (out / "judgments.jsonl").read_text().splitlines()) if j["error"]]
    assert len(errors) == 1 and errors[0]["verdict"] is None and "***" in errors[0]["error"]
    # A refused key: one line, and the key is not in it.
    with FakeServer(api_key="other-key") as s:
        mp = pytest.MonkeyPatch()
        mp.setenv("RMBF_TEST_JUDGE_KEY", secret)
        try:
            rc, _, err = _run(capsys, data, tmp_path / "o2", s.url, "--api-key-env", "RMBF_TEST_JUDGE_KEY")
        finally:
            mp.undo()
    line = _one_line_error(rc, err, "refused the request", "--api-key-env")
    assert secret not in line


def test_request_timeout_is_retried(tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def hook(n: int, body: dict[str, Any], headers: dict[str, str]) -> Any:
        if n == 0:
            time.sleep(1.0)  # the client gives up after 0.3 s and asks again
        return None

    p = tmp_path / "one.jsonl"
    p.write_text(json.dumps(_rec(0, "chat")) + "\n")
    with FakeServer(hook=hook) as s:
        rc, _, err = _run(
            capsys, p, tmp_path / "out", s.url, "--request-timeout", "0.3", "--concurrency", "1"
        )
    assert rc == 0, err
    meta = json.loads((tmp_path / "out" / "metrics.json").read_text())["meta"]
    assert meta["judge"]["retries_by_reason"] == {"timeout": 1}


def test_progress_bar_run(tmp_path: Path, data: Path, server: FakeServer) -> None:
    """The rich progress bar (per request, with tokens/s) on a terminal console."""
    import argparse
    import io

    from rich.console import Console

    from rmbench_fast.commands.judge import build_parser, run_judge

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120)
    args: argparse.Namespace = build_parser().parse_args(
        ["--data", str(data), "--out", str(tmp_path / "o"), "--judge-endpoint", server.url,
         "--judge-model", MODEL, "--max-new-tokens", "16", "--resamples", "0"]
    )  # fmt: skip
    assert run_judge(args, console) == 0
    assert "tok/s" in buf.getvalue() and "requests" in buf.getvalue()
