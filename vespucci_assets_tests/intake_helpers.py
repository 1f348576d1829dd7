"""Run a real intake process on 127.0.0.1 and read back what it stored."""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import requests

from vespucci_assets.capture import EVENTS, CaptureStore
from vespucci_assets.projects import Project, Registry

BODY_TIMEOUT_S = 1.5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class IntakeProcess:
    """`python -m vespucci_assets.intake` in its own process group, so a kill reaches every worker."""

    home: Path
    port: int = field(default_factory=free_port)
    workers: int = 1
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.home.parent / f"intake-{self.port}.log"

    def start(self) -> "IntakeProcess":
        env = {**os.environ, "VESPUCCI_HOME": str(self.home), "VESPUCCI_INTAKE_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S)}
        command = [sys.executable, "-m", "vespucci_assets.intake", "--port", str(self.port), "--workers", str(self.workers)]
        self.home.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
            )
        self.wait_ready()
        return self

    def wait_ready(self, timeout_s: float = 20) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"intake exited with {self.process.returncode}:\n{self.log_text()}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"intake not ready after {timeout_s} s:\n{self.log_text()}")

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)

    def wait_exit(self, timeout_s: float = 15) -> int:
        return self.process.wait(timeout=timeout_s)

    def kill(self) -> None:
        if self.process is not None:
            self.signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_records(self) -> list[dict]:
        """The structured (JSON) lines of the server's log."""
        records = []
        for line in self.log_text().splitlines():
            with contextlib.suppress(ValueError):
                records.append(json.loads(line))
        return records

    def is_healthy(self) -> bool:
        return requests.get(self.url + "/health", timeout=2).status_code == 200


@contextlib.contextmanager
def running_intake(home: Path, workers: int = 1) -> Iterator[IntakeProcess]:
    server = IntakeProcess(home, workers=workers)
    try:
        yield server.start()
    finally:
        server.kill()


def create_project(home: Path, project_id: str = "shop", tracking_method: str = "action", webhook_secret=None) -> str:
    registry = Registry(home / "projects.json")
    _, api_key = registry.add(Project(project_id=project_id, name=project_id.title(), tracking_method=tracking_method))
    if webhook_secret:
        registry.update(project_id, webhook_secret=webhook_secret)
    return api_key


# --- requests ---------------------------------------------------------------------------


def post(url: str, payload=None, *, data: bytes | None = None, api_key: str | None = None, gzipped=False, headers=None):
    """POST JSON (or raw bytes) with the API key as HTTP Basic user, the way Segment clients do."""
    body = data if data is not None else json.dumps(payload).encode("utf-8")
    headers = {"Content-Type": "application/json", **(headers or {})}
    if gzipped:
        body, headers["Content-Encoding"] = gzip.compress(body), "gzip"
    auth = (api_key, "") if api_key else None
    return requests.post(url, data=body, headers=headers, auth=auth, timeout=10)


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def track(message_id: str, event: str = "Tapped", device: str = "dev-1", **fields) -> dict:
    return {"type": "track", "event": event, "messageId": message_id, "anonymousId": device, **fields}


def mobile_upload(write_key: str, events: list[tuple[str, str, datetime]], device: str, clock_offset: timedelta) -> dict:
    """A `/v1/b` body as the Swift/Kotlin SDKs send it: device-clock timestamps, `sentAt` only on the envelope.

    events: (messageId, event name or 'screen:Name', true time) tuples.
    """
    batch = []
    for message_id, name, when in events:
        if name.startswith("screen:"):
            body = {"type": "screen", "name": name.split(":", 1)[1]}
        else:
            body = {"type": "track", "event": name, "properties": {}}
        batch.append({**body, "messageId": message_id, "anonymousId": device, "timestamp": iso(when + clock_offset)})
    return {
        "batch": batch,
        "writeKey": write_key,
        "sentAt": iso(datetime.now(timezone.utc) + clock_offset),
        "context": {"device": {"model": "iPhone15,2"}, "library": {"name": "analytics-swift", "version": "1.5.0"}},
    }


def raw_request(port: int, head: bytes, body: bytes = b"") -> socket.socket:
    """Send a hand-made request (maybe incomplete) and return the open socket."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(head + body)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict]:
    """Status and JSON body of the one response on this connection (the server closes or sizes it)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed before a response: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split(b" ")[1]), json.loads(body[:length])


def post_head(path: str, api_key: str, content_length: int) -> bytes:
    credentials = base64.b64encode(f"{api_key}:".encode()).decode()
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Basic {credentials}\r\nContent-Length: {content_length}\r\n\r\n"
    ).encode()


# --- the store ---------------------------------------------------------------------------


def stored(home: Path, project_id: str = "shop", kind: str = EVENTS) -> list[dict]:
    """Every complete record the capture store holds, duplicates included."""
    store = CaptureStore(home / "capture")
    return list(store.read_records(project_id, kind, store.days(project_id, kind)))


def first_copies(records: list[dict]) -> dict[str, dict]:
    """Deduplicated by messageId, first ingested copy wins (as the events build does)."""
    copies: dict[str, dict] = {}
    for record in sorted(records, key=lambda r: r["ingested_ns"]):
        copies.setdefault(record["message_id"], record)
    return copies


def assert_store_reads_cleanly(home: Path) -> None:
    """Every newline-terminated line is a JSON record; only a crashed writer's unterminated tail is not."""
    for path in sorted((home / "capture").rglob("*.ndjson")):
        *complete, _torn_tail = path.read_bytes().split(b"\n")
        for number, line in enumerate(complete, 1):
            assert isinstance(json.loads(line), dict), f"{path}:{number} is not a record"


def capture_bytes(home: Path) -> bytes:
    return b"".join(path.read_bytes() for path in sorted((home / "capture").rglob("*.ndjson")))
