"""The HTTP intake (SPEC section 11), always against a real intake process on 127.0.0.1."""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
import time
from datetime import datetime, timedelta, timezone

import duckdb
import pytest
import requests
from rudderstack.analytics import Client as RudderClient
from segment.analytics import Client as SegmentClient

from vespucci_assets.capture import QUARANTINE
from vespucci_assets_tests.intake_helpers import (
    BODY_TIMEOUT_S,
    assert_store_reads_cleanly,
    capture_bytes,
    create_project,
    first_copies,
    iso,
    mobile_upload,
    post,
    post_head,
    raw_request,
    read_response,
    running_intake,
    stored,
    track,
)

WEBHOOK_SECRET = "whsec-test-secret"


@pytest.fixture
def api_key(vespucci_home):
    return create_project(vespucci_home, "shop", tracking_method="action")


@pytest.fixture
def intake(vespucci_home, api_key):
    with running_intake(vespucci_home) as server:
        yield server


def days_ago(days: int, hhmm: str) -> datetime:
    hour, minute = (int(x) for x in hhmm.split(":"))
    today = datetime.now(timezone.utc).replace(hour=hour, minute=minute, second=0, microsecond=0)
    return today - timedelta(days=days)


def parse_ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# --- official clients ----------------------------------------------------------------------


def client_of(client_class):
    def make(api_key, url, use_gzip, errors):
        return client_class(api_key, host=url, gzip=use_gzip, on_error=lambda error, batch: errors.append(error), max_retries=1)

    return make


def send_every_call_type(client, run: str, when: datetime | None = None) -> dict[str, str]:
    """One call of each type from device dev-1 / user-1; returns messageId -> type."""
    ids = {f"{run}-{kind}": kind for kind in ("identify", "track", "screen", "page", "group", "alias")}
    common = {"anonymous_id": "dev-1", "timestamp": when}
    client.identify("user-1", {"plan": "pro"}, message_id=f"{run}-identify", **common)
    client.track("user-1", "Application Opened", {"from_background": False}, message_id=f"{run}-track", **common)
    client.screen("user-1", name="Home", message_id=f"{run}-screen", **common)
    client.page("user-1", category="Docs", name="Intro", message_id=f"{run}-page", **common)
    client.group("user-1", "acme-inc", {"name": "Acme"}, message_id=f"{run}-group", **common)
    client.alias("dev-1", "user-1", message_id=f"{run}-alias", timestamp=when)
    client.flush()
    return ids


@pytest.mark.parametrize(
    "make_client, use_gzip",
    [(client_of(SegmentClient), False), (client_of(SegmentClient), True), (client_of(RudderClient), False), (client_of(RudderClient), True)],
    ids=["segment-plain", "segment-gzip", "rudder-plain", "rudder-gzip"],
)
def test_official_clients_deliver_every_call_type(vespucci_home, api_key, intake, make_client, use_gzip):
    errors: list = []
    client = make_client(api_key, intake.url, use_gzip, errors)
    before = datetime.now(timezone.utc)
    sent = send_every_call_type(client, "run")
    client.join()
    assert errors == []

    records = first_copies(stored(vespucci_home))
    assert {mid: r["type"] for mid, r in records.items()} == sent
    assert records["run-track"]["event"] == "Application Opened"
    assert records["run-screen"]["name"] == "Home"
    assert records["run-alias"]["user_id"] == "user-1"
    assert all(r["context"]["library"]["name"] for r in records.values())
    for record in records.values():  # SDK clock == server clock here, so the correction is ~0
        assert before - timedelta(seconds=1) <= parse_ts(record["timestamp"]) <= datetime.now(timezone.utc)

    assert api_key.encode() not in capture_bytes(vespucci_home)
    assert api_key not in intake.log_text()
    access = [r for r in intake.log_records() if r.get("event") == "request" and r["path"] == "/v1/batch"]
    assert access and all(r["status"] == 200 and r["project_id"] == "shop" for r in access)
    assert sum(r["accepted"] for r in access) == 6


