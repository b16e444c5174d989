"""An OpenAI-compatible chat-completions client: N requests in flight, retries, timeouts.

Only the standard library is used (`urllib`, threads). The server is any OpenAI-compatible one:
``vllm serve`` / ``python -m vllm.entrypoints.openai.api_server``, SGLang, llama.cpp's server,
or a hosted API.

- ``--judge-endpoint`` is the API's base URL: ``http://host:port`` (``/v1`` is added),
  ``http://host:port/v1``, or a full ``.../chat/completions`` URL.
- Before the first request, ``GET {base}/models`` checks that the server is up and serves
  ``--judge-model`` (skipped when the server has no such route).
- Retries: HTTP 429 and 5xx, timeouts and dropped connections are retried up to ``retries``
  times with exponential backoff (``backoff * 2**k`` seconds, capped at ``max_backoff``; a
  ``Retry-After`` header is honoured, within the cap). Every retry is counted by reason in
  `meta()`.
- Fatal, one line, exit 2 (`JudgeError`): the endpoint cannot be reached, the model name is
  refused (404), the key is refused (401 / 403), or a request still fails after its retries.
- A request the server rejects as such (400, 413, 422: e.g. a prompt longer than the model's
  context) is answered with an error response (scored like an unparseable verdict and counted),
  and is not stored for resume.
- The API key goes only into the ``Authorization`` header; it is never part of `meta()`, an
  error message or a log line (any echo of it in a server's message is masked).
"""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from rmbench_fast.errors import RMBenchError
from rmbench_fast.judge.requests import JudgeRequest, JudgeResponse

RETRY_STATUS = frozenset({408, 409, 425, 429}) | frozenset(range(500, 600))
REQUEST_ERROR_STATUS = frozenset({400, 413, 422})
PREFLIGHT_TIMEOUT = 10.0


class JudgeError(RMBenchError):
    """The judge cannot be used as asked (endpoint down, model or key refused, ...): exit 2."""


def normalize_endpoint(url: str) -> str:
    """The API base URL (no trailing slash) for `--judge-endpoint URL`."""
    parsed = urllib.parse.urlsplit(url.strip())
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise JudgeError(f"--judge-endpoint {url!r}: expected an http:// or https:// URL")
    path = parsed.path.rstrip("/")
    if path.endswith("/chat/completions"):
        path = path[: -len("/chat/completions")]
    if not path:
        path = "/v1"
    return urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, path, "", ""))


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class ClientSettings:
    """How the client talks to the server (none of this decides an answer)."""

    endpoint: str
    model: str
    api_key: str | None = None
    concurrency: int = 32
    timeout: float = 600.0
    retries: int = 5
    backoff: float = 1.0
    max_backoff: float = 60.0


class _Fatal(Exception):
    """Raised inside a worker; turned into a JudgeError by `run`."""


class _Stopped(_Fatal):
    """A request abandoned because another one failed fatally."""


