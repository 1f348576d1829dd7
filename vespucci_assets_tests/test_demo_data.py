"""The demo stream is deterministic and contains every kind of untidy traffic it promises."""

from __future__ import annotations

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
STYLES = ("action", "time")


@lru_cache(maxsize=None)
def default_stream(style: str) -> tuple[DemoBatch, ...]:
    return tuple(demo_batches(f"demo-{style}", style=style, end_day=END_DAY))


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def corrected(batch: DemoBatch, message: dict) -> datetime:
    return batch.received_at - (ts(batch.envelope["sentAt"]) - ts(message["timestamp"]))


def event_name(message: dict) -> str | None:
    return message.get("event") if message["type"] == "track" else None


def timelines(batches) -> dict[str, list[tuple[datetime, dict]]]:
    """Per device, first copy of each message, in SPEC section 4 order (corrected time)."""
    seen: set[str] = set()
    by_device: dict[str, list[tuple[datetime, dict]]] = defaultdict(list)
    for batch in batches:
        for message in batch.messages:
            if message["messageId"] not in seen:
                seen.add(message["messageId"])
                by_device[message["anonymousId"]].append((corrected(batch, message), message))
    for items in by_device.values():
        items.sort(key=lambda item: (item[0], LIFECYCLE_RANK.get(event_name(item[1]), 2), item[1]["messageId"]))
    return by_device


def members(items):
    return [(at, m) for at, m in items if m["type"] in ("track", "screen", "page")]


def foreground_spans(items):
    """Opened..Backgrounded spans, closed early by a crash; yields (span, ended_by_crash)."""
    span = None
    for at, message in members(items):
        name = event_name(message)
        if name == "Application Opened":
            if span:
                yield span, True
            span = [(at, message)]
        elif span is not None:
            span.append((at, message))
            if name == "Application Backgrounded":
                yield span, False
                span = None


def observe_action(batches) -> Counter:
    seen = Counter()
    for items in timelines(batches).values():
        identified_at = [at for at, m in items if m["type"] == "identify"]
        for span, crashed in foreground_spans(items):
            seen["spans"] += 1
            seen["crashes"] += crashed
            seen["midnight_spans"] += span[0][0].date() != span[-1][0].date()
            seen["idle_gaps"] += sum(b[0] - a[0] > IDLE for a, b in zip(span, span[1:]))
            seen["logins"] += sum(span[0][0] < at < span[-1][0] for at in identified_at)
        state = "before"
        for at, message in members(items):
            name = event_name(message)
            if name == "Application Opened":
                state = "foreground"
            elif name == "Application Backgrounded":
                state = "background"
            elif name == "Push Notification Received" and state == "background":
                seen["background_pushes"] += 1
    return seen


def observe_time(batches) -> Counter:
    """Without lifecycle events a journey starts at the Home screen; a long gap before any
    other screen or track (not a push) is idle time in the foreground."""
    seen = Counter()
    for items in timelines(batches).values():
        tracked = [(at, m) for at, m in members(items) if event_name(m) != "Push Notification Received"]
        for (a, _), (b, later) in zip(tracked, tracked[1:]):
            seen["idle_gaps"] += b - a > IDLE and later.get("name") != "Home"
            seen["midnight_spans"] += b - a <= SESSION_TIMEOUT and a.date() != b.date()
        seen["pushes"] += sum(event_name(m) == "Push Notification Received" for _, m in items)
    return seen


def all_messages(batches):
    return [(batch, message) for batch in batches for message in batch.messages]


def duplicated_batches(batches) -> list[list[DemoBatch]]:
    copies = defaultdict(list)
    for batch in batches:
        copies[tuple(m["messageId"] for m in batch.messages)].append(batch)
    return [group for group in copies.values() if len(group) > 1]


def device_skews(batches) -> dict[str, timedelta]:
    skews: dict[str, timedelta] = {}
    for batch in batches:
        skews[batch.messages[0]["anonymousId"]] = ts(batch.envelope["sentAt"]) - batch.received_at
    return skews