def test_single_call_endpoints_take_basic_auth_or_write_key(vespucci_home, api_key, intake):
    assert post(intake.url + "/v1/track", {"anonymousId": "d", "event": "A", "messageId": "t1"}, api_key=api_key).json() == {
        "success": True
    }
    for call_type in ("page", "screen", "identify", "group", "alias"):
        body = {"userId": "u", "messageId": f"{call_type}1", "writeKey": api_key}
        assert post(intake.url + f"/v1/{call_type}", body).status_code == 200
    records = first_copies(stored(vespucci_home))
    assert {r["type"] for r in records.values()} == {"track", "page", "screen", "identify", "group", "alias"}
    assert api_key.encode() not in capture_bytes(vespucci_home)


def test_android_style_import_with_basic_auth_and_gzip(vespucci_home, api_key, intake):
    body = {"batch": [track(f"imp-{i}") for i in range(3)], "sentAt": iso(datetime.now(timezone.utc))}
    response = post(intake.url + "/v1/import", body, api_key=api_key, gzipped=True)
    assert response.status_code == 200
    assert set(first_copies(stored(vespucci_home))) == {"imp-0", "imp-1", "imp-2"}


# --- mobile uploads and event time ------------------------------------------------------------------


def test_mobile_upload_with_a_wrong_device_clock_gets_corrected_timestamps(vespucci_home, api_key, intake):
    true_times = [datetime.now(timezone.utc) - timedelta(minutes=m) for m in (9, 8, 2)]
    names = ["Application Opened", "screen:Home", "Application Backgrounded"]
    events = [(f"mob-{i}", name, when) for i, (name, when) in enumerate(zip(names, true_times))]
    upload = mobile_upload(api_key, events, device="phone-1", clock_offset=timedelta(hours=-5, minutes=-13))

    assert requests.post(intake.url + "/v1/b", json=upload, timeout=10).status_code == 200

    records = first_copies(stored(vespucci_home))
    for message_id, _, true_time in events:
        record = records[message_id]
        assert abs(parse_ts(record["timestamp"]) - true_time) < timedelta(seconds=2)
        assert record["original_timestamp"] == iso(true_time - timedelta(hours=5, minutes=13)).replace("Z", "000Z")
        assert record["sent_at"] == upload["sentAt"].replace("Z", "000Z")
        assert record["context"]["device"]["model"] == "iPhone15,2"  # envelope context merged into each item


# --- webhook -----------------------------------------------------------------------------------------


def segment_event(message_id: str, when: datetime) -> dict:
    """An event as Segment's Webhooks destination delivers it (already has receivedAt)."""
    return {
        "type": "track",
        "event": "Order Completed",
        "messageId": message_id,
        "anonymousId": "web-1",
        "timestamp": iso(when),
        "originalTimestamp": iso(when - timedelta(seconds=3)),
        "sentAt": iso(when),
        "receivedAt": iso(when + timedelta(seconds=1)),
        "properties": {"total": 42.5},
    }


def js_stringify(value) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sign(body: bytes, secret: str = WEBHOOK_SECRET) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()


WHEN = days_ago(1, "12:00")
SINGLE = segment_event("wh-1", WHEN)
ARRAY = [segment_event("wh-2", WHEN), segment_event("wh-3", WHEN + timedelta(minutes=1))]
WEBHOOK_CASES = {
    "single-valid": (SINGLE, sign(js_stringify(SINGLE)), 200, None),
    "single-invalid": (SINGLE, sign(js_stringify(SINGLE), "other-secret"), 401, "invalid_signature"),
    "single-missing": (SINGLE, None, 401, "missing_signature"),
    "array-whole-body": (ARRAY, sign(js_stringify(ARRAY)), 200, None),
    "array-first-event": (ARRAY, sign(js_stringify(ARRAY[0])), 200, None),
    "array-invalid": (ARRAY, sign(js_stringify(ARRAY[1])), 401, "invalid_signature"),
    "array-missing": (ARRAY, None, 401, "missing_signature"),
}


