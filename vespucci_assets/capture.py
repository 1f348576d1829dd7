"""Capture store: the durable, append-only log of accepted and quarantined messages.

Layout under VESPUCCI_HOME/capture:

    <project>/events/<event day>/<writer id>.ndjson       accepted messages
    <project>/quarantine/<arrival day>/<writer id>.ndjson rejected messages + reason

Every process writes only to files named by its own writer id and never reopens a
file of another writer, so a crash can at worst leave one torn last line in its own
files, which no later append ever extends. Readers take only complete lines.
`append` returns once the data is fsync'd; concurrent callers share fsyncs
(group commit), so many small requests do not each pay for a disk flush.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Iterable, Iterator

import orjson

from vespucci_assets.segment import CapturedMessage, Rejection

EVENTS = "events"
QUARANTINE = "quarantine"


class CaptureUnavailable(OSError):
    """The store could not make a batch durable; the caller must not acknowledge it."""


@dataclass
class AppendResult:
    accepted: int
    quarantined: int


class CaptureStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    def day_dir(self, project_id: str, kind: str, day: date) -> Path:
        return self.root / project_id / kind / day.isoformat()

    def days(self, project_id: str, kind: str = EVENTS) -> list[date]:
        base = self.root / project_id / kind
        if not base.is_dir():
            return []
        return sorted(date.fromisoformat(p.name) for p in base.iterdir() if p.is_dir())

    def projects(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir())

    def files(self, project_id: str, kind: str, days: Iterable[date]) -> list[Path]:
        found: list[Path] = []
        for day in sorted(set(days)):
            folder = self.day_dir(project_id, kind, day)
            if folder.is_dir():
                found.extend(sorted(p for p in folder.iterdir() if p.suffix == ".ndjson" and p.stat().st_size))
        return found

    def read_records(self, project_id: str, kind: str, days: Iterable[date]) -> Iterator[dict]:
        """Complete records only: a torn tail line from a crashed writer is never a record."""
        for path in self.files(project_id, kind, days):
            with open(path, "rb") as fh:
                for line in fh:
                    if not line.endswith(b"\n"):
                        break
                    try:
                        yield json.loads(line)
                    except ValueError:
                        continue

    def day_sizes(self) -> dict[str, int]:
        """Bytes per (project, kind, day) folder, keyed 'project/kind/day'.

        The store is append-only, so a folder whose size changed has new messages. One
        directory listing per day folder and one stat per file: no file is opened.
        """
        sizes: dict[str, int] = {}
        for project_id in self.projects():
            for kind in (EVENTS, QUARANTINE):
                base = self.root / project_id / kind
                if not base.is_dir():
                    continue
                with os.scandir(base) as day_dirs:
                    for day_dir in day_dirs:
                        if day_dir.is_dir():
                            with os.scandir(day_dir.path) as files:
                                total = sum(f.stat().st_size for f in files if f.name.endswith(".ndjson"))
                            sizes[f"{project_id}/{kind}/{day_dir.name}"] = total
        return sizes

    def writer(self) -> "CaptureWriter":
        return CaptureWriter(self)


class CaptureWriter:
    """Appends records for one process; thread-safe, with group commit."""

    def __init__(self, store: CaptureStore):
        self.store = store
        self.writer_id = _new_writer_id()
        self._fds: dict[Path, int] = {}
        self._paths: dict[tuple, Path] = {}
        self._pending: list[tuple[list[tuple[Path, bytes]], dict]] = []
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._committing = False
        self._next_ns = 0

    def append(self, project_id: str, items: Iterable[CapturedMessage | Rejection]) -> AppendResult:
        writes: list[tuple[Path, bytes]] = []
        accepted = quarantined = 0
        chunks: dict[Path, list[bytes]] = defaultdict(list)
        items = list(items)
        ingested_ns = self._reserve_ns(len(items))
        for offset, item in enumerate(items):
            if isinstance(item, CapturedMessage):
                path = self._path(project_id, EVENTS, item.event_day)
                accepted += 1
            else:
                path = self._path(project_id, QUARANTINE, item.received_at.date())
                quarantined += 1
            chunks[path].append(_encode(item.to_record(ingested_ns + offset)) + b"\n")
        writes = [(path, b"".join(lines)) for path, lines in chunks.items()]
        if writes:
            self._commit(writes)
        return AppendResult(accepted, quarantined)

    def _reserve_ns(self, count: int) -> int:
        """Capture times for `count` records, never given twice by this writer, so copies of a message differ in it."""
        with self._lock:
            first = max(time.time_ns(), self._next_ns)
            self._next_ns = first + count
        return first

    def _path(self, project_id: str, kind: str, day: date) -> Path:
        key = (project_id, kind, day)
        path = self._paths.get(key)
        if path is None:
            path = self._paths[key] = self.store.day_dir(project_id, kind, day) / f"{self.writer_id}.ndjson"
        return path

    def _commit(self, writes: list[tuple[Path, bytes]]) -> None:
        ticket = {"done": False, "error": None}
        with self._cond:
            self._pending.append((writes, ticket))
            while not ticket["done"]:
                if not self._committing:
                    self._committing = True
                    batch, self._pending = self._pending, []
                    self._cond.release()
                    try:
                        error = self._flush([w for w, _ in batch])
                    finally:
                        self._cond.acquire()
                        self._committing = False
                    for _, other in batch:
                        other["done"], other["error"] = True, error
                    self._cond.notify_all()
                else:
                    self._cond.wait()
        if ticket["error"] is not None:
            raise CaptureUnavailable(f"capture store write failed: {ticket['error']}") from ticket["error"]

    def _flush(self, batches: list[list[tuple[Path, bytes]]]) -> BaseException | None:
        try:
            touched: dict[Path, int] = {}
            for writes in batches:
                for path, data in writes:
                    fd = self._fd(path)
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    touched[path] = fd
            for fd in touched.values():
                os.fsync(fd)
            return None
        except OSError as exc:
            # A failed write may have left part of a line behind: never append after it.
            self._start_new_files()
            return exc

    def _start_new_files(self) -> None:
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
        self._paths = {}
        self.writer_id = _new_writer_id()

    def _fd(self, path: Path) -> int:
        fd = self._fds.get(path)
        if fd is None:
            created = not path.parent.exists()
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            # A new file (and folder) must survive a crash too, not only its bytes.
            _fsync_dir(path.parent)
            if created:
                _fsync_dir(path.parent.parent)
                _fsync_dir(path.parent.parent.parent)
            self._fds[path] = fd
        return fd

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()


def _encode(record: dict) -> bytes:
    """One compact UTF-8 JSON line; orjson where it can (the intake's hottest step), json where it cannot."""
    try:
        return orjson.dumps(record, default=str, option=orjson.OPT_NON_STR_KEYS)
    except (orjson.JSONEncodeError, TypeError):
        return json.dumps(record, separators=(",", ":"), ensure_ascii=False, default=str).encode("utf-8")


def _new_writer_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{time.time_ns()}-{secrets.token_hex(3)}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