def test_same_arguments_give_identical_output():
    again = demo_batches("demo-action", style="action", end_day=END_DAY)
    assert again == list(default_stream("action"))
    assert demo_batches("x", style="time", end_day=END_DAY, devices=5, seed=8) != demo_batches(
        "x", style="time", end_day=END_DAY, devices=5, seed=9)


def test_projects_get_their_own_devices():
    ids = [{m["anonymousId"] for _, m in all_messages(demo_batches(p, style="action", end_day=END_DAY, devices=5))}
           for p in ("shop-a", "shop-b")]
    assert not ids[0] & ids[1]


@pytest.mark.parametrize("style", STYLES)
def test_batches_look_like_sdk_uploads(style):
    batches = default_stream(style)
    assert [b.received_at for b in batches] == sorted(b.received_at for b in batches)
    for batch in batches:
        assert batch.received_at.tzinfo is not None and batch.received_at.utcoffset() == timedelta(0)
        assert 1 <= len(batch.messages) <= 20
        assert batch.envelope["sentAt"].endswith("Z")
        assert batch.envelope["context"]["library"]["name"] in ("analytics-swift", "analytics-kotlin")
        for message in batch.messages:
            assert {"type", "messageId", "anonymousId", "userId", "timestamp", "context"} <= message.keys()
            assert "receivedAt" not in message and "sentAt" not in message
            assert uuid.UUID(message["messageId"]).version == 4
            assert message["timestamp"].endswith("Z") and ts(message["timestamp"]) <= ts(batch.envelope["sentAt"])
            context = message["context"]
            assert {"app", "device", "os", "library"} <= context.keys()
            assert {"name", "version", "build"} <= context["app"].keys()
            assert {"id", "model"} <= context["device"].keys()
            if message["type"] == "track":
                assert message["event"]
            if message["type"] == "screen":
                assert message["name"]


@pytest.mark.parametrize("style", STYLES)
def test_each_device_has_one_stable_identity(style):
    devices = defaultdict(set)
    for _, message in all_messages(default_stream(style)):
        devices[message["anonymousId"]].add(message["context"]["device"]["id"])
    assert len(devices) == 60
    assert all(len(ids) == 1 for ids in devices.values())


@pytest.mark.parametrize("style", STYLES)
def test_corrected_time_lies_in_the_requested_days(style):
    for batch, message in all_messages(default_stream(style)):
        assert WINDOW_START <= corrected(batch, message) < WINDOW_END
    assert max(b.received_at for b in default_stream(style)) < WINDOW_END


@pytest.mark.parametrize("style", STYLES)
def test_corrected_time_uses_the_whole_window(style):
    days = Counter(corrected(b, m).date() for b, m in all_messages(default_stream(style)))
    assert sorted(days) == [END_DAY - timedelta(days=n) for n in range(6, -1, -1)]


@pytest.mark.parametrize("style", STYLES)
def test_some_batches_are_delivered_twice(style):
    groups = duplicated_batches(default_stream(style))
    assert len(groups) >= 5
    for first, retry in groups:
        assert retry.messages == first.messages
        assert retry.received_at > first.received_at
        assert ts(retry.envelope["sentAt"]) > ts(first.envelope["sentAt"])
    message_ids = Counter(m["messageId"] for b in default_stream(style) for m in b.messages)
    assert sum(n - 1 for n in message_ids.values()) == sum(len(g[0].messages) for g in groups)


@pytest.mark.parametrize("style", STYLES)
def test_some_devices_have_clocks_hours_off(style):
    skews = device_skews(default_stream(style)).values()
    assert sum(abs(s) >= timedelta(hours=1) for s in skews) >= 3
    assert sum(abs(s) < timedelta(seconds=10) for s in skews) >= 40


@pytest.mark.parametrize("style", STYLES)
def test_some_offline_devices_upload_hours_later(style):
    late = []
    for batch in default_stream(style):
        lag = batch.received_at - corrected(batch, batch.messages[-1])
        assert lag < timedelta(hours=36)
        if lag >= timedelta(hours=1):
            late.append(batch)
    assert len(late) >= 3
    assert all((b.received_at.date() - corrected(b, b.messages[0]).date()).days <= 1 for b in late)