@pytest.mark.parametrize("case", WEBHOOK_CASES)
def test_webhook_checks_the_signature(vespucci_home, case):
    payload, signature, status, code = WEBHOOK_CASES[case]
    api_key = create_project(vespucci_home, "shop", webhook_secret=WEBHOOK_SECRET)
    with running_intake(vespucci_home) as intake:
        headers = {"X-Signature": signature} if signature else {}
        response = post(intake.url + "/webhook", data=js_stringify(payload), api_key=api_key, headers=headers)
        assert response.status_code == status
        records = first_copies(stored(vespucci_home))
    if code:
        assert response.json()["code"] == code
        assert records == {}
        return
    events = payload if isinstance(payload, list) else [payload]
    assert set(records) == {e["messageId"] for e in events}
    for event in events:  # delivered by Segment: Segment's timestamp and receivedAt are kept
        assert parse_ts(records[event["messageId"]]["timestamp"]) == parse_ts(event["timestamp"])
        assert parse_ts(records[event["messageId"]]["received_at"]) == parse_ts(event["receivedAt"])


def test_webhook_without_a_secret_accepts_unsigned_events_keyed_in_the_body(vespucci_home, api_key, intake):
    event = {**segment_event("wh-9", WHEN), "writeKey": api_key}
    assert post(intake.url + "/webhook", [event]).status_code == 200
    assert set(first_copies(stored(vespucci_home))) == {"wh-9"}
    assert api_key.encode() not in capture_bytes(vespucci_home)


# --- bad input ------------------------------------------------------------------------------------------


def good_batch(prefix: str = "ok", count: int = 2) -> dict:
    return {"batch": [track(f"{prefix}-{i}") for i in range(count)]}


def gzip_bomb() -> bytes:
    return gzip.compress(b'{"batch":[' + b" " * (20 * 1024 * 1024) + b"]}", compresslevel=9)


def chunked(data: bytes, size: int = 64 * 1024):
    for start in range(0, len(data), size):
        yield data[start : start + size]


def oversized_body() -> bytes:
    return json.dumps(good_batch(count=1) | {"padding": "x" * (501 * 1024)}).encode()


