"""The DuckDB warehouse file: one writer at a time, across threads, processes and runs.

DuckDB lets a single process open a file for writing. Every Vespucci writer takes an
exclusive lock on `<file>.lock` first and holds it while its connection is open, so
steps of concurrent runs (or of one multiprocess run) wait their turn instead of
failing on DuckDB's own lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from pathlib import Path
from typing import Iterator

import duckdb

from vespucci_assets.tables import create_schema

DEFAULT_LOCK_TIMEOUT_S = 3600.0
# Steps of one run follow each other within a fraction of a second; a writer elsewhere waits at most this.
DEFAULT_IDLE_RELEASE_S = 2.0
# Someone else's process (a notebook, the duckdb CLI) may hold the file for a moment.
FOREIGN_LOCK_WAIT_S = 30.0


class WarehouseUnavailable(RuntimeError):
    """The warehouse could not be opened for writing; the message says why and what to do."""


@contextlib.contextmanager
def writer_lock(path: Path, timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _wait(lambda: _try_flock(fd), timeout_s,
              f"the warehouse {path} has been busy with another Vespucci writer for {timeout_s:g} s")
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _wait(attempt, timeout_s: float, message: str) -> None:
    deadline = time.monotonic() + timeout_s
    pause = 0.01
    while not attempt():
        if time.monotonic() >= deadline:
            raise WarehouseUnavailable(message)
        time.sleep(pause)
        pause = min(pause * 2, 0.5)


def connect_warehouse(path: Path | str, memory_limit: str | None = None) -> duckdb.DuckDBPyConnection:
    """Open the warehouse for writing (callers hold `writer_lock`) with every table created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    opened: list[duckdb.DuckDBPyConnection] = []

    def attempt() -> bool:
        try:
            opened.append(duckdb.connect(str(path)))
            return True
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                raise WarehouseUnavailable(f"cannot open the warehouse {path}: {str(exc).splitlines()[0]}") from None
            return False

    _wait(attempt, FOREIGN_LOCK_WAIT_S, f"the warehouse {path} is held open by another program; close it and retry")
    conn = opened[0]
    # Readers order their results; writes need not keep row order, which lets DuckDB write in parallel.
    conn.execute("SET preserve_insertion_order = false")
    if memory_limit:
        conn.execute(f"SET memory_limit = '{memory_limit}'")
    create_schema(conn)
    return conn


class SharedWriter:
    """One writer connection that consecutive users in this process take turns on.

    The steps of a run executing in one process then read what the step before them wrote
    from DuckDB's buffer pool, not back from the file, and open and checkpoint the file once.
    The connection, and with it the file lock, is let go after `idle_s` without a user, so a
    writer in another process (a step of a concurrent run, which may hold the pool slot this
    run's next step waits for) waits at most that long; and by `close()`.
    """

    def __init__(self, path: Path | str, lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
                 idle_s: float = DEFAULT_IDLE_RELEASE_S) -> None:
        self.path = Path(path)
        self.lock_timeout_s = lock_timeout_s
        self.idle_s = idle_s
        self._mutex = threading.RLock()
        self._conn: duckdb.DuckDBPyConnection | None = None
        self._lock = contextlib.ExitStack()
        self._idle_timer: threading.Timer | None = None

    @contextlib.contextmanager
    def connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self._mutex:
            self._cancel_idle_timer()
            if self._conn is None:
                self._open()
            try:
                yield self._conn
            except BaseException:
                # Whatever state a failed user left behind is not handed to the next one.
                self._release()
                raise
            self._cancel_idle_timer()
            self._idle_timer = threading.Timer(self.idle_s, self.close)
            self._idle_timer.daemon = True
            self._idle_timer.start()

    @property
    def is_open(self) -> bool:
        return self._conn is not None

    def close(self) -> None:
        with self._mutex:
            self._cancel_idle_timer()
            self._release()

    def _open(self) -> None:
        self._lock.enter_context(writer_lock(self.path, self.lock_timeout_s))
        try:
            self._conn = connect_warehouse(self.path)
        except BaseException:
            self._lock.close()
            raise

    def _release(self) -> None:
        try:
            if self._conn is not None:
                self._conn.close()
        finally:
            self._conn = None
            self._lock.close()

    def _cancel_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
