"""The demo stream is deterministic and contains every kind of untidy traffic it promises.

Everything is observed the way the pipeline would see it: by the corrected time
`received_at - (sentAt - timestamp)`, first copy of each messageId wins.
"""

from __future__ import annotations

import gc
import uuid
from collections import Counter, defaultdict
from datetime import date, datetime, timedelta, timezone
from functools import lru_cache

import pytest

from vespucci_assets.demo_data import TIMEZONES, DemoBatch, demo_batches

END_DAY = date(2025, 3, 9)
WINDOW_START = datetime(2025, 3, 3, tzinfo=timezone.utc)
WINDOW_END = datetime(2025, 3, 10, tzinfo=timezone.utc)
IDLE = timedelta(minutes=45)
SESSION_TIMEOUT = timedelta(minutes=30)
LIFECYCLE_RANK = {"Application Installed": 0, "Application Updated": 0, "Application Opened": 1,
                  "Application Backgrounded": 3}
PUSH = "Push Notification Received"
STYLES = ("action", "time")


@lru_cache(maxsize=None)
def default_stream(style: str) -> tuple[DemoBatch, ...]:
    stream = tuple(demo_batches(f"demo-{style}", style=style, end_day=END_DAY))
    gc.freeze()  # cached for the whole run: spare later tests' garbage collections a rescan of it
    return stream


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def corrected(batch: DemoBatch, message: dict) -> datetime:
    return batch.received_at - (ts(batch.envelope["sentAt"]) - ts(message["timestamp"]))


def event_name(message: dict) -> str | None:
    return message.get("event") if message["type"] == "track" else None


def with_times(batches) -> list[tuple[DemoBatch, dict, datetime]]:
    """Each message with its corrected time."""
    rows = []
    for batch in batches:
        clock_offset = ts(batch.envelope["sentAt"]) - batch.received_at
        rows += [(batch, message, ts(message["timestamp"]) - clock_offset) for message in batch.messages]
    return rows


@lru_cache(maxsize=None)
def default_messages(style: str) -> tuple[tuple[DemoBatch, dict, datetime], ...]:
    return tuple(with_times(default_stream(style)))


@lru_cache(maxsize=None)
def default_timelines(style: str) -> dict[str, list[tuple[datetime, dict]]]:
    """Per device, first copy of each message, in SPEC section 4 order."""
    seen: set[str] = set()
    by_device: dict[str, list[tuple[datetime, dict]]] = defaultdict(list)
    for _, message, at in default_messages(style):
        if message["messageId"] not in seen:
            seen.add(message["messageId"])
            by_device[message["anonymousId"]].append((at, message))
    for items in by_device.values():
        items.sort(key=lambda item: (item[0], LIFECYCLE_RANK.get(event_name(item[1]), 2), item[1]["messageId"]))
    return by_device


def members(items):
    return [(at, m) for at, m in items if m["type"] in ("track", "screen", "page")]


def foreground_spans(items):
    """Opened..Backgrounded spans, or Opened..last member before the next Opened after a crash;
    yields (span, crashed)."""
    span = None
    for at, message in members(items):
        name = event_name(message)
        if name in ("Application Installed", "Application Updated"):
            continue  # they belong to the launch that follows
        if name == "Application Opened":
            if span:
                yield span, True
            span = [(at, message)]
        elif span is not None:
            span.append((at, message))
            if name == "Application Backgrounded":
                yield span, False
                span = None


def observe_action() -> Counter:
    seen = Counter()
    for items in default_timelines("action").values():
        identified_at = [at for at, m in items if m["type"] == "identify"]
        for span, crashed in foreground_spans(items):
            seen["spans"] += 1
            seen["crashes"] += crashed
            seen["midnight_spans"] += span[0][0].date() != span[-1][0].date()
            seen["idle_gaps"] += sum(b[0] - a[0] > IDLE for a, b in zip(span, span[1:]))
            seen["logins"] += sum(span[0][0] < at < span[-1][0] for at in identified_at)
        state = "before"
        for _, message in members(items):
            name = event_name(message)
            if name == "Application Opened":
                state = "foreground"
            elif name == "Application Backgrounded":
                state = "background"
            elif name == PUSH and state == "background":
                seen["background_pushes"] += 1
    return seen


def observe_time() -> Counter:
    """Without lifecycle events a journey starts at the Home screen; a long gap before any
    other screen or track (pushes aside) is idle time in the foreground."""
    seen = Counter()
    for items in default_timelines("time").values():
        foreground = [(at, m) for at, m in members(items) if event_name(m) != PUSH]
        for (a, _), (b, later) in zip(foreground, foreground[1:]):
            seen["idle_gaps"] += b - a > IDLE and later.get("name") != "Home"
            seen["midnight_spans"] += b - a <= SESSION_TIMEOUT and a.date() != b.date()
        seen["pushes"] += sum(event_name(m) == PUSH for _, m in items)
    return seen


