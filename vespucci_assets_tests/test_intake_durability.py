"""The intake never loses an acknowledged message: kill -9, SIGTERM drain, several workers."""

from __future__ import annotations

import json
import random
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest
import requests

from vespucci_assets_tests.intake_helpers import (
    IntakeProcess,
    assert_store_reads_cleanly,
    create_project,
    first_copies,
    post,
    post_head,
    raw_request,
    read_response,
    running_intake,
    stored,
    track,
)

CLIENTS = 4
KILLS = 4
BATCH_SIZE = 25


@pytest.fixture
def api_key(vespucci_home):
    return create_project(vespucci_home, "shop")


@dataclass
class Ledger:
    """What each client sent and what the server acknowledged."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: set = field(default_factory=set)
    acked: set = field(default_factory=set)
    acked_first_try: set = field(default_factory=set)

    def record(self, ids: list[str], acked: bool, first_try: bool) -> None:
        with self.lock:
            self.sent.update(ids)
            if acked:
                self.acked.update(ids)
                if first_try:
                    self.acked_first_try.update(ids)


def keep_posting(url: str, api_key: str, client: int, ledger: Ledger, stop: threading.Event) -> None:
    """Post batches like an SDK: retry the same batch (same messageIds) until it is acknowledged."""
    batch_number = 0
    while not stop.is_set():
        ids = [f"c{client}-b{batch_number}-m{i}" for i in range(BATCH_SIZE)]
        body = {"batch": [track(message_id, device=f"dev-{client}") for message_id in ids]}
        attempts = 0
        while True:
            attempts += 1
            try:
                acked = post(url + "/v1/batch", body, api_key=api_key).status_code == 200
            except requests.RequestException:
                acked = False
            ledger.record(ids, acked, first_try=attempts == 1)
            if acked:
                break
            time.sleep(0.05)
        batch_number += 1


def test_kill_9_during_concurrent_posting_loses_no_acknowledged_message(vespucci_home, api_key):
    server = IntakeProcess(vespucci_home).start()
    ledger, stop = Ledger(), threading.Event()
    try:
        with ThreadPoolExecutor(CLIENTS) as pool:
            for client in range(CLIENTS):
                pool.submit(keep_posting, server.url, api_key, client, ledger, stop)
            for _ in range(KILLS):
                time.sleep(random.uniform(0.4, 0.9))
                server.kill()
                time.sleep(random.uniform(0.0, 0.2))  # clients hit a dead server meanwhile
                server.start()
            time.sleep(0.5)
            stop.set()
    finally:
        server.kill()

    records = stored(vespucci_home)
    copies = Counter(r["message_id"] for r in records)
    assert len(ledger.acked) > CLIENTS * BATCH_SIZE * KILLS  # the clients really were busy
    assert ledger.acked <= set(first_copies(records)), "an acknowledged message is missing"
    assert set(copies) <= ledger.sent, "the store holds a message nobody sent"
    assert all(copies[i] == 1 for i in ledger.acked_first_try), "a message acknowledged at once was stored twice"
    assert_store_reads_cleanly(vespucci_home)


def test_sigterm_drains_an_in_flight_request(vespucci_home, api_key):
    server = IntakeProcess(vespucci_home).start()
    try:
        body = json.dumps({"batch": [track(f"drain-{i}") for i in range(50)]}).encode()
        in_flight = raw_request(server.port, post_head("/v1/batch", api_key, len(body)), body[:100])
        time.sleep(0.2)
        server.signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(requests.ConnectionError):  # no new connections once draining
            requests.get(server.url + "/health", timeout=1)
        assert server.process.poll() is None  # still alive for the request in flight

        in_flight.sendall(body[100:])
        assert read_response(in_flight) == (200, {"success": True})
        assert server.wait_exit() == 0
    finally:
        server.kill()
    assert set(first_copies(stored(vespucci_home))) == {f"drain-{i}" for i in range(50)}


def test_several_workers_each_write_safely(vespucci_home, api_key):
    with running_intake(vespucci_home, workers=2) as server:
        batches = [{"batch": [track(f"w{b}-{i}") for i in range(20)]} for b in range(40)]
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda body: post(server.url + "/v1/batch", body, api_key=api_key).status_code, batches))
        assert statuses == [200] * 40
        server.signal(signal.SIGTERM)
        assert server.wait_exit() == 0
    assert Counter(r["message_id"] for r in stored(vespucci_home)) == Counter(
        m["messageId"] for body in batches for m in body["batch"]
    )
    assert_store_reads_cleanly(vespucci_home)