class OpenAIClient:
    """Chat completions against one OpenAI-compatible server.

    `sampling` holds the decoding settings sent with every request (max_tokens, temperature,
    top_p, seed, ...).
    """

    def __init__(self, settings: ClientSettings, sampling: Mapping[str, Any]) -> None:
        self.settings = settings
        self.base = normalize_endpoint(settings.endpoint)
        self.sampling = dict(sampling)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.retry_reasons: Counter[str] = Counter()
        self.backoff_seconds = 0.0
        self.request_errors = 0
        self.sent = 0
        host = urllib.parse.urlsplit(self.base).hostname
        # A loopback server is never reached through a proxy from the environment.
        handlers: list[Any] = [urllib.request.ProxyHandler({})] if _is_loopback(host) else []
        self._opener = urllib.request.build_opener(*handlers)

    @property
    def identity(self) -> str:
        """The judge's part of a request key: the served model's name."""
        return f"server:{self.settings.model}"

    # ---------------------------------------------------------------- plumbing

    def _mask(self, text: str) -> str:
        key = self.settings.api_key
        return text.replace(key, "***") if key else text

    def _headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.settings.api_key:
            h["Authorization"] = f"Bearer {self.settings.api_key}"
        return h

    def _open(self, url: str, body: bytes | None, timeout: float) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body) of one HTTP exchange; raises OSError for transport failures."""
        req = urllib.request.Request(
            url, data=body, headers=self._headers(), method="POST" if body else "GET"
        )
        try:
            with self._opener.open(req, timeout=timeout) as resp:
                return resp.status, dict(resp.headers.items()), resp.read()
        except urllib.error.HTTPError as e:
            try:
                payload = e.read()
            except OSError:
                payload = b""
            return e.code, dict(e.headers.items()) if e.headers else {}, payload

    def _error_message(self, status: int, payload: bytes) -> str:
        text = payload.decode("utf-8", "replace")
        msg = text
        try:
            obj = json.loads(text)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            err = obj.get("error")
            if isinstance(err, dict) and err.get("message"):
                msg = str(err["message"])
            elif isinstance(err, str) and err:
                msg = err
            elif obj.get("message"):
                msg = str(obj["message"])
            elif obj.get("detail"):
                msg = str(obj["detail"])
        msg = " ".join(self._mask(msg).split())
        return f"HTTP {status}: {msg[:300]}" if msg else f"HTTP {status}"

    def _refused(self, status: int, payload: bytes) -> JudgeError:
        """The fatal error for a 401 / 403 / 404 answer."""
        detail = self._error_message(status, payload)
        if status in (401, 403):
            return JudgeError(
                f"the judge endpoint {self.base} refused the request ({detail}); check the key "
                "(--api-key-env names the environment variable that holds it)"
            )
        if "model" in detail.lower():
            return JudgeError(
                f"the judge endpoint {self.base} does not serve model {self.settings.model!r} "
                f"(--judge-model): {detail}"
            )
        return JudgeError(
            f"no chat-completions API at {self.base}/chat/completions ({detail}); --judge-endpoint is "
            "the server's base URL, e.g. http://127.0.0.1:8000/v1"
        )

    def _fatal(self, message: str) -> _Fatal:
        """A fatal error; no request starts after it (the workers check the stop flag)."""
        self._stop.set()
        return _Fatal(message)

    def _sleep(self, seconds: float) -> None:
        with self._lock:
            self.backoff_seconds += seconds
        if self._stop.wait(seconds):
            raise _Stopped("stopped")

    def _delay(self, attempt: int, headers: Mapping[str, str]) -> float:
        s = self.settings
        delay = s.backoff * (2**attempt)
        retry_after = {k.lower(): v for k, v in headers.items()}.get("retry-after")
        if retry_after is not None:
            try:
                delay = max(delay, float(retry_after))
            except ValueError:
                pass
        return min(delay, s.max_backoff)

    def _count_retry(self, reason: str) -> None:
        with self._lock:
            self.retry_reasons[reason] += 1

    # ---------------------------------------------------------------- API

    def preflight(self) -> None:
        """Check that the server answers and serves the model; JudgeError (one line) if not."""
        url = f"{self.base}/models"
        try:
            status, _, payload = self._open(url, None, min(self.settings.timeout, PREFLIGHT_TIMEOUT))
        except (OSError, ValueError) as e:
            raise JudgeError(f"cannot reach the judge endpoint {self.base}: {_reason(e)}") from None
        if status in (401, 403):
            raise self._refused(status, payload)
        if status != 200:
            return  # no /models route: the first request will tell
        try:
            served = [str(m.get("id")) for m in json.loads(payload).get("data", []) if isinstance(m, dict)]
        except (ValueError, AttributeError):
            return
        if served and self.settings.model not in served:
            raise JudgeError(
                f"the judge endpoint {self.base} does not serve model {self.settings.model!r} "
                f"(--judge-model); it serves {', '.join(repr(m) for m in served[:8])}"
            )

    def complete(self, req: JudgeRequest) -> JudgeResponse:
        """One request, with retries. Raises _Fatal (with a one-line message) when it cannot."""
        s = self.settings
        body = json.dumps(
            {"model": s.model, "messages": req.messages(), "n": 1, "stream": False, **self.sampling}
        ).encode("utf-8")
        url = f"{self.base}/chat/completions"
        t0 = time.perf_counter()
        attempt = 0
        while True:
            if self._stop.is_set():
                raise _Stopped("stopped")
            headers: Mapping[str, str] = {}
            try:
                status, headers, payload = self._open(url, body, s.timeout)
                failure = None if status == 200 else self._error_message(status, payload)
                reason = str(status)
            except (OSError, ValueError) as e:
                status, payload = -1, b""
                if _is_timeout(e):
                    reason, failure = "timeout", f"no answer within {s.timeout:g} s (--request-timeout)"
                else:
                    reason, failure = "connection", _reason(e)
            with self._lock:
                self.sent += 1
            if status == 200:
                return self._response(payload, attempt, time.perf_counter() - t0)
            if status in (401, 403, 404):
                raise self._fatal(str(self._refused(status, payload)))
            if status in REQUEST_ERROR_STATUS:
                with self._lock:
                    self.request_errors += 1
                return JudgeResponse(
                    text="", error=failure, retries=attempt, seconds=time.perf_counter() - t0
                )
            if (status == -1 or status in RETRY_STATUS) and attempt < s.retries:
                self._count_retry(reason)
                self._sleep(self._delay(attempt, headers))
                attempt += 1
                continue
            tries = attempt + 1
            if status == -1 and reason == "connection":
                raise self._fatal(f"cannot reach the judge endpoint {self.base} ({tries} tries): {failure}")
            raise self._fatal(
                f"the judge endpoint {self.base} failed a request {tries} times; last: {failure}"
            )

    def _response(self, payload: bytes, retries: int, seconds: float) -> JudgeResponse:
        try:
            obj = json.loads(payload)
            choice = obj["choices"][0]
            message = choice.get("message") or {}
            text = (
                message.get("content") or message.get("reasoning_content") or message.get("reasoning") or ""
            )
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise self._fatal(
                f"the judge endpoint {self.base} answered HTTP 200 without a chat completion: "
                f"{' '.join(self._mask(payload.decode('utf-8', 'replace')).split())[:200]}"
            ) from None
        usage = obj.get("usage") or {}
        details = usage.get("prompt_tokens_details") or {}
        return JudgeResponse(
            text=str(text),
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            cached_tokens=details.get("cached_tokens") if isinstance(details, dict) else None,
            retries=retries,
            seconds=seconds,
        )

    def run(
        self, requests: Sequence[JudgeRequest], on_result: Callable[[JudgeRequest, JudgeResponse], None]
    ) -> None:
        """Send `requests` (in their order, `concurrency` in flight) and call `on_result` in this
        thread as each answer arrives. A fatal error stops the run: requests not yet started are
        cancelled, answers already delivered stay delivered, and JudgeError is raised."""
        if not requests:
            return
        self._stop.clear()
        pool = ThreadPoolExecutor(max_workers=max(1, self.settings.concurrency), thread_name_prefix="judge")
        futures: dict[Future[JudgeResponse], JudgeRequest] = {}
        try:
            for r in requests:
                futures[pool.submit(self.complete, r)] = r
            pending = set(futures)
            fatal: _Fatal | None = None
            while pending and fatal is None:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in sorted(done, key=lambda f: futures[f].index):
                    exc = fut.exception()
                    if isinstance(exc, _Stopped):
                        continue
                    if isinstance(exc, _Fatal):
                        fatal = fatal or exc
                    elif exc is not None:
                        raise exc
                    else:
                        on_result(futures[fut], fut.result())
            if fatal is not None:
                raise JudgeError(str(fatal))
        finally:
            self._stop.set()
            pool.shutdown(wait=False, cancel_futures=True)

    def meta(self) -> dict[str, Any]:
        """Counters and settings for metrics.json (never the key)."""
        s = self.settings
        return {
            "endpoint": self.base,
            "model": s.model,
            "api_key": "set" if s.api_key else None,
            "concurrency": s.concurrency,
            "request_timeout_s": s.timeout,
            "max_retries": s.retries,
            "backoff_s": s.backoff,
            "http_requests": self.sent,
            "retries": sum(self.retry_reasons.values()),
            "retries_by_reason": dict(sorted(self.retry_reasons.items())),
            "backoff_seconds": round(self.backoff_seconds, 3),
            "request_errors": self.request_errors,
        }


def _is_timeout(e: BaseException) -> bool:
    if isinstance(e, urllib.error.URLError) and isinstance(e.reason, BaseException):
        e = e.reason
    return isinstance(e, TimeoutError | socket.timeout)


def _reason(e: BaseException) -> str:
    """A transport error in a few words ("[Errno 111] Connection refused")."""
    if isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError):
        e = e.reason if isinstance(e.reason, BaseException) else Exception(str(e.reason))
    text = str(e) or type(e).__name__
    return " ".join(text.split())
