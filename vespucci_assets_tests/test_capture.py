"""The capture store: durable appends, torn tails never read, concurrent writers."""

import errno
import os
import threading
from datetime import datetime, timezone

import pytest

from vespucci_assets.capture import EVENTS, QUARANTINE, CaptureStore, CaptureUnavailable
from vespucci_assets.ingest import build_events
from vespucci_assets.warehouse import connect_warehouse
from vespucci_assets.segment import normalize
from vespucci_assets_tests.support import BASE_DAY, at, message

RECEIVED = datetime(2026, 11, 20, 12, tzinfo=timezone.utc)


def test_messages_land_in_their_event_day_and_quarantine_in_arrival_day(tmp_path):
    store = CaptureStore(tmp_path)
    writer = store.writer()
    result = writer.append("acme", [
        normalize(message("screen:Home", at("23:59:59", -1)), RECEIVED),
        normalize(message("screen:Home", at("00:00:00")), RECEIVED),
        normalize({"type": "track", "event": "x"}, RECEIVED),
    ])
    assert (result.accepted, result.quarantined) == (2, 1)
    assert [d.isoformat() for d in store.days("acme", EVENTS)] == ["2026-11-19", "2026-11-20"]
    assert [d.isoformat() for d in store.days("acme", QUARANTINE)] == ["2026-11-20"]
    [rejected] = store.read_records("acme", QUARANTINE, [BASE_DAY])
    assert rejected["reason"] == "neither anonymousId nor userId"
    assert rejected["raw"] == '{"type":"track","event":"x"}'


def test_torn_tail_of_a_crashed_writer_is_never_read(tmp_path):
    store = CaptureStore(tmp_path / "capture")
    crashed = store.writer()
    crashed.append("acme", [normalize(message("screen:A", at("10:00"), message_id="kept"), RECEIVED)])
    [path] = store.files("acme", EVENTS, [BASE_DAY])
    with open(path, "ab") as fh:  # what a kill -9 in the middle of a write leaves behind
        fh.write(b'{"message_id":"torn","type":"screen","timestamp":"2026-11-20T10:0')
    later = store.writer()  # a restarted process writes its own file, never extending the torn one
    later.append("acme", [normalize(message("screen:B", at("10:01"), message_id="after"), RECEIVED)])

    assert [r["message_id"] for r in store.read_records("acme", EVENTS, [BASE_DAY])] == ["kept", "after"]
    conn = connect_warehouse(tmp_path / "w.duckdb")
    stats = build_events(conn, store, "acme", [BASE_DAY])
    assert stats.events == 2
    assert conn.execute("SELECT message_id FROM events ORDER BY 1").fetchall() == [("after",), ("kept",)]


def test_concurrent_appends_share_fsyncs_and_lose_nothing(tmp_path, monkeypatch):
    store = CaptureStore(tmp_path)
    writer = store.writer()
    fsyncs = []
    real_fsync = os.fsync

    def counting_fsync(fd):
        fsyncs.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    threads, per_thread, n_threads = [], 50, 8

    def post(thread_no: int) -> None:
        for i in range(per_thread):
            writer.append("acme", [normalize(message("screen:A", at("10:00"), message_id=f"t{thread_no}-{i}"), RECEIVED)])

    for n in range(n_threads):
        threads.append(threading.Thread(target=post, args=(n,)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [r["message_id"] for r in store.read_records("acme", EVENTS, [BASE_DAY])]
    assert sorted(ids) == sorted(f"t{n}-{i}" for n in range(n_threads) for i in range(per_thread))
    appends = per_thread * n_threads
    assert len(fsyncs) < appends, f"{len(fsyncs)} fsyncs for {appends} appends: no group commit"


def test_a_failed_write_is_not_acknowledged_and_never_extended(tmp_path, monkeypatch):
    """Disk full half-way through a line: that append fails (503 at the intake), later ones go to a new file."""
    store = CaptureStore(tmp_path)
    writer = store.writer()
    writer.append("acme", [normalize(message("screen:A", at("10:00"), message_id="before"), RECEIVED)])
    real_write = os.write

    def half_then_full(fd, data):
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(CaptureUnavailable, match="No space left"):
        writer.append("acme", [normalize(message("screen:B", at("10:01"), message_id="lost"), RECEIVED)])
    monkeypatch.setattr(os, "write", real_write)
    writer.append("acme", [normalize(message("screen:C", at("10:02"), message_id="after"), RECEIVED)])

    assert len(store.files("acme", EVENTS, [BASE_DAY])) == 2
    assert [r["message_id"] for r in store.read_records("acme", EVENTS, [BASE_DAY])] == ["before", "after"]
    conn = connect_warehouse(tmp_path / "w.duckdb")
    assert build_events(conn, store, "acme", [BASE_DAY]).events == 2