def duplicated_batches(batches) -> list[list[DemoBatch]]:
    copies = defaultdict(list)
    for batch in batches:
        copies[tuple(m["messageId"] for m in batch.messages)].append(batch)
    return [group for group in copies.values() if len(group) > 1]


@pytest.mark.parametrize("style", STYLES)
def test_same_arguments_give_identical_output(style):
    assert demo_batches(f"demo-{style}", style=style, end_day=END_DAY) == list(default_stream(style))


def test_seed_changes_the_stream():
    assert demo_batches("x", style="time", end_day=END_DAY, devices=5, seed=8) != demo_batches(
        "x", style="time", end_day=END_DAY, devices=5, seed=9)


def test_projects_share_the_traffic_shape_but_not_the_ids():
    shop_a, shop_b = (demo_batches(p, style="action", end_day=END_DAY, devices=5) for p in ("shop-a", "shop-b"))
    assert [b.received_at for b in shop_a] == [b.received_at for b in shop_b]
    ids_a, ids_b = ({m[key] for b in s for m in b.messages for key in ("anonymousId", "messageId")}
                    for s in (shop_a, shop_b))
    assert not ids_a & ids_b


@pytest.mark.parametrize("style", STYLES)
def test_batches_look_like_sdk_uploads(style):
    batches = default_stream(style)
    assert [b.received_at for b in batches] == sorted(b.received_at for b in batches)
    for batch in batches:
        assert batch.project_id == f"demo-{style}"
        assert batch.received_at.utcoffset() == timedelta(0)
        assert 1 <= len(batch.messages) <= 20
        assert batch.envelope["context"]["library"]["name"] in ("analytics-swift", "analytics-kotlin")
        sent_at = ts(batch.envelope["sentAt"])
        for message in batch.messages:
            assert {"type", "messageId", "anonymousId", "userId", "timestamp", "context"} <= message.keys()
            assert "receivedAt" not in message and "sentAt" not in message
            assert message["timestamp"].endswith("Z") and ts(message["timestamp"]) <= sent_at
            assert {"app", "device", "os", "library"} <= message["context"].keys()
            assert {"name", "version", "build"} <= message["context"]["app"].keys()
            assert {"id", "model"} <= message["context"]["device"].keys()
            if message["type"] == "track":
                assert message["event"]
            elif message["type"] == "screen":
                assert message["name"]


@pytest.mark.parametrize("style", STYLES)
def test_ids_are_uuid4_and_each_device_keeps_one_anonymous_id(style):
    device_ids = defaultdict(set)
    for _, message, _ in default_messages(style):
        assert uuid.UUID(message["messageId"]).version == 4
        device_ids[message["anonymousId"]].add(message["context"]["device"]["id"])
    assert len(device_ids) == 60
    assert all(len(ids) == 1 for ids in device_ids.values())


@pytest.mark.parametrize("style", STYLES)
def test_corrected_time_fills_exactly_the_requested_days(style):
    times = [at for _, _, at in default_messages(style)]
    assert WINDOW_START <= min(times) and max(times) < WINDOW_END
    assert {at.date() for at in times} == {END_DAY - timedelta(days=n) for n in range(7)}
    assert max(b.received_at for b in default_stream(style)) < WINDOW_END


@pytest.mark.parametrize("style", STYLES)
def test_some_batches_are_delivered_twice(style):
    groups = duplicated_batches(default_stream(style))
    assert len(groups) >= 50
    for first, retry in groups:
        assert retry.messages == first.messages
        assert retry.received_at > first.received_at
        assert ts(retry.envelope["sentAt"]) > ts(first.envelope["sentAt"])
    copies = Counter(m["messageId"] for _, m, _ in default_messages(style))
    assert sum(n - 1 for n in copies.values()) == sum(len(g[0].messages) for g in groups)


@pytest.mark.parametrize("style", STYLES)
def test_some_devices_have_clocks_hours_off(style):
    skews = {b.messages[0]["anonymousId"]: ts(b.envelope["sentAt"]) - b.received_at for b in default_stream(style)}
    assert sum(abs(s) >= timedelta(hours=1) for s in skews.values()) >= 2
    assert sum(abs(s) < timedelta(seconds=10) for s in skews.values()) >= 45


