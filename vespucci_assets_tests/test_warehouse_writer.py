"""The warehouse writer: one process writes at a time, a run's steps share it, an idle or failed one lets go."""

from __future__ import annotations

import subprocess
import sys
import time

import duckdb
import pytest

from vespucci_assets.warehouse import SharedWriter, WarehouseUnavailable, writer_lock


def _lock_is_free(path) -> bool:
    try:
        with writer_lock(path, timeout_s=0.05):
            return True
    except WarehouseUnavailable:
        return False


def test_consecutive_users_share_one_connection_until_it_is_idle(tmp_path):
    path = tmp_path / "vespucci.duckdb"
    writer = SharedWriter(path, idle_s=0.5)
    with writer.connection() as first:
        first.execute("CREATE TABLE seen AS SELECT 42 AS answer")
    with writer.connection() as second:
        assert second is first
        assert second.execute("SELECT answer FROM seen").fetchall() == [(42,)]

    # Between users it still holds the file ...
    assert writer.is_open and not _lock_is_free(path)
    # ... and lets go once idle, so another writer waits at most idle_s.
    time.sleep(1.0)
    assert not writer.is_open and _lock_is_free(path)
    with duckdb.connect(str(path), read_only=True) as reader:
        assert reader.execute("SELECT answer FROM seen").fetchall() == [(42,)]


OTHER_WRITER = """
import sys, time
from vespucci_assets.warehouse import SharedWriter
print("ready", flush=True)
sys.stdin.readline()
started = time.monotonic()
writer = SharedWriter(sys.argv[1], lock_timeout_s=30)
with writer.connection() as conn:
    conn.execute("INSERT INTO seen VALUES (1)")
writer.close()
print(time.monotonic() - started, flush=True)
"""


def test_a_writer_in_another_process_gets_the_file_once_this_one_is_idle(tmp_path):
    path = tmp_path / "vespucci.duckdb"
    writer = SharedWriter(path, idle_s=1.0)
    other = subprocess.Popen([sys.executable, "-c", OTHER_WRITER, str(path)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert other.stdout.readline().strip() == "ready"
    with writer.connection() as conn:
        conn.execute("CREATE TABLE seen (n INTEGER)")
    other.stdin.write("go\n")
    other.stdin.flush()
    out, err = other.communicate(timeout=60)
    assert other.returncode == 0, err
    waited = float(out.split()[-1])
    assert 0.5 < waited < 10, waited
    with writer.connection() as conn:
        assert conn.execute("SELECT n FROM seen").fetchall() == [(1,)]
    writer.close()


def test_a_failed_user_closes_the_connection_at_once(tmp_path):
    path = tmp_path / "vespucci.duckdb"
    writer = SharedWriter(path, idle_s=60)
    with pytest.raises(duckdb.CatalogException):
        with writer.connection() as conn:
            conn.execute("SELECT * FROM no_such_table")
    assert not writer.is_open and _lock_is_free(path)
    with writer.connection() as conn:
        assert conn.execute("SELECT 1").fetchall() == [(1,)]
    writer.close()
    assert _lock_is_free(path)