@pytest.mark.parametrize("style", STYLES)
def test_devices_log_in_mid_session_and_some_never_do(style):
    by_device = timelines(default_stream(style))
    logins = 0
    for items in by_device.values():
        identify = next((at for at, m in items if m["type"] == "identify"), None)
        if identify is None:
            continue
        before = [m for at, m in items if at < identify - timedelta(seconds=5)]
        after = [m for at, m in items if at > identify + timedelta(seconds=5)]
        if before and all(m["userId"] is None for m in before):
            logins += 1
            assert after and all(m["userId"] for m in after)
    identifies = [m for _, m in all_messages(default_stream(style)) if m["type"] == "identify"]
    assert all(m["userId"] and m["traits"].get("email") for m in identifies)
    assert logins >= 5
    assert sum(all(m["userId"] is None for _, m in items) for items in by_device.values()) >= 10


@pytest.mark.parametrize("style", STYLES)
def test_a_few_group_and_alias_calls(style):
    messages = [m for _, m in all_messages(default_stream(style))]
    aliases = [m for m in messages if m["type"] == "alias"]
    groups = [m for m in messages if m["type"] == "group"]
    assert aliases and all(m["previousId"] == m["anonymousId"] and m["userId"] for m in aliases)
    assert groups and all(m["groupId"] and m["traits"]["name"] for m in groups)


def test_action_style_has_full_lifecycle():
    events = Counter(event_name(m) for _, m in all_messages(default_stream("action")))
    for name in LIFECYCLE_RANK:
        assert events[name] > 0, name
    opens = [m for _, m in all_messages(default_stream("action")) if event_name(m) == "Application Opened"]
    assert {m["properties"]["from_background"] for m in opens} == {True, False}
    assert all({"version", "build"} <= m["properties"].keys() for m in opens)


def test_install_and_update_come_just_before_an_open():
    for items in timelines(default_stream("action")).values():
        for (at, message), (next_at, following) in zip(items, items[1:]):
            if event_name(message) in ("Application Installed", "Application Updated"):
                assert event_name(following) == "Application Opened"
                assert next_at - at <= timedelta(seconds=5)


def test_action_style_has_crashes_background_pushes_idle_and_midnight_spans():
    seen = observe_action(default_stream("action"))
    assert seen["spans"] >= 500
    assert seen["crashes"] >= 10
    assert seen["background_pushes"] >= 50
    assert seen["idle_gaps"] >= 10
    assert seen["midnight_spans"] >= 3
    assert seen["logins"] >= 5


def test_action_style_has_several_sessions_per_device_day_at_waking_hours():
    offsets = {zone: hours for zone, hours, _ in TIMEZONES}
    per_day, night = Counter(), 0
    opens = [m for _, m in all_messages(default_stream("action")) if event_name(m) == "Application Opened"]
    for batch, message in all_messages(default_stream("action")):
        if event_name(message) == "Application Opened":
            local = corrected(batch, message) + timedelta(hours=offsets[message["context"]["timezone"]])
            per_day[message["anonymousId"], local.date()] += 1
            night += 2 <= local.hour < 6
    assert sum(per_day.values()) / len(per_day) >= 2.5
    assert night / len(opens) < 0.05


def test_time_style_sends_no_lifecycle_events():
    events = {event_name(m) for _, m in all_messages(default_stream("time"))}
    assert not {e for e in events if e and e.startswith("Application ")}
    assert {"Product Viewed", "Added To Cart", "Order Completed"} <= events


def test_time_style_has_pushes_idle_and_midnight_sessions():
    seen = observe_time(default_stream("time"))
    assert seen["pushes"] >= 50
    assert seen["idle_gaps"] >= 10
    assert seen["midnight_spans"] >= 3


def test_short_windows_and_bad_styles():
    batches = demo_batches("tiny", style="action", end_day=END_DAY, days=1, devices=3)
    day_start = datetime(2025, 3, 9, tzinfo=timezone.utc)
    assert all(day_start <= corrected(b, m) < WINDOW_END for b, m in all_messages(batches))
    with pytest.raises(ValueError):
        demo_batches("tiny", style="hybrid", end_day=END_DAY)