@pytest.mark.parametrize("style", STYLES)
def test_uploads_follow_within_a_minute_except_offline_devices_hours_later(style):
    last_message_time = {id(batch): at for batch, _, at in default_messages(style)}
    lags = [(batch, batch.received_at - last_message_time[id(batch)]) for batch in default_stream(style)]
    assert sum(lag < timedelta(minutes=1) for _, lag in lags) / len(lags) > 0.9
    assert sum(lag >= timedelta(hours=1) for _, lag in lags) >= 10
    for batch, lag in lags:
        if lag > timedelta(minutes=3):
            assert (batch.received_at.date() - last_message_time[id(batch)].date()).days <= 1


@pytest.mark.parametrize("style", STYLES)
def test_devices_log_in_mid_session_and_some_never_do(style):
    logins = never = 0
    for items in default_timelines(style).values():
        identified_at = next((at for at, m in items if m["type"] == "identify"), None)
        if all(m["userId"] is None for _, m in items):
            never += 1
        if identified_at is None:
            continue
        before = [m for at, m in items if at < identified_at - timedelta(seconds=5)]
        after = [m for at, m in items if at > identified_at + timedelta(seconds=5)]
        if before and all(m["userId"] is None for m in before):
            logins += 1
            assert after and all(m["userId"] for m in after)
    identifies = [m for _, m, _ in default_messages(style) if m["type"] == "identify"]
    assert all(m["userId"] and m["traits"]["email"] for m in identifies)
    assert logins >= 10
    assert never >= 15


@pytest.mark.parametrize("style", STYLES)
def test_a_few_group_and_alias_calls(style):
    messages = [m for _, m, _ in default_messages(style)]
    aliases = [m for m in messages if m["type"] == "alias"]
    groups = [m for m in messages if m["type"] == "group"]
    assert 1 <= len(aliases) <= 30 and all(m["previousId"] == m["anonymousId"] and m["userId"] for m in aliases)
    assert 1 <= len(groups) <= 30 and all(m["groupId"] and m["traits"]["name"] for m in groups)


def test_action_style_has_full_lifecycle():
    messages = [m for _, m, _ in default_messages("action")]
    events = Counter(event_name(m) for m in messages)
    assert all(events[name] > 0 for name in LIFECYCLE_RANK)
    opens = [m for m in messages if event_name(m) == "Application Opened"]
    assert {m["properties"]["from_background"] for m in opens} == {True, False}
    assert all({"version", "build"} <= m["properties"].keys() for m in opens)


def test_install_and_update_come_just_before_an_open():
    for items in default_timelines("action").values():
        for (at, message), (next_at, following) in zip(items, items[1:]):
            if event_name(message) in ("Application Installed", "Application Updated"):
                assert event_name(following) == "Application Opened"
                assert next_at - at <= timedelta(seconds=5)


def test_action_style_has_crashes_background_pushes_idle_and_midnight_spans():
    seen = observe_action()
    assert seen["spans"] >= 700
    assert seen["crashes"] >= 20
    assert seen["background_pushes"] >= 100
    assert seen["idle_gaps"] >= 20
    assert seen["midnight_spans"] >= 5
    assert seen["logins"] >= 10


def test_action_style_has_several_sessions_per_device_day_at_waking_hours():
    offsets = {zone: hours for zone, hours, _ in TIMEZONES}
    per_day, night = Counter(), 0
    for _, message, at in default_messages("action"):
        if event_name(message) == "Application Opened":
            local = at + timedelta(hours=offsets[message["context"]["timezone"]])
            per_day[message["anonymousId"], local.date()] += 1
            night += 2 <= local.hour < 6
    assert sum(per_day.values()) / len(per_day) >= 2.5
    assert night / sum(per_day.values()) < 0.05


def test_time_style_sends_no_lifecycle_events():
    events = {event_name(m) for _, m, _ in default_messages("time")}
    assert not {e for e in events if e and e.startswith("Application ")}
    assert {"Product Viewed", "Added To Cart", "Order Completed", PUSH} <= events


def test_time_style_has_pushes_idle_and_midnight_sessions():
    seen = observe_time()
    assert seen["pushes"] >= 100
    assert seen["idle_gaps"] >= 20
    assert seen["midnight_spans"] >= 3


def test_short_windows_and_bad_arguments():
    batches = demo_batches("tiny", style="action", end_day=END_DAY, days=1, devices=3)
    assert all(datetime(2025, 3, 9, tzinfo=timezone.utc) <= at < WINDOW_END for _, _, at in with_times(batches))
    with pytest.raises(ValueError):
        demo_batches("tiny", style="hybrid", end_day=END_DAY)
    with pytest.raises(ValueError):
        demo_batches("tiny", style="time", end_day=END_DAY, days=0)
