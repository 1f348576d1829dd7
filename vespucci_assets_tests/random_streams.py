"""Random multi-day Segment streams for the property tests, and the SPEC §4/§6 order and spans in Python.

One generator serves hypothesis (`DrawChooser`, so failing streams shrink) and the
deterministic tests (`RandomChooser(seed)`). Streams are clustered: gaps are drawn
from 0, 1 µs, exactly the timeout and one µs/second either side of it, short and long
idles, so every boundary of SPEC §5/§6 is hit, and equal timestamps are common.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

from vespucci_assets_tests.support import BASE_DAY, iso, message

OPENED = "Application Opened"
BACKGROUNDED = "Application Backgrounded"
INSTALLED = "Application Installed"
UPDATED = "Application Updated"
PUSH = "Push Notification Received"
PRE_OPEN = timedelta(seconds=5)
LIFECYCLE_RANK = {INSTALLED: 0, UPDATED: 0, OPENED: 1, BACKGROUNDED: 3}
MEMBER_TYPES = ("track", "screen", "page")


class RandomChooser:
    """Choices from a seeded `random.Random`: the same seed gives the same stream."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def choice(self, options):
        return options[self.rng.randrange(len(options))]

    def chance(self, percent: int) -> bool:
        return self.rng.randrange(100) < percent


class DrawChooser:
    """Choices drawn through hypothesis; shrinking goes towards the first option and towards 'no'."""

    def __init__(self, draw):
        from hypothesis import strategies as st

        self.draw, self.st = draw, st

    def integer(self, lo: int, hi: int) -> int:
        return self.draw(self.st.integers(lo, hi))

    def choice(self, options):
        return self.draw(self.st.sampled_from(options))

    def chance(self, percent: int) -> bool:
        return self.draw(self.st.integers(0, 99)) >= 100 - percent


@dataclass
class Case:
    """A generated stream with the project settings it is sessionized with."""

    messages: list[dict]
    days: list[date]
    timeout_minutes: int
    max_hours: int
    tracking_method: str = "auto"

    @property
    def timeout(self) -> timedelta:
        return timedelta(minutes=self.timeout_minutes)

    @property
    def max_duration(self) -> timedelta:
        return timedelta(hours=self.max_hours)

    def describe(self) -> str:
        lines = [f"timeout={self.timeout_minutes}min max={self.max_hours}h method={self.tracking_method} days={self.days[0]}..{self.days[-1]}"]
        lines += [timeline_line(m) for m in sorted(self.messages, key=raw_order_key)]
        return "\n".join(lines)


def generate_case(
    ch,
    *,
    n_days: int | None = None,
    max_devices: int = 3,
    max_visits: int = 6,
    timeout_choices=(5, 10, 15, 30),
    max_hours_choices=(1, 2, 3),
    methods=("auto", "time", "action"),
) -> Case:
    timeout_minutes = ch.choice(list(timeout_choices))
    max_hours = ch.choice(list(max_hours_choices))
    n_days = n_days or ch.choice([3, 4])
    method = ch.choice(list(methods))
    days = [BASE_DAY + timedelta(days=i) for i in range(n_days)]
    start = datetime(BASE_DAY.year, BASE_DAY.month, BASE_DAY.day, tzinfo=timezone.utc)
    end = start + timedelta(days=n_days)
    timeout = timedelta(minutes=timeout_minutes)
    messages: list[dict] = []
    for index in range(ch.integer(1, max_devices)):
        messages += _device_stream(ch, f"dev-{index}", start, end, timeout, max_visits)
    return Case(messages, days, timeout_minutes, max_hours, method)


