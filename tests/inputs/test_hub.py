"""Models and datasets by hub id (rmbench_fast.inputs.hub), against a fake hub on loopback.

`FakeHub` is a small HTTP server on 127.0.0.1 (a free port) that answers the requests the
installed `huggingface_hub` client sends (read from its source: `HfApi.repo_info` ->
GET /api/{models,datasets}/ORG/NAME/revision/REV[?blobs=true]; `list_repo_tree` ->
GET /api/.../tree/SHA?recursive=...; `hf_hub_download` -> HEAD then GET
/[datasets/]ORG/NAME/resolve/REV/FILE with ETag and X-Repo-Commit headers; errors carry
X-Error-Code: RepoNotFound, RevisionNotFound, EntryNotFound, GatedRepo; a GET with
`Range: bytes=N-` gets 206 and the rest, as the hub's CDN answers). Runs are real
`python -m rmbench_fast` subprocesses with HF_ENDPOINT pointing at it (the client reads it at
import time), so nothing of the client is mocked. Every request waits at most 10 s, and the
server shuts itself down after a few minutes even if a test hangs.

The repos hold tiny random Llama models (tests/helpers/tiny.py) plus files a run must never fetch:
`pytorch_model.bin` (pickle) and `modeling_x.py` (code). `org/big` holds one whose weights
(16 MB) outgrow the client's 10 MiB write chunk, so a killed download leaves bytes to resume.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from tests.helpers.paths import REPO, SAMPLE

pytest.importorskip("huggingface_hub")
pytest.importorskip("transformers")

TOKEN = "hf_fake_token_for_tests_0123456789"
RUN_TIMEOUT = 240


def _sha(seed: str) -> str:
    return hashlib.sha1(seed.encode()).hexdigest()


class FakeHub:
    """A fake Hugging Face hub. `repos[(kind, repo_id)]` = {"refs": {name: sha}, "commits":
    {sha: {path: bytes}}, "private": bool, "gated": bool, "sizes": {path: reported size}}.
    `requests` logs (method, kind, repo_id, revision, file) for every file request, `ranges`
    (file, Range header) for every GET of a file; `hold` maps a file name to a byte offset where
    its stream stops until `release` is set (at most 60 s); `no_range` names files whose Range
    header is ignored (200 and the whole file); `etags` overrides a file's ETag (a wrong sha256);
    `on_info` runs after each info request."""

    def __init__(self, *, lifetime_s: float = 600.0) -> None:
        self.repos: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[tuple[str, str, str, str, str]] = []
        self.info_requests: list[tuple[str, str, str]] = []
        self.auth_seen: list[str | None] = []
        self.ranges: list[tuple[str, str | None]] = []
        self.hold: dict[str, int] = {}
        self.release = threading.Event()
        self.no_range: set[str] = set()
        self.etags: dict[str, str] = {}
        self.sent: Counter[str] = Counter()  # bytes of each file sent so far
        self.on_info: Any = None
        self.lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10  # a stuck client connection is dropped, never waited on forever

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                if "Content-Length" not in (headers or {}):
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD" and body:
                    self.wfile.write(body)

            def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
                self._send(
                    status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})}
                )

            def _error(self, status: int, code: str, commit: str | None = None) -> None:
                headers = {"X-Error-Code": code, "X-Error-Message": code}
                if commit:
                    headers["X-Repo-Commit"] = commit
                self._json(status, {"error": code}, headers)

            def _repo(self, kind: str, repo_id: str) -> dict[str, Any] | None:
                repo = hub.repos.get((kind, repo_id))
                if repo is None:
                    self._error(404, "RepoNotFound")
                    return None
                auth = self.headers.get("Authorization")
                with hub.lock:
                    hub.auth_seen.append(auth)
                if repo.get("private") and auth != f"Bearer {TOKEN}":
                    self._error(401, "RepoNotFound")
                    return None
                if repo.get("gated") and auth != f"Bearer {TOKEN}":
                    self._error(403, "GatedRepo")
                    return None
                return repo

            def _commit(self, repo: dict[str, Any], rev: str) -> str | None:
                sha = repo["refs"].get(rev, rev)
                if sha not in repo["commits"]:
                    self._error(404, "RevisionNotFound")
                    return None
                return sha

            def do_HEAD(self) -> None:  # noqa: N802
                self.do_GET()

            def do_GET(self) -> None:  # noqa: N802
                url = urlsplit(self.path)
                parts = [unquote(p) for p in url.path.strip("/").split("/")]
                query = parse_qs(url.query)
                if parts[0] == "api" and len(parts) >= 6 and parts[1] in ("models", "datasets"):
                    kind, repo_id, op, rev = parts[1][:-1], f"{parts[2]}/{parts[3]}", parts[4], parts[5]
                    repo = self._repo(kind, repo_id)
                    if repo is None:
                        return
                    sha = self._commit(repo, rev)
                    if sha is None:
                        return
                    files = repo["commits"][sha]
                    sizes = {p: repo.get("sizes", {}).get(p, len(b)) for p, b in files.items()}
                    if op == "revision":
                        with hub.lock:
                            hub.info_requests.append((kind, repo_id, rev))
                        blobs = query.get("blobs", ["false"])[0].lower() == "true"
                        siblings = [
                            {"rfilename": p, **({"size": sizes[p], "blobId": _sha(p + sha)} if blobs else {})}
                            for p in sorted(files)
                        ]
                        self._json(200, {"id": repo_id, "sha": sha, "private": False, "siblings": siblings})
                        if hub.on_info is not None:
                            hub.on_info(kind, repo_id, rev)
                        return
                    if op == "tree":
                        tree = [
                            {"type": "file", "path": p, "size": sizes[p], "oid": _sha(p + sha)}
                            for p in sorted(files)
                        ]
                        self._json(200, tree)
                        return
                    self._error(404, "NotFound")
                    return
                if parts[0] == "datasets":
                    kind, parts = "dataset", parts[1:]
                else:
                    kind = "model"
                if len(parts) < 5 or parts[2] != "resolve":
                    self._error(404, "NotFound")
                    return
                repo_id, rev, name = f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:])
                with hub.lock:
                    hub.requests.append((self.command, kind, repo_id, rev, name))
                    if self.command == "GET":
                        hub.ranges.append((name, self.headers.get("Range")))
                repo = self._repo(kind, repo_id)
                if repo is None:
                    return
                sha = self._commit(repo, rev)
                if sha is None:
                    return
                body = repo["commits"][sha].get(name)
                if body is None:
                    self._error(404, "EntryNotFound", commit=sha)
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes=") and name not in hub.no_range:
                    start = int(rng[6:].split("-")[0] or 0)
                etag = hub.etags.get(name) or hashlib.sha256(body).hexdigest()
                headers = {
                    "X-Repo-Commit": sha,
                    "ETag": f'"{etag}"',
                    "Accept-Ranges": "bytes",
                    "Content-Length": str(len(body) - start),
                    "Content-Type": "application/octet-stream",
                }
                status = 200
                if start:
                    status = 206
                    headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
                hold = hub.hold.get(name)
                if self.command == "HEAD" or hold is None:
                    self._send(status, body[start:], headers)
                    if self.command == "GET":
                        with hub.lock:
                            hub.sent[name] += len(body) - start
                    return
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                for i in range(start, len(body), 65536):
                    if i >= hold:
                        hub.release.wait(60)
                    self.wfile.write(body[i : i + 65536])
                    self.wfile.flush()
                    with hub.lock:
                        hub.sent[name] += len(body[i : i + 65536])

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self._thread.start()
        self._deadline = threading.Timer(lifetime_s, self.stop)  # stops by itself, whatever happens
        self._deadline.daemon = True
        self._deadline.start()

    def add(
        self,
        kind: str,
        repo_id: str,
        commits: dict[str, dict[str, bytes]],
        refs: dict[str, str],
        **flags: Any,
    ) -> None:
        self.repos[(kind, repo_id)] = {"commits": commits, "refs": refs, **flags}

    def fetched(self, repo_id: str | None = None) -> list[str]:
        """File names GET-requested (downloads), in order."""
        return [r[4] for r in self.requests if r[0] == "GET" and (repo_id is None or r[2] == repo_id)]

    def stop(self) -> None:
        self._deadline.cancel()
        self.server.shutdown()
        self.server.server_close()


def _dir_files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def tiny_repos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, bytes]]:
    """The files of three tiny Llama checkpoints (seeds 0, 1, 2), plus a pickle file and a code
    file that must never be fetched, and a small RM-Bench dataset (three sample records)."""
    from tests.helpers.tiny import make_tiny_model_dir

    root = tmp_path_factory.mktemp("tiny_hub")
    out: dict[str, dict[str, bytes]] = {}
    out["big"] = _dir_files(make_tiny_model_dir(root / "big", "llama", vocab_size=32000, seed=3))
    for seed in (0, 1, 2):
        files = _dir_files(make_tiny_model_dir(root / f"m{seed}", "llama", vocab_size=128, seed=seed))
        files["pytorch_model.bin"] = b"PICKLE: must never be fetched"
        files["modeling_x.py"] = b"raise SystemExit('remote code ran')\n"
        files["README.md"] = f"tiny model, seed {seed}\n".encode()
        out[f"m{seed}"] = files
    sample = SAMPLE
    rows = [json.loads(line) for line in sample.read_text().splitlines() if line.strip()][:3]
    out["data"] = {
        "total_dataset.json": json.dumps(rows).encode(),
        "README.md": b"# RM-Bench (fake)\n",
        "rm_bench.py": b"raise SystemExit('a loading script ran')\n",
    }
    return out


SHA_A, SHA_B, SHA_C, SHA_D = (_sha(s) for s in ("commit-a", "commit-b", "commit-c", "data-d"))


@pytest.fixture
def hub(tiny_repos: dict[str, dict[str, bytes]]) -> Iterator[FakeHub]:
    h = FakeHub()
    m0, m1, m2 = tiny_repos["m0"], tiny_repos["m1"], tiny_repos["m2"]
    h.add("model", "org/tiny", {SHA_A: m0, SHA_B: m1, SHA_C: m2}, {"main": SHA_A, "v1": SHA_B})
    h.add("model", "org/big", {SHA_A: tiny_repos["big"]}, {"main": SHA_A})
    h.add("model", "org/private", {SHA_A: m0}, {"main": SHA_A}, private=True)
    h.add("model", "org/gated", {SHA_A: m0}, {"main": SHA_A}, gated=True)
    pickle_only = {k: v for k, v in m0.items() if not k.endswith(".safetensors")}
    h.add("model", "org/pickle", {SHA_A: pickle_only}, {"main": SHA_A})
    h.add("model", "org/huge", {SHA_A: m0}, {"main": SHA_A}, sizes={"model.safetensors": 10**15})
    h.add("dataset", "org/rmb", {SHA_D: tiny_repos["data"]}, {"main": SHA_D})
    yield h
    h.stop()


def _env(hub: FakeHub, home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(
        HF_ENDPOINT=hub.url,
        HF_HOME=str(home / "hf"),
        RMBENCH_FAST_CACHE=str(home / "rmbf"),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_XET="1",
        HF_HUB_ETAG_TIMEOUT="10",
        HF_HUB_DOWNLOAD_TIMEOUT="10",
        COLUMNS="200",  # rich: no table cell folds a label
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    env.update(extra)
    return env


RUN_ARGS = ("--no-progress", "--resamples", "0", "--chat-template", "tulu", "--no-cache")


def _run(env: dict[str, str], *argv: str, timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rmbench_fast", *argv],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1, lines
    return errors[0]


def _meta(out: Path) -> dict[str, Any]:
    return json.loads((out / "metrics.json").read_text())["meta"]


def test_parse_hub_id() -> None:
    from rmbench_fast.inputs.hub import HubId, parse_hub_id

    assert parse_hub_id("Skywork/Skywork-Reward-V2-Llama-3.1-8B") == HubId(
        "Skywork/Skywork-Reward-V2-Llama-3.1-8B", None
    )
    assert parse_hub_id("THU-KEG/RM-Bench@refs/pr/3") == HubId("THU-KEG/RM-Bench", "refs/pr/3")
    assert parse_hub_id(f"org/tiny@{SHA_A}") == HubId("org/tiny", SHA_A)
    bad = (
        "./org/tiny",
        "/abs/path",
        "a/b/c",
        "tiny",
        "org/..",
        "org/tiny@",
        "~/x/y",
        "org/t@../../etc",
        "o/t@a//b",
    )
    for not_an_id in bad:
        assert parse_hub_id(not_an_id) is None, not_an_id


def test_file_choice_rules() -> None:
    """What a model and a dataset download fetch, decided from the listing alone."""
    from rmbench_fast.inputs import hub_files as hub

    listing: dict[str, int | None] = dict.fromkeys(
        [
            "config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "chat_template.jinja",
            "additional_chat_templates/tool.jinja",
            "model.safetensors",
            "consolidated.safetensors",
            "original/consolidated.00.pth",
            "pytorch_model.bin",
            "modeling_x.py",
            "README.md",
        ]
    )
    meta = hub.model_meta_files(listing, trust_remote_code=False)
    assert meta == [
        "chat_template.jinja",
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "additional_chat_templates/tool.jinja",
    ]
    assert "modeling_x.py" in hub.model_meta_files(listing, trust_remote_code=True)
    assert hub.model_weight_files(listing, Path("/nonexistent"), "x", allow_pickle=True) == [
        "model.safetensors"
    ]
    pickles = {"config.json": 1, "pytorch_model.bin": 1, "training_args.bin": 1}
    with pytest.raises(hub.HubError, match=r"only pickle weights \(pytorch_model.bin\); pass --allow-pickle"):
        hub.model_weight_files(pickles, Path("/nonexistent"), "org/x@abc1234", allow_pickle=False)
    assert hub.model_weight_files(pickles, Path("/x"), "x", allow_pickle=True) == ["pytorch_model.bin"]
    assert hub.dataset_files({"README.md": 1, "data/total_dataset.json": 1, "x.py": 1}, "d") == (
        ["data/total_dataset.json"],
        "data/total_dataset.json",
    )
    shards = {"data/train-0.parquet": 1, "data/train-1.parquet": 1, "other/x.parquet": 1, "a.py": 1}
    assert hub.dataset_files(shards, "d") == (["data/train-0.parquet", "data/train-1.parquet"], "data")
    domains = {"chat_filtered.json": 1, "math_filtered.json": 1, "notes.json": 1}
    assert hub.dataset_files(domains, "d") == (["chat_filtered.json", "math_filtered.json"], "")
    with pytest.raises(hub.HubError, match="holds no RM-Bench data"):
        hub.dataset_files({"README.md": 1, "loader.py": 1}, "org/d@abc1234")


def test_download_then_offline_rerun(hub: FakeHub, tmp_path: Path) -> None:
    """A private model and a dataset by id: only the needed files are fetched (never the pickle
    or the code), the token is used and written nowhere, meta records id, revision and sha; an
    offline rerun from the cache sends no request and writes byte-identical scores.json."""
    env = _env(hub, tmp_path, HF_TOKEN=TOKEN)
    out1, out2 = tmp_path / "run1", tmp_path / "run2"
    args = ("run", "--model", "org/private", "--data", "org/rmb", *RUN_ARGS)
    p1 = _run(env, *args, "--out", str(out1))
    assert p1.returncode == 0, (p1.stdout[-3000:], p1.stderr[-3000:])
    fetched = hub.fetched()
    assert sorted(hub.fetched("org/private")) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert hub.fetched("org/rmb") == ["total_dataset.json"]
    assert not [f for f in fetched if f.endswith((".bin", ".py", ".md"))]
    assert not [r for r in hub.requests if r[4].endswith((".bin", ".py"))]  # not even a HEAD
    assert f"Bearer {TOKEN}" in hub.auth_seen
    meta = _meta(out1)
    assert meta["model_source"]["repo_id"] == "org/private"
    assert meta["model_source"]["revision"] == "main"
    assert meta["model_source"]["sha"] == SHA_A
    assert meta["model_ref"] == f"org/private@{SHA_A}"
    assert meta["model_source"]["origin"] == "download"
    assert meta["settings"]["model"] == "org/private"
    assert meta["data"]["origin"] == "huggingface-hub"
    assert meta["data"]["source"]["sha"] == SHA_D and meta["data"]["n_records"] == 3
    snapshot = tmp_path / "hf" / "hub" / "models--org--private" / "snapshots" / SHA_A
    assert Path(meta["model"]) == snapshot
    assert not (snapshot / "pytorch_model.bin").exists() and not (snapshot / "modeling_x.py").exists()

    n_requests = len(hub.requests) + len(hub.info_requests)
    p2 = _run(_env(hub, tmp_path, HF_HUB_OFFLINE="1"), *args, "--out", str(out2))
    assert p2.returncode == 0, (p2.stdout[-3000:], p2.stderr[-3000:])
    assert len(hub.requests) + len(hub.info_requests) == n_requests  # offline: not one request
    assert (out1 / "scores.json").read_bytes() == (out2 / "scores.json").read_bytes()
    meta2 = _meta(out2)
    assert meta2["model_source"]["sha"] == SHA_A and meta2["model_source"]["origin"] == "hub-cache"

    everything = [p1.stdout, p1.stderr, p2.stdout, p2.stderr]
    for root in (out1, out2, tmp_path / "rmbf"):
        everything += [p.read_text(errors="replace") for p in root.rglob("*") if p.is_file()]
    assert not [text for text in everything if TOKEN in text]

    report = _run(env, "report", str(out1))
    assert report.returncode == 0, report.stderr
    assert f"org/private@{SHA_A[:7]}" in report.stdout and f"org/rmb@{SHA_D[:7]}" in report.stdout


def test_errors_are_one_line(hub: FakeHub, tmp_path: Path) -> None:
    """401 (private, no token), 403 (gated), 404 (no such repo), an unknown revision, offline
    with nothing cached, not enough disk and a pickle-only repo: one line each, exit 2, and
    nothing downloaded."""
    env = _env(hub, tmp_path)
    cases = {
        "org/private": "the hub refused access (HTTP 401)",
        "org/gated": "is gated: accept its license",
        "org/missing": "no model org/missing on the hub",
        "org/tiny@no-such-branch": "has no revision 'no-such-branch'",
        "org/huge": "not enough disk space in the hub cache",
        "org/pickle": "has only pickle weights (pytorch_model.bin); pass --allow-pickle",
    }
    for model, expected in cases.items():
        line = _one_line_error(_run(env, "run", "--model", model, *RUN_ARGS, "--out", str(tmp_path / "o")))
        assert expected in line, (model, line)
        assert TOKEN not in line
    out = ("--out", str(tmp_path / "o"))
    assert "HF_TOKEN" in _one_line_error(_run(env, "run", "--model", "org/private", *RUN_ARGS, *out))
    offline = _one_line_error(
        _run(_env(hub, tmp_path / "fresh", HF_HUB_OFFLINE="1"), "run", "--model", "org/tiny", *RUN_ARGS, *out)
    )
    assert "HF_HUB_OFFLINE=1 and it is not in the hub cache" in offline
    data = _one_line_error(_run(env, "run", "--model", "org/tiny", "--data", "org/nodata", *RUN_ARGS, *out))
    assert "no dataset org/nodata on the hub" in data
    with socket.socket() as s:  # a port nothing listens on: the hub cannot be reached
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    down = _one_line_error(
        _run({**env, "HF_ENDPOINT": closed}, "run", "--model", "org/tiny", *RUN_ARGS, *out)
    )
    assert "is no local path, and the hub at" in down and "cannot be reached" in down
    assert hub.fetched() == []  # every refusal came before a download


def test_sweep_of_two_revisions_and_branch_resolved_once(hub: FakeHub, tmp_path: Path) -> None:
    """A sweep of a tag and a pinned sha of one repo records each commit; a branch named twice
    in a sweep is asked of the hub once, so moving the branch mid-sweep mixes nothing."""
    moved: list[str] = []

    def move_main(kind: str, repo_id: str, rev: str) -> None:
        if repo_id == "org/tiny" and rev == "main" and not moved:
            hub.repos[("model", "org/tiny")]["refs"]["main"] = SHA_C
            moved.append(rev)

    hub.on_info = move_main
    env = _env(hub, tmp_path)
    out = tmp_path / "sweep"
    models = ["org/tiny@v1", f"org/tiny@{SHA_C}", "org/tiny@main", "org/tiny@main"]
    proc = _run(env, "sweep", *models, *RUN_ARGS, "--limit", "1", "--out", str(out))
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    rows = json.loads((out / "sweep.json").read_text())["models"]
    assert [r["model_ref"] for r in rows] == [f"org/tiny@{s}" for s in (SHA_B, SHA_C, SHA_A, SHA_A)]
    metas = [_meta(Path(r["out"])) for r in rows]
    assert [m["model_source"]["revision"] for m in metas] == ["v1", SHA_C, "main", "main"]
    assert [m["model_source"]["sha"] for m in metas] == [SHA_B, SHA_C, SHA_A, SHA_A]
    assert moved == ["main"]  # the branch did move after the first answer ...
    assert hub.info_requests.count(("model", "org/tiny", "main")) == 1  # ... and was asked once
    assert f"org/tiny@{SHA_B[:7]}" in proc.stdout and f"org/tiny@{SHA_C[:7]}" in proc.stdout
    scores = [json.loads((Path(r["out"]) / "scores.json").read_text()) for r in rows]
    assert scores[0] != scores[1] and scores[2] == scores[3]  # different commits, different weights

    cmp = _run(env, "compare", rows[0]["out"], rows[1]["out"], "--resamples", "50")
    assert cmp.returncode == 0, cmp.stderr
    assert f"org/tiny@{SHA_B[:7]}" in cmp.stdout and f"org/tiny@{SHA_C[:7]}" in cmp.stdout


def _weights(hub: FakeHub, repo_id: str) -> bytes:
    return bytes(hub.repos[("model", repo_id)]["commits"][SHA_A]["model.safetensors"])


def _blobs(home: Path, repo_id: str) -> Path:
    return home / "hf" / "hub" / f"models--{repo_id.replace('/', '--')}" / "blobs"


def _plant_partial(hub: FakeHub, home: Path, repo_id: str, prefix: bytes) -> Path:
    """A partial download as a killed run leaves it, under the name the resume looks for."""
    blobs = _blobs(home, repo_id)
    blobs.mkdir(parents=True, exist_ok=True)
    partial = blobs / (hashlib.sha256(_weights(hub, repo_id)).hexdigest() + ".rmbf-partial")
    partial.write_bytes(prefix)
    return partial


def _snapshot_weights(home: Path, repo_id: str) -> Path:
    folder = home / "hf" / "hub" / f"models--{repo_id.replace('/', '--')}" / "snapshots" / SHA_A
    return folder / "model.safetensors"


def _check_cached_weights(hub: FakeHub, home: Path, repo_id: str) -> None:
    """The weights sit in the hub cache's own layout, byte-identical to what the hub serves,
    with no partial file left behind."""
    body = _weights(hub, repo_id)
    pointer = _snapshot_weights(home, repo_id)
    assert pointer.is_symlink()
    assert os.readlink(pointer) == f"../../blobs/{hashlib.sha256(body).hexdigest()}"
    assert pointer.read_bytes() == body
    assert not list(_blobs(home, repo_id).glob("*.rmbf-partial"))


def test_kill_during_download_then_resume(hub: FakeHub, tmp_path: Path) -> None:
    """kill -9 while the weights stream: the rerun fetches only what had not completed (the
    small files came first and are not fetched again, the weights continue from the bytes on
    disk with a range request), writes the same file the hub serves, and scores normally.

    huggingface_hub (2.5) writes a download in 10 MiB pieces, so the 16 MB weights of `org/big`
    are held by the fake hub past the first piece, then the run is killed."""
    env = _env(hub, tmp_path)
    hub.hold["model.safetensors"] = 12 * 2**20
    out = tmp_path / "o"
    args = [sys.executable, "-m", "rmbench_fast", "run", "--model", "org/big", *RUN_ARGS, "--limit", "1"]
    proc = subprocess.Popen(
        [*args, "--out", str(out)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    blobs = _blobs(tmp_path, "org/big")
    try:
        deadline = time.monotonic() + 120
        while sum(p.stat().st_size for p in blobs.glob("*.rmbf-partial")) < 10 * 2**20:
            assert proc.poll() is None, "the run ended before the download was killed"
            assert time.monotonic() < deadline, "the weights' download never reached the disk"
            time.sleep(0.05)
        proc.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        hub.release.set()
    body = _weights(hub, "org/big")
    total = len(body)
    assert hub.sent["model.safetensors"] < total
    kept = [p.stat().st_size for p in blobs.glob("*.rmbf-partial")]
    assert len(kept) == 1 and 0 < kept[0] < total, kept
    assert body.startswith(next(blobs.glob("*.rmbf-partial")).read_bytes())
    snapshot = _snapshot_weights(tmp_path, "org/big").parent
    assert (snapshot / "config.json").is_file() and not (snapshot / "model.safetensors").exists()
    offline = _one_line_error(
        _run(
            _env(hub, tmp_path, HF_HUB_OFFLINE="1"),
            "run",
            "--model",
            "org/big",
            *RUN_ARGS,
            "--out",
            str(out),
        )
    )
    assert "the cached snapshot is incomplete" in offline and "model.safetensors" in offline

    hub.hold.clear()
    before, sent_before, n_ranges = Counter(hub.fetched()), hub.sent["model.safetensors"], len(hub.ranges)
    done = _run(env, "run", "--model", "org/big", *RUN_ARGS, "--limit", "1", "--out", str(out))
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    again = Counter(hub.fetched()) - before
    assert again == Counter({"model.safetensors": 1}), again
    assert hub.ranges[n_ranges:] == [("model.safetensors", f"bytes={kept[0]}-")]
    assert hub.sent["model.safetensors"] - sent_before == total - kept[0] < total  # only the rest
    assert "downloading 1 file(s) of org/big" in done.stdout
    assert f"resuming model.safetensors at {kept[0] / 1e6:.1f} of {total / 1e6:.1f} MB" in done.stdout
    _check_cached_weights(hub, tmp_path, "org/big")
    assert _meta(out)["model_source"]["sha"] == SHA_A
    assert json.loads((out / "scores.json").read_text())
    shutil.rmtree(tmp_path / "hf", ignore_errors=True)


def test_corrupt_weights_are_thrown_away(hub: FakeHub, tmp_path: Path) -> None:
    """Bytes that fail the sha256 the hub names are never kept. Fetched whole (the hub sent
    them): deleted, one line, exit 2, and nothing in the snapshot. Resumed from a kept partial
    whose bytes are wrong: the partial is the suspect, so the same run throws it away, fetches
    the file again from byte 0 and scores."""
    env = _env(hub, tmp_path)
    body = _weights(hub, "org/tiny")
    out = ("--out", str(tmp_path / "o"))
    wrong = hashlib.sha256(b"other bytes").hexdigest()
    hub.etags["model.safetensors"] = wrong
    line = _one_line_error(_run(env, "run", "--model", "org/tiny", *RUN_ARGS, "--limit", "1", *out))
    assert "model.safetensors: the downloaded bytes do not match the hub's sha256" in line, line
    assert not _snapshot_weights(tmp_path, "org/tiny").exists()
    assert not list(_blobs(tmp_path, "org/tiny").glob(f"{wrong}*"))  # neither blob nor partial

    hub.etags.clear()
    half = len(body) // 2
    _plant_partial(hub, tmp_path, "org/tiny", bytes(b ^ 0xFF for b in body[:half]))
    sent_before, n_ranges = hub.sent["model.safetensors"], len(hub.ranges)
    done = _run(env, "run", "--model", "org/tiny", *RUN_ARGS, "--limit", "1", *out)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    assert "does not match its sha256; downloading it anew" in done.stdout
    assert hub.ranges[n_ranges:] == [("model.safetensors", f"bytes={half}-"), ("model.safetensors", None)]
    assert hub.sent["model.safetensors"] - sent_before == (len(body) - half) + len(body)
    _check_cached_weights(hub, tmp_path, "org/tiny")
    assert json.loads((tmp_path / "o" / "scores.json").read_text())


def test_resume_when_the_server_ignores_range(hub: FakeHub, tmp_path: Path) -> None:
    """A server (or proxy) that answers a range request with 200 and the whole file: the kept
    prefix is dropped, not prepended again, and the file comes out right."""
    env = _env(hub, tmp_path)
    body = _weights(hub, "org/tiny")
    half = len(body) // 2
    _plant_partial(hub, tmp_path, "org/tiny", body[:half])
    hub.no_range.add("model.safetensors")
    done = _run(env, "run", "--model", "org/tiny", *RUN_ARGS, "--limit", "1", "--out", str(tmp_path / "o"))
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    assert [r for r in hub.ranges if r[0] == "model.safetensors"] == [("model.safetensors", f"bytes={half}-")]
    assert hub.sent["model.safetensors"] == len(body)
    _check_cached_weights(hub, tmp_path, "org/tiny")
    assert json.loads((tmp_path / "o" / "scores.json").read_text())


def test_rewardbench2_by_dataset_id(hub: FakeHub, tmp_path: Path) -> None:
    """`run --benchmark rewardbench2 --data allenai/reward-bench-2`: the parquet shard is fetched
    (nothing else), meta records the dataset's commit, and an offline rerun is byte-identical."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.helpers.rb2_sample import sample_rows

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(sample_rows()), buf)
    sha = _sha("rb2-data")
    files = {"data/test-00000-of-00001.parquet": buf.getvalue(), "README.md": b"# RB2 (fake)\n"}
    hub.add("dataset", "allenai/reward-bench-2", {sha: files}, {"main": sha})
    args = ("run", "--benchmark", "rewardbench2", "--model", "org/tiny", "--ref-free", "avg")
    args += ("--data", "allenai/reward-bench-2", "--subsets", "Math", "Ties", *RUN_ARGS)
    out1, out2 = tmp_path / "rb2-1", tmp_path / "rb2-2"
    p1 = _run(_env(hub, tmp_path), *args, "--out", str(out1))
    assert p1.returncode == 0, (p1.stdout[-3000:], p1.stderr[-3000:])
    assert hub.fetched("allenai/reward-bench-2") == ["data/test-00000-of-00001.parquet"]
    meta = _meta(out1)
    assert meta["benchmark"] == "rewardbench2" and meta["kind"] == "dpo"
    assert (
        meta["data"]["source"]["sha"] == sha and meta["data"]["source"]["repo_id"] == "allenai/reward-bench-2"
    )
    assert meta["data"]["n_prompts"] == 12 and meta["model_ref"] == f"org/tiny@{SHA_A}"
    p2 = _run(_env(hub, tmp_path, HF_HUB_OFFLINE="1"), *args, "--out", str(out2))
    assert p2.returncode == 0, (p2.stdout[-3000:], p2.stderr[-3000:])
    assert (out1 / "scores.json").read_bytes() == (out2 / "scores.json").read_bytes()
