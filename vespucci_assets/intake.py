"""HTTP intake (SPEC section 11): the endpoint Segment and Segment SDKs post to.

An ASGI app served by uvicorn. The event loop only moves bytes; decoding,
validation and the fsync'd append run in a thread pool, so concurrent requests
really overlap and share the capture writer's group commits. A request is
answered 200 only after its messages are durably in the capture store.

Status codes (every error body is `{"code": ..., "message": ...}`):
    200 stored (unusable single messages are quarantined, still 200)
    400 empty_body, invalid_encoding, invalid_json, invalid_gzip, invalid_body, invalid_batch
    401 missing_api_key, invalid_api_key, missing_signature, invalid_signature
    404 not_found, 405 method_not_allowed
    408 request_timeout (body not received in time)
    413 request_too_large, inflated_too_large, too_many_messages
    415 unsupported_encoding
    500 internal_error, 503 storage_unavailable (retry)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone

from vespucci_assets.capture import AppendResult, CaptureStore, CaptureUnavailable, CaptureWriter
from vespucci_assets.home import Home
from vespucci_assets.intake_protocol import (
    MAX_BODY_BYTES,
    SIGNATURE_HEADERS,
    WEBHOOK,
    IntakeError,
    Route,
    basic_auth_user,
    inflate,
    normalize_all,
    parse_json,
    read_submission,
    route_for,
    storable_or_quarantined,
    verify_signature,
)
from vespucci_assets.projects import Project, Registry, hash_api_key

HOME_ENV = "VESPUCCI_HOME"
BODY_TIMEOUT_ENV = "VESPUCCI_INTAKE_BODY_TIMEOUT_S"
# Long enough for a 500 KB upload over a poor mobile link, short enough that a
# stalled client cannot pin a connection (Segment itself gives up after 5 s).
DEFAULT_BODY_TIMEOUT_S = 30.0
INGEST_THREADS = 32
MAX_CONNECTIONS_PER_WORKER = 1000
APP_FACTORY = "vespucci_assets.intake:app_from_env"

LOG = logging.getLogger("vespucci.intake")
ACCESS_LOG = logging.getLogger("vespucci.intake.access")
SUCCESS = {"success": True}
CORS_HEADERS = [(b"access-control-allow-origin", b"*")]
PREFLIGHT_HEADERS = [
    (b"access-control-allow-methods", b"POST, OPTIONS"),
    (b"access-control-allow-headers", b"Authorization, Content-Type, Content-Encoding"),
    (b"access-control-max-age", b"86400"),
]


class ProjectKeys:
    """API key -> project, without re-reading the registry file for every request."""

    def __init__(self, registry: Registry):
        self.registry = registry
        self._lock = threading.Lock()
        self._version: tuple | None = None
        # Keyed by the key's SHA-256 (never the key), and filled only through the
        # registry's constant-time comparison.
        self._by_key_hash: dict[str, Project] = {}

    def authenticate(self, api_key: str | None) -> Project:
        if not api_key:
            raise IntakeError(
                401, "missing_api_key", "no API key: use HTTP Basic auth with the key as user name, or writeKey in the body"
            )
        version = self._registry_version()
        key_hash = hash_api_key(api_key)
        with self._lock:
            if version != self._version:
                self._version, self._by_key_hash = version, {}
            project = self._by_key_hash.get(key_hash)
        if project is None:
            project = self.registry.authenticate(api_key)
            if project is None:
                raise IntakeError(401, "invalid_api_key", "unknown API key")
            with self._lock:
                if self._version == version:
                    self._by_key_hash[key_hash] = project
        return project

    def _registry_version(self) -> tuple | None:
        try:
            stat = os.stat(self.registry.path)
        except FileNotFoundError:
            return None
        return (stat.st_ino, stat.st_mtime_ns, stat.st_size)


@dataclass
class Response:
    status: int
    body: bytes
    close: bool = False
    headers: list = field(default_factory=list)

    @classmethod
    def json(cls, status: int, payload: dict, **kwargs) -> "Response":
        return cls(status, json.dumps(payload, separators=(",", ":")).encode("utf-8"), **kwargs)

    async def send(self, send, request_id: str) -> None:
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(self.body)).encode()),
            (b"x-request-id", request_id.encode()),
            *CORS_HEADERS,
            *self.headers,
        ]
        if self.close:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


@dataclass
class RequestLog:
    """One access-log line. Holds no credentials: no headers, no query string, no body."""

    request_id: str
    method: str
    path: str
    client: str | None
    user_agent: str | None
    started: float
    status: int = 0
    code: str | None = None
    bytes_in: int = 0
    project_id: str | None = None
    accepted: int = 0
    quarantined: int = 0

    @classmethod
    def start(cls, scope: dict, headers: dict[str, str]) -> "RequestLog":
        client = scope.get("client")
        return cls(
            request_id=secrets.token_hex(8),
            method=scope["method"],
            path=scope["path"][:200],
            client=client[0] if client else None,
            user_agent=(headers.get("user-agent") or "")[:200] or None,
            started=time.perf_counter(),
        )

    def write(self, status: int) -> None:
        self.status = status
        fields = {k: v for k, v in vars(self).items() if k != "started" and v is not None}
        fields["duration_ms"] = round((time.perf_counter() - self.started) * 1000, 2)
        ACCESS_LOG.info("request", extra={"fields": fields})


class JsonLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
            "pid": record.process,
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging() -> None:
    if LOG.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLineFormatter())
    LOG.addHandler(handler)
    LOG.setLevel(logging.INFO)
    LOG.propagate = False


def _headers(scope: dict) -> dict[str, str]:
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}


async def read_body(headers: dict[str, str], receive, timeout_s: float) -> bytes:
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _too_large()
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise IntakeError(499, "client_closed_request", "client went away before sending its body")
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise _too_large()
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
    except TimeoutError:
        raise IntakeError(408, "request_timeout", f"request body not received within {timeout_s:g} s") from None


def _too_large() -> IntakeError:
    return IntakeError(413, "request_too_large", f"request body over {MAX_BODY_BYTES // 1024} KB")


class IntakeApp:
    """The ASGI application; one per worker process, each with its own capture writer."""

    def __init__(self, home: Home, body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S):
        self.home = home
        self.body_timeout_s = body_timeout_s
        self.keys = ProjectKeys(Registry(home.registry_path))
        self.writer: CaptureWriter | None = None
        self.executor: ThreadPoolExecutor | None = None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    # --- lifecycle ---------------------------------------------------------------------

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self.start()
                except Exception as exc:  # noqa: BLE001 - reported to the server, which exits
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def start(self) -> None:
        self.home.ensure()
        self.writer = CaptureStore(self.home.capture_dir).writer()
        self.executor = ThreadPoolExecutor(max_workers=INGEST_THREADS, thread_name_prefix="intake")
        LOG.info("intake worker ready", extra={"fields": {"writer_id": self.writer.writer_id}})

    def stop(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True)
        if self.writer is not None:
            self.writer.close()

    # --- requests ------------------------------------------------------------------------

    async def _http(self, scope, receive, send) -> None:
        headers = _headers(scope)
        log = RequestLog.start(scope, headers)
        try:
            response = await self._dispatch(scope, receive, headers, log)
        except IntakeError as err:
            log.code = err.code
            retry = [(b"retry-after", b"1")] if err.status == 503 else []
            # uvicorn discards an unread body after the response; only a stalled one needs the connection closed.
            response = Response.json(err.status, err.body(), close=err.status == 408, headers=retry)
        except Exception:
            LOG.exception("internal error", extra={"fields": {"request_id": log.request_id}})
            log.code = "internal_error"
            response = Response.json(500, {"code": "internal_error", "message": "internal error; retry"}, close=True)
        await response.send(send, log.request_id)
        log.write(response.status)

    async def _dispatch(self, scope, receive, headers: dict[str, str], log: RequestLog) -> Response:
        method, path = scope["method"], scope["path"]
        if path.rstrip("/") == "/health":
            if method not in ("GET", "HEAD"):
                raise IntakeError(405, "method_not_allowed", "use GET")
            return Response.json(200, {"status": "ok"})
        route = route_for(path)
        if route is None:
            raise IntakeError(404, "not_found", f"no endpoint {path[:100]!r}")
        if method == "OPTIONS":
            return Response(204, b"", headers=PREFLIGHT_HEADERS)
        if method != "POST":
            raise IntakeError(405, "method_not_allowed", "use POST")
        body = await read_body(headers, receive, self.body_timeout_s)
        log.bytes_in = len(body)
        received_at = datetime.now(timezone.utc)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.executor, self._ingest, route, body, headers, received_at, log)
        return Response.json(200, SUCCESS)

    def _ingest(self, route: Route, body: bytes, headers: dict[str, str], received_at: datetime, log: RequestLog) -> None:
        """Decode, authenticate, validate and durably store one request (runs in the thread pool)."""
        basic_key = basic_auth_user(headers.get("authorization"))
        # With Basic credentials a wrong key is refused before the body is even decoded.
        project = self.keys.authenticate(basic_key) if basic_key else None
        data = inflate(body, headers.get("content-encoding", ""))
        payload = parse_json(data)
        submission = read_submission(route, payload)
        project = project or self.keys.authenticate(submission.body_key)
        log.project_id = project.project_id
        if route.kind == WEBHOOK and project.webhook_secret:
            verify_signature(project.webhook_secret, _signature(headers), data, payload)
        items = normalize_all(submission, received_at, route.call_type)
        result = self._store(project.project_id, items)
        log.accepted, log.quarantined = result.accepted, result.quarantined

    def _store(self, project_id: str, items: list) -> AppendResult:
        try:
            try:
                return self.writer.append(project_id, items)
            except (ValueError, RecursionError):
                # The writer encodes every record before writing any, so nothing is on
                # disk yet: retry with the unencodable messages quarantined instead.
                return self.writer.append(project_id, [storable_or_quarantined(item) for item in items])
        except CaptureUnavailable as exc:
            LOG.error("capture store unavailable", extra={"fields": {"project_id": project_id, "error": str(exc)}})
            raise IntakeError(503, "storage_unavailable", "events could not be stored durably; retry") from exc


def _signature(headers: dict[str, str]) -> str | None:
    return next((headers[name] for name in SIGNATURE_HEADERS if headers.get(name)), None)


def app_from_env() -> IntakeApp:
    """App factory for uvicorn, so every worker process builds its own app and writer."""
    configure_logging()
    timeout = float(os.environ.get(BODY_TIMEOUT_ENV, DEFAULT_BODY_TIMEOUT_S))
    return IntakeApp(Home.from_env(), body_timeout_s=timeout)


class _StopSignal(Exception):
    pass


def _raise_stop(signum, frame) -> None:
    raise _StopSignal(signum)


@contextlib.contextmanager
def _stop_signals_return_normally():
    """uvicorn drains on SIGTERM/SIGINT and then re-raises the signal, which would kill the
    process with it; turn that (and a signal before uvicorn is listening) into a plain return."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    except _StopSignal:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve(home: Home, host: str = "127.0.0.1", port: int = 8088, workers: int = 1) -> None:
    """Run the intake until SIGTERM/SIGINT, then drain in-flight requests and return."""
    import uvicorn

    home.ensure()
    os.environ[HOME_ENV] = str(home.root)  # read by app_from_env in every worker process
    body_timeout = float(os.environ.get(BODY_TIMEOUT_ENV, DEFAULT_BODY_TIMEOUT_S))
    with _stop_signals_return_normally():
        uvicorn.run(
            APP_FACTORY,
            factory=True,
            host=host,
            port=port,
            workers=workers,
            lifespan="on",
            access_log=False,  # ours is structured and never contains credentials
            server_header=False,
            limit_concurrency=MAX_CONNECTIONS_PER_WORKER,
            timeout_graceful_shutdown=body_timeout + 10,
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vespucci_assets.intake", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8088)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    serve(Home.from_env(), host=args.host, port=args.port, workers=args.workers)


if __name__ == "__main__":
    main()