def _gap(ch, timeout: timedelta, dense: bool = False) -> timedelta:
    """A gap between two messages; `dense` keeps it within the timeout (long runs that the max duration cuts)."""
    if dense:
        kind = ch.choice(["timeout", "near", "timeout-1us", "short", "zero"])
    else:
        kind = ch.choice(["short", "zero", "timeout", "timeout+1us", "timeout-1us", "timeout+1s", "under", "over", "1us"])
    if kind == "short":
        return timedelta(seconds=ch.integer(1, 120))
    if kind == "zero":
        return timedelta(0)
    if kind == "timeout":
        return timeout
    if kind == "timeout+1us":
        return timeout + timedelta(microseconds=1)
    if kind == "timeout-1us":
        return timeout - timedelta(microseconds=1)
    if kind == "timeout+1s":
        return timeout + timedelta(seconds=1)
    if kind == "near":
        return timeout - timedelta(seconds=ch.integer(0, int(timeout.total_seconds()) // 2))
    if kind == "under":
        return timedelta(seconds=ch.integer(1, int(timeout.total_seconds())))
    if kind == "over":
        return timedelta(seconds=ch.integer(int(timeout.total_seconds()) + 1, 3 * int(timeout.total_seconds())))
    return timedelta(microseconds=1)


def _device_stream(ch, device: str, start: datetime, end: datetime, timeout: timedelta, max_visits: int) -> list[dict]:
    user_only = ch.chance(15)
    user = f"user-{device}" if user_only else None
    out: list[dict] = []
    counter = iter(range(10_000))
    if ch.chance(50):  # start shortly before a midnight: sessions (and cuts) crossing days
        t = start + timedelta(days=ch.integer(0, 2), hours=23, minutes=ch.integer(0, 59))
    else:
        t = start + timedelta(minutes=ch.integer(0, 36 * 60))

    def emit(kind: str, when: datetime) -> None:
        if when >= end:
            return
        fields = {}
        if ch.chance(15):  # a later receivedAt: exercises the receivedAt tie-break
            fields["receivedAt"] = iso(when + timedelta(seconds=ch.integer(1, 3)))
        message_id = f"{device}-{ch.integer(0, 9)}{next(counter):03d}"
        out.append(message(kind, when, device=user if user_only else device, user=user, message_id=message_id,
                           anonymous=not user_only, **fields))

    for _ in range(ch.integer(1, max_visits)):
        if t >= end:
            break
        visit = ch.choice(["app", "web", "push", "identify"])
        if visit == "app":
            pre = ch.choice([None, INSTALLED, UPDATED])
            if pre:
                emit(pre, t)
                t += timedelta(seconds=ch.choice([1, 5, 0, 6, 60]))
            emit(OPENED, t)
            dense = ch.chance(40)
            n = ch.integer(9, 30) if ch.chance(40) else ch.integer(0, 8)
            for _ in range(n):
                t += _gap(ch, timeout, dense)
                kind = ch.choice(["screen:Home", "track:Tap", "screen:Detail", "page:Web", PUSH,
                                  "identify", OPENED, BACKGROUNDED, INSTALLED])
                if kind == "identify":
                    if not user_only:
                        user = f"user-{device}-{ch.integer(1, 2)}"
                    emit("identify", t)
                else:
                    emit(kind.removeprefix("track:"), t)
            ending = ch.choice(["backgrounded", "crash", "backgrounded+push"])
            t += _gap(ch, timeout)
            if ending != "crash":
                emit(BACKGROUNDED, t)
            if ending == "backgrounded+push":
                t += _gap(ch, timeout)
                emit(PUSH, t)
        elif visit == "web":
            dense = ch.chance(40)
            for _ in range(ch.integer(1, 20) if dense else ch.integer(1, 8)):
                emit(ch.choice(["page:Web", "screen:Home", "track:Tap"]).removeprefix("track:"), t)
                t += _gap(ch, timeout, dense)
        elif visit == "push":
            emit(PUSH, t)
        else:
            if not user_only:
                user = f"user-{device}-{ch.integer(1, 2)}"
            emit("identify", t)
        # Between visits: around the timeout, up to half a day, or to shortly before the next midnight.
        between = ch.choice(["gap", "idle", "midnight"])
        if between == "gap":
            t += _gap(ch, timeout)
        elif between == "idle":
            t += timedelta(minutes=ch.integer(1, 14 * 60), seconds=ch.integer(0, 59))
        else:
            midnight = datetime(t.year, t.month, t.day, tzinfo=timezone.utc) + timedelta(days=1)
            t = max(t, midnight - timedelta(minutes=ch.integer(1, 90)))
    return out


# --- the stream as SPEC §4/§6 sees it -------------------------------------------------------


def ts_of(m: dict, field_name: str = "timestamp") -> datetime:
    return datetime.fromisoformat(m[field_name].replace("Z", "+00:00"))


def device_key(m: dict) -> str:
    return m.get("anonymousId") or m["userId"]


def event_name(m: dict) -> str | None:
    return m.get("event") if m["type"] == "track" else None


def is_member(m: dict) -> bool:
    return m["type"] in MEMBER_TYPES


def raw_order_key(m: dict):
    """SPEC §4: timestamp, lifecycle rank, receivedAt, messageId."""
    return (ts_of(m), LIFECYCLE_RANK.get(event_name(m), 2), ts_of(m, "receivedAt"), m["messageId"])


def timeline_line(m: dict) -> str:
    what = event_name(m) or (f"{m['type']}:{m.get('name')}" if is_member(m) else m["type"])
    extra = f" receivedAt={m['receivedAt']}" if m["receivedAt"] != m["timestamp"] else ""
    return f"  {device_key(m)} {m['timestamp']} {m['messageId']} {what}{extra}"


@dataclass
class Model:
    """Per device: members in SPEC order, time chains, action spans (computed from the whole stream)."""

    members: dict[str, dict] = field(default_factory=dict)          # message_id -> message
    position: dict[str, int] = field(default_factory=dict)          # message_id -> index in its device order
    by_device: dict[str, list[dict]] = field(default_factory=lambda: defaultdict(list))
    span_of: dict[str, int | None] = field(default_factory=dict)    # message_id -> span number, None = orphan
    span_starts: set[str] = field(default_factory=set)
    long_devices: set[str] = field(default_factory=set)
    newest: datetime | None = None


def build_model(messages: list[dict], timeout: timedelta) -> Model:
    model = Model()
    firsts: dict[str, dict] = {}
    for m in messages:
        firsts.setdefault(m["messageId"], m)  # identical copies: the first one
    for m in firsts.values():
        if is_member(m):
            model.members[m["messageId"]] = m
            model.by_device[device_key(m)].append(m)
    for device, items in model.by_device.items():
        items.sort(key=raw_order_key)
        for i, m in enumerate(items):
            model.position[m["messageId"]] = i
        _spans(model, items)
        if _touches_three_days(_runs(items, lambda a, b: ts_of(b) - ts_of(a) <= timeout)) or _touches_three_days(
            _span_runs(model, items)
        ):
            model.long_devices.add(device)
    return model


def _spans(model: Model, items: list[dict]) -> None:
    """SPEC §6: Opened (or Installed/Updated at most 5 s before it, nothing between) starts a span;
    Backgrounded ends it and belongs to it; everything outside a span is an orphan."""
    span, in_span, previous_pre = 0, False, False
    for i, m in enumerate(items):
        name = event_name(m)
        nxt = items[i + 1] if i + 1 < len(items) else None
        is_pre = (
            name in (INSTALLED, UPDATED)
            and nxt is not None
            and event_name(nxt) == OPENED
            and ts_of(nxt) - ts_of(m) <= PRE_OPEN
        )
        if is_pre or (name == OPENED and not previous_pre):
            span += 1
            in_span = True
            model.span_starts.add(m["messageId"])
        model.span_of[m["messageId"]] = span if in_span else None
        if in_span and name == BACKGROUNDED:
            in_span = False
        previous_pre = is_pre


def _runs(items: list[dict], joined) -> list[list[dict]]:
    runs: list[list[dict]] = []
    for m in items:
        if runs and joined(runs[-1][-1], m):
            runs[-1].append(m)
        else:
            runs.append([m])
    return runs


def _span_runs(model: Model, items: list[dict]) -> list[list[dict]]:
    runs: dict[int, list[dict]] = defaultdict(list)
    for m in items:
        if model.span_of[m["messageId"]] is not None:
            runs[model.span_of[m["messageId"]]].append(m)
    return list(runs.values())


def _touches_three_days(runs: list[list[dict]]) -> bool:
    """A run from day D-1 into D+1: the one case SPEC §7 lets a window see only part of (long activity)."""
    return any((ts_of(r[-1]).date() - ts_of(r[0]).date()).days >= 2 for r in runs)


def newest_in_window(messages: list[dict], day: date) -> datetime:
    """Newest timestamp of any message (members or not) with event day in day-1..day+1."""
    return max(ts_of(m) for m in messages if abs((ts_of(m).date() - day).days) <= 1)