REFUSED = {
    # name: (path, body bytes, key mode, extra headers, status, code)
    "invalid-json": ("/v1/batch", b'{"batch": [', "basic", {}, 400, "invalid_json"),
    "nan": ("/v1/batch", b'{"batch": [{"type": "track", "anonymousId": "a", "event": NaN}]}', "basic", {}, 400, "invalid_json"),
    "nested-too-deep": ("/v1/batch", b'{"batch": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "basic", {}, 400, "invalid_json"),
    "non-utf8": ("/v1/batch", b'{"batch": [{"type": "track", "anonymousId": "a", "event": "caf\xe9"}]}', "basic", {}, 400, "invalid_encoding"),
    "empty-body": ("/v1/batch", b"", "basic", {}, 400, "empty_body"),
    "whitespace-body": ("/v1/track", b"  \n", "basic", {}, 400, "empty_body"),
    "array-body": ("/v1/batch", b"[1, 2]", "basic", {}, 400, "invalid_body"),
    "batch-not-array": ("/v1/batch", b'{"batch": {"type": "track"}}', "basic", {}, 400, "invalid_batch"),
    "scalar-call": ("/v1/track", b'"track"', "basic", {}, 400, "invalid_body"),
    "wrong-key": ("/v1/batch", json.dumps(good_batch()).encode(), "wrong", {}, 401, "invalid_api_key"),
    "wrong-write-key": ("/v1/batch", json.dumps(good_batch() | {"writeKey": "vsp_nope"}).encode(), None, {}, 401, "invalid_api_key"),
    "missing-key": ("/v1/batch", json.dumps(good_batch()).encode(), None, {}, 401, "missing_api_key"),
    "over-the-limit": ("/v1/batch", oversized_body(), "basic", {}, 413, "request_too_large"),
    "over-the-limit-chunked": ("/v1/batch", "chunked", "basic", {}, 413, "request_too_large"),
    "gzip-bomb": ("/v1/batch", gzip_bomb(), "basic", {"Content-Encoding": "gzip"}, 413, "inflated_too_large"),
    "not-gzip": ("/v1/batch", b'{"batch": []}', "basic", {"Content-Encoding": "gzip"}, 400, "invalid_gzip"),
    "brotli": ("/v1/batch", b'{"batch": []}', "basic", {"Content-Encoding": "br"}, 415, "unsupported_encoding"),
    "2501-messages": ("/v1/batch", json.dumps(good_batch("many", 2501)).encode(), "basic", {}, 413, "too_many_messages"),
    "unknown-endpoint": ("/v1/everything", b"{}", "basic", {}, 404, "not_found"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_bad_requests_are_refused_whole_and_the_server_stays_up(vespucci_home, api_key, intake, case):
    path, body, key_mode, headers, status, code = REFUSED[case]
    body = chunked(oversized_body()) if body == "chunked" else body
    key = {"basic": api_key, "wrong": "vsp_wrong-key", None: None}[key_mode]
    auth = (key, "") if key else None
    response = requests.post(intake.url + path, data=body, headers=headers, auth=auth, timeout=10)

    assert (response.status_code, response.json()["code"]) == (status, code)
    assert response.json()["message"]
    assert stored(vespucci_home) == [] and stored(vespucci_home, kind=QUARANTINE) == []
    assert intake.is_healthy()
    assert post(intake.url + "/v1/batch", good_batch(), api_key=api_key).status_code == 200
    assert set(first_copies(stored(vespucci_home))) == {"ok-0", "ok-1"}
    assert_store_reads_cleanly(vespucci_home)


QUARANTINED = {
    # name: (message, reason fragment)
    "no-ids": ({"type": "track", "event": "Tapped", "properties": {}}, "neither anonymousId nor userId"),
    "no-type": ({"anonymousId": "a", "messageId": "q-no-type"}, "missing type"),
    "properties-not-object": (track("q-props", properties="cheap"), "properties must be an object"),
    "id-not-string": ({"type": "track", "event": "E", "anonymousId": {"id": 1}}, "anonymousId must be a string"),
    "timestamp-not-string": (track("q-ts", timestamp=1700000000), "timestamp must be an ISO-8601 string"),
    "timestamp-garbage": (track("q-ts2", timestamp="yesterday"), "not an ISO-8601 timestamp"),
    "not-an-object": (42, "not a JSON object"),
    "far-future": (track("q-future", timestamp="2999-01-01T00:00:00Z"), "more than 24 h"),
    "dates-out-of-range": (track("q-range", timestamp="0001-01-01T00:00:00Z", sentAt="9999-12-31T00:00:00Z"), "unusable"),
    "lone-surrogate": (track("q-surrogate", event="\ud800"), "not encodable as UTF-8 JSON"),
    "over-32-kb": (track("q-big", properties={"blob": "x" * 33_000}), "larger than 32 KB"),
}


@pytest.mark.parametrize("case", QUARANTINED)
def test_unusable_messages_are_quarantined_and_the_rest_accepted(vespucci_home, api_key, intake, case):
    message, reason = QUARANTINED[case]
    body = json.dumps({"batch": [track("good-1"), message, track("good-2")]}).encode()
    response = post(intake.url + "/v1/batch", data=body, api_key=api_key)

    assert response.json() == {"success": True}
    assert set(first_copies(stored(vespucci_home))) == {"good-1", "good-2"}
    [rejected] = stored(vespucci_home, kind=QUARANTINE)
    assert reason in rejected["reason"]
    assert rejected["raw"]
    assert_store_reads_cleanly(vespucci_home)


def test_unknown_fields_are_kept(vespucci_home, api_key, intake):
    message = track("extra-1", version=2, vendorField={"nested": [1, 2]}, channel="mobile")
    assert post(intake.url + "/v1/batch", {"batch": [message]}, api_key=api_key).status_code == 200
    [record] = stored(vespucci_home)
    assert record["extra"] == {"version": 2, "vendorField": {"nested": [1, 2]}, "channel": "mobile"}


def test_a_slow_client_times_out_without_blocking_others(vespucci_home, api_key, intake):
    body = json.dumps(good_batch("slow")).encode()
    slow = raw_request(intake.port, post_head("/v1/batch", api_key, len(body)), body[:20])
    started = time.monotonic()
    # While the slow body trickles (never completes), other clients are served at once.
    assert post(intake.url + "/v1/batch", good_batch(), api_key=api_key).status_code == 200
    assert time.monotonic() - started < BODY_TIMEOUT_S

    status, payload = read_response(slow)
    assert (status, payload["code"]) == (408, "request_timeout")
    assert slow.recv(1) == b""  # and the connection is closed
    assert set(first_copies(stored(vespucci_home))) == {"ok-0", "ok-1"}
    assert intake.is_healthy()


def test_requests_in_flight_together_all_succeed(vespucci_home, api_key, intake):
    body = json.dumps({"batch": [track(f"c-{i}") for i in range(100)]}).encode()
    slow_heads = [raw_request(intake.port, post_head("/v1/batch", api_key, len(body)), body[:-1]) for _ in range(8)]
    for sock in slow_heads:  # all eight are mid-body; finishing them must not take 8 round trips of a serial server
        sock.sendall(body[-1:])
    assert [read_response(sock)[0] for sock in slow_heads] == [200] * 8
    assert set(first_copies(stored(vespucci_home))) == {f"c-{i}" for i in range(100)}


# --- Dagster end to end --------------------------------------------------------------------------------


def test_expected_sessions_come_out_of_a_dagster_run(vespucci_home, api_key, intake):
    runs = pytest.importorskip("vespucci_assets.runs")
    from vespucci_assets.home import Home
    from vespucci_assets_tests.support import session_rows

    errors: list = []
    client = client_of(SegmentClient)(api_key, intake.url, True, errors)
    web = [("w-open", "Application Opened", "10:00"), ("w-home", "screen:Home", "10:01"), ("w-bg", "Application Backgrounded", "10:10")]
    for message_id, name, hhmm in web:
        when = days_ago(2, hhmm)
        if name.startswith("screen:"):
            client.screen(anonymous_id="dev-web", name="Home", timestamp=when, message_id=message_id)
        else:
            client.track(anonymous_id="dev-web", event=name, timestamp=when, message_id=message_id)
    client.identify("user-7", anonymous_id="dev-web", timestamp=days_ago(2, "10:02"), message_id="w-identify")
    client.flush()
    assert errors == []

    phone = [
        ("p-open", "Application Opened", days_ago(2, "14:00")),
        ("p-screen", "screen:Cart", days_ago(2, "14:03")),
        ("p-bg", "Application Backgrounded", days_ago(2, "14:20")),
        ("p-open2", "Application Opened", days_ago(2, "16:00")),
        ("p-bg2", "Application Backgrounded", days_ago(2, "16:05")),
    ]
    upload = mobile_upload(api_key, phone, device="dev-phone", clock_offset=timedelta(hours=7))
    assert requests.post(intake.url + "/v1/b", json=upload, timeout=10).status_code == 200

    runs.materialize_partitions(Home(vespucci_home), project_ids=["shop"])

    with duckdb.connect(str(Home(vespucci_home).warehouse_path), read_only=True) as conn:
        action = session_rows(conn, "action")
        time_based = session_rows(conn, "time")
    expected = [
        ("dev-phone", ["p-open", "p-screen", "p-bg"], "14:00"),
        ("dev-phone", ["p-open2", "p-bg2"], "16:00"),
        ("dev-web", ["w-open", "w-home", "w-bg"], "10:00"),
    ]
    for sessions in (action, time_based):
        assert [(s["device_key"], s["members"]) for s in sessions] == [(d, m) for d, m, _ in expected]
        for session, (_, _, hhmm) in zip(sessions, expected):
            assert abs(session["started_at"].replace(tzinfo=timezone.utc) - days_ago(2, hhmm)) < timedelta(seconds=2)
    assert [s["end_reason"] for s in action] == ["backgrounded"] * 3
    assert action[2]["user_id"] == "user-7"
