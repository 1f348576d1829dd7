"""One test per rule of SPEC §3-§8, each on a hand-built message sequence with its sessions written out.

Every test runs the real pipeline (capture store -> events -> session_events -> session
tables -> sessions view) on a tiny DuckDB under tmp_path. Message ids are spelled out so
the expected member lists read like the scenario.
"""

from __future__ import annotations

import hashlib
import random
from datetime import date, datetime, timedelta
from types import SimpleNamespace

import pytest

from vespucci_assets.capture import EVENTS
from vespucci_assets.segment import normalize
from vespucci_assets_tests.support import BASE_DAY, Pipeline, at, iso, message, orphans, project, session_rows

D0 = BASE_DAY
D1 = BASE_DAY + timedelta(days=1)
D2 = BASE_DAY + timedelta(days=2)

OPENED = "Application Opened"
BACKGROUNDED = "Application Backgrounded"
INSTALLED = "Application Installed"
UPDATED = "Application Updated"
PUSH = "Push Notification Received"


# --------------------------------------------------------------------------- helpers


def m(kind: str, hhmmss: str, mid: str, day: int = 0, **fields) -> dict:
    """A Segment-delivered message with an explicit messageId at hh:mm:ss on D0 + day."""
    return message(kind, at(hhmmss, day), message_id=mid, **fields)


def t(hhmmss: str, day: int = 0) -> datetime:
    """The naive UTC timestamp DuckDB returns for hh:mm:ss on D0 + day."""
    return at(hhmmss, day).replace(tzinfo=None)


def md5_session_id(device_key: str, method: str, first_message_id: str, project_id: str = "acme") -> str:
    return hashlib.md5(f"{project_id}|{device_key}|{method}|{first_message_id}".encode()).hexdigest()


@pytest.fixture
def pipe(tmp_path):
    pipeline = Pipeline(tmp_path / "p")
    yield pipeline
    pipeline.close()


def run(pipeline: Pipeline, messages: list[dict], days: list[date] | None = None, **settings) -> Pipeline:
    """Capture `messages` (as Segment delivered them) and build every table for their event days."""
    pipeline.capture("acme", messages, received_at=at("12:00"))
    event_days = sorted({datetime.fromisoformat(x["timestamp"].replace("Z", "+00:00")).date() for x in messages})
    pipeline.build(project(**settings), days or event_days)
    return pipeline


def sessions(pipeline: Pipeline, method: str, *fields: str) -> list[dict]:
    """`method`'s sessions (by device, then start): members in order, end_reason, session_date and `fields`."""
    return [
        {"members": r["members"], "end_reason": r["end_reason"], "session_date": r["session_date"], **{f: r[f] for f in fields}}
        for r in session_rows(pipeline.conn, method)
    ]


def members(pipeline: Pipeline, method: str) -> list[list[str]]:
    return [s["members"] for s in sessions(pipeline, method)]


def table(pipeline: Pipeline, sql: str) -> list[tuple]:
    return pipeline.rows(sql)


# --------------------------------------------------------------------------- §4 ordering


def test_equal_timestamps_are_ordered_by_lifecycle_rank(pipe):
    # All at 10:00:00, delivered in the "wrong" order, with messageIds and receivedAt that
    # would order them backwards: only the lifecycle rank can put them right.
    run(pipe, [
        m(BACKGROUNDED, "10:00:00", "a-bg", receivedAt=iso(at("10:00:00"))),
        m("screen:Home", "10:00:00", "b-home", receivedAt=iso(at("10:00:01"))),
        m(OPENED, "10:00:00", "c-open", receivedAt=iso(at("10:00:02"))),
        m(INSTALLED, "10:00:00", "d-install", receivedAt=iso(at("10:00:03"))),
    ])
    assert sessions(pipe, "action", "first_screen") == [
        {"members": ["d-install", "c-open", "b-home", "a-bg"], "end_reason": "backgrounded", "session_date": D0,
         "first_screen": "Home"},
    ]
    assert members(pipe, "time") == [["d-install", "c-open", "b-home", "a-bg"]]


def test_equal_timestamp_and_rank_are_ordered_by_received_at_then_message_id(pipe):
    run(pipe, [
        m("screen:Third", "10:00:00", "y", receivedAt=iso(at("10:00:05"))),
        m("screen:Second", "10:00:00", "x", receivedAt=iso(at("10:00:05"))),
        m("screen:First", "10:00:00", "z", receivedAt=iso(at("10:00:01"))),
    ])
    assert sessions(pipe, "time", "first_screen", "last_screen", "screen_count") == [
        {"members": ["z", "x", "y"], "end_reason": "open", "session_date": D0,
         "first_screen": "First", "last_screen": "Third", "screen_count": 3},
    ]


def test_results_are_deterministic_whatever_the_delivery_order(tmp_path):
    stream = [
        m(UPDATED, "10:00:00", "u"), m(OPENED, "10:00:00", "o1"), m("screen:Home", "10:00:00", "h"),
        m("Tap", "10:00:00", "tap"), m(BACKGROUNDED, "10:00:00", "b1"),
        m(OPENED, "10:40:00", "o2"), m("screen:Home", "10:40:00", "h2"),
    ]
    results = []
    for seed in range(3):
        shuffled = stream[:]
        random.Random(seed).shuffle(shuffled)
        pipeline = Pipeline(tmp_path / f"run{seed}")
        try:
            run(pipeline, shuffled)
            results.append((session_rows(pipeline.conn, "time"), session_rows(pipeline.conn, "action")))
        finally:
            pipeline.close()
    assert results[0] == results[1] == results[2]
    time_rows, action_rows = results[0]
    assert [r["members"] for r in time_rows] == [["u", "o1", "h", "tap", "b1"], ["o2", "h2"]]
    assert [(r["members"], r["end_reason"]) for r in action_rows] == [
        (["u", "o1", "h", "tap", "b1"], "backgrounded"),
        (["o2", "h2"], "no_end"),
    ]


# --------------------------------------------------------------------------- §5 time-based


def test_time_gap_equal_to_timeout_stays_and_one_second_more_splits(pipe):
    run(pipe, [
        m("screen:A", "10:00:00", "a"),
        m("screen:B", "10:30:00", "b"),   # gap 30:00 = timeout: same session
        m("screen:C", "11:00:00", "c"),   # gap 30:00 again
        m("screen:D", "11:30:01", "d"),   # gap 30:01 > timeout: new session
    ], timeout_minutes=30)
    assert sessions(pipe, "time", "started_at", "ended_at", "duration_s", "event_count", "first_screen", "last_screen") == [
        {"members": ["a", "b", "c"], "end_reason": "inactivity", "session_date": D0,
         "started_at": t("10:00:00"), "ended_at": t("11:00:00"), "duration_s": 3600.0, "event_count": 3,
         "first_screen": "A", "last_screen": "C"},
        {"members": ["d"], "end_reason": "open", "session_date": D0,
         "started_at": t("11:30:01"), "ended_at": t("11:30:01"), "duration_s": 0.0, "event_count": 1,
         "first_screen": "D", "last_screen": "D"},
    ]


def test_time_custom_timeout_of_five_minutes(pipe):
    run(pipe, [
        m("screen:A", "10:00:00", "a"),
        m("screen:B", "10:05:00", "b"),   # 5:00: stays
        m("screen:C", "10:10:01", "c"),   # 5:01: splits
        m("Tap", "10:15:01", "d"),        # 5:00: stays
        m("screen:E", "10:25:00", "e"),   # 9:59: splits
    ], timeout_minutes=5)
    assert sessions(pipe, "time", "duration_s", "screen_count", "track_count") == [
        {"members": ["a", "b"], "end_reason": "inactivity", "session_date": D0, "duration_s": 300.0, "screen_count": 2, "track_count": 0},
        {"members": ["c", "d"], "end_reason": "inactivity", "session_date": D0, "duration_s": 300.0, "screen_count": 1, "track_count": 1},
        {"members": ["e"], "end_reason": "open", "session_date": D0, "duration_s": 0.0, "screen_count": 1, "track_count": 0},
    ]


def test_time_max_duration_cut(pipe):
    # Active every 10 minutes from 10:00 to 11:30 with a 1 h max: 11:00 (exactly first + max)
    # stays, 11:10 starts a new session; the chain's gaps never exceed the timeout.
    stream = [m("screen:S", f"{10 + i // 6}:{(i % 6) * 10:02d}:00", f"s{i:02d}") for i in range(10)]
    stream.append(m("screen:Other", "13:00:00", "later", device="dev-2"))  # newest data: makes the tail inactive
    run(pipe, stream, max_hours=1)
    assert sessions(pipe, "time", "started_at", "ended_at", "duration_s") == [
        {"members": ["s00", "s01", "s02", "s03", "s04", "s05", "s06"], "end_reason": "max_duration", "session_date": D0,
         "started_at": t("10:00:00"), "ended_at": t("11:00:00"), "duration_s": 3600.0},
        {"members": ["s07", "s08", "s09"], "end_reason": "inactivity", "session_date": D0,
         "started_at": t("11:10:00"), "ended_at": t("11:30:00"), "duration_s": 1200.0},
        {"members": ["later"], "end_reason": "open", "session_date": D0,
         "started_at": t("13:00:00"), "ended_at": t("13:00:00"), "duration_s": 0.0},
    ]


@pytest.mark.parametrize(
    ("newest", "expected"),
    [
        ("10:40:00", "open"),        # last member 10:10 is exactly one timeout before the newest data
        ("10:40:01", "inactivity"),  # one second further: the session can no longer grow
    ],
)
def test_time_end_reason_open_or_inactivity_against_newest_data_of_any_device(pipe, newest, expected):
    # The newest data is an identify call of another device: it counts, though it is no member.
    run(pipe, [
        m("screen:A", "10:00:00", "a"),
        m("screen:B", "10:10:00", "b"),
        m("identify", newest, "other-identify", device="dev-2", user="someone"),
    ])
    assert sessions(pipe, "time", "device_key") == [
        {"members": ["a", "b"], "end_reason": expected, "session_date": D0, "device_key": "dev-1"},
    ]


def test_sessions_never_span_two_device_keys(pipe):
    run(pipe, [
        m("screen:A", "10:00:00", "a1", device="dev-1"),
        m("screen:A", "10:01:00", "b1", device="dev-2"),
        m("screen:B", "10:02:00", "a2", device="dev-1", user="u-1"),
        m("screen:B", "10:03:00", "b2", device="dev-2"),
        # No anonymousId: the device key is the userId, a third device though the same user.
        m("screen:C", "10:04:00", "u1", user="u-1", anonymous=False),
        m("screen:C", "10:05:00", "a3", device="dev-1"),
    ])
    assert sessions(pipe, "time", "device_key", "anonymous_id", "user_id") == [
        {"members": ["a1", "a2", "a3"], "end_reason": "open", "session_date": D0,
         "device_key": "dev-1", "anonymous_id": "dev-1", "user_id": "u-1"},
        {"members": ["b1", "b2"], "end_reason": "open", "session_date": D0,
         "device_key": "dev-2", "anonymous_id": "dev-2", "user_id": None},
        {"members": ["u1"], "end_reason": "open", "session_date": D0,
         "device_key": "u-1", "anonymous_id": None, "user_id": "u-1"},
    ]


def test_identify_group_alias_are_never_members(pipe):
    # 20-minute steps: were the identity calls members they would bridge the 80-minute gap.
    run(pipe, [
        m(OPENED, "10:00:00", "open"),
        m("identify", "10:20:00", "id", user="u-1"),
        m("group", "10:40:00", "grp", user="u-1", groupId="g-1"),
        m("alias", "11:00:00", "ali", user="u-1", previousId="dev-1"),
        m(BACKGROUNDED, "11:20:00", "bg"),
    ])
    assert sessions(pipe, "time", "event_count") == [
        {"members": ["open"], "end_reason": "inactivity", "session_date": D0, "event_count": 1},
        {"members": ["bg"], "end_reason": "open", "session_date": D0, "event_count": 1},
    ]
    assert sessions(pipe, "action", "event_count", "user_id") == [
        {"members": ["open", "bg"], "end_reason": "backgrounded", "session_date": D0, "event_count": 2, "user_id": "u-1"},
    ]
    assert orphans(pipe.conn) == []


# --------------------------------------------------------------------------- §6 action-based


def test_action_opened_always_starts_a_session_after_a_crash(pipe):
    run(pipe, [
        m(OPENED, "10:00:00", "o1"),
        m("screen:Home", "10:01:00", "s1"),
        m(OPENED, "10:02:00", "o2"),          # crash: no Backgrounded before it
        m("screen:Cart", "10:03:00", "s2"),
        m(BACKGROUNDED, "10:04:00", "b"),
    ])
    assert sessions(pipe, "action", "started_at", "ended_at", "duration_s", "first_screen") == [
        {"members": ["o1", "s1"], "end_reason": "next_open", "session_date": D0,
         "started_at": t("10:00:00"), "ended_at": t("10:01:00"), "duration_s": 60.0, "first_screen": "Home"},
        {"members": ["o2", "s2", "b"], "end_reason": "backgrounded", "session_date": D0,
         "started_at": t("10:02:00"), "ended_at": t("10:04:00"), "duration_s": 120.0, "first_screen": "Cart"},
    ]


def test_action_opened_right_after_opened_starts_a_session(pipe):
    run(pipe, [m(OPENED, "10:00:00", "o1"), m(OPENED, "10:00:01", "o2"), m(BACKGROUNDED, "10:00:02", "bg")])
    assert sessions(pipe, "action", "duration_s") == [
        {"members": ["o1"], "end_reason": "next_open", "session_date": D0, "duration_s": 0.0},
        {"members": ["o2", "bg"], "end_reason": "backgrounded", "session_date": D0, "duration_s": 1.0},
    ]


def test_action_backgrounded_belongs_to_the_session_it_ends(pipe):
    run(pipe, [
        m(OPENED, "10:00:00", "o"),
        m("screen:Home", "10:01:00", "home"),
        m("Add To Cart", "10:02:00", "add"),
        m("screen:Cart", "10:03:00", "cart"),
        m(BACKGROUNDED, "10:04:00", "bg"),
        m("Add To Cart", "10:05:00", "after"),  # after the Backgrounded: no longer in the session
    ])
    assert sessions(pipe, "action", "ended_at", "duration_s", "event_count", "screen_count", "track_count",
                    "first_screen", "last_screen") == [
        {"members": ["o", "home", "add", "cart", "bg"], "end_reason": "backgrounded", "session_date": D0,
         "ended_at": t("10:04:00"), "duration_s": 240.0, "event_count": 5, "screen_count": 2, "track_count": 3,
         "first_screen": "Home", "last_screen": "Cart"},
    ]
    assert orphans(pipe.conn) == ["after"]


@pytest.mark.parametrize("kind", [INSTALLED, UPDATED])
def test_action_installed_or_updated_at_most_5s_before_opened_joins_its_session(pipe, kind):
    run(pipe, [
        m(kind, "09:59:55", "pre"),            # exactly 5 s before the Opened
        m(OPENED, "10:00:00", "o"),
        m("screen:Home", "10:01:00", "home"),
        m(BACKGROUNDED, "10:02:00", "bg"),
    ])
    assert sessions(pipe, "action", "started_at", "duration_s", "track_count") == [
        {"members": ["pre", "o", "home", "bg"], "end_reason": "backgrounded", "session_date": D0,
         "started_at": t("09:59:55"), "duration_s": 125.0, "track_count": 3},
    ]
    assert orphans(pipe.conn) == []


def test_action_installed_6s_before_opened_is_an_orphan(pipe):
    run(pipe, [
        m(INSTALLED, "09:59:54", "pre"),
        m(OPENED, "10:00:00", "o"),
        m(BACKGROUNDED, "10:02:00", "bg"),
    ])
    assert sessions(pipe, "action", "started_at") == [
        {"members": ["o", "bg"], "end_reason": "backgrounded", "session_date": D0, "started_at": t("10:00:00")},
    ]
    assert orphans(pipe.conn) == ["pre"]


def test_action_installed_with_a_member_before_opened_is_an_orphan(pipe):
    run(pipe, [
        m(INSTALLED, "09:59:57", "pre"),
        m("screen:Splash", "09:59:58", "splash"),  # a member between: the Installed no longer joins
        m(OPENED, "10:00:00", "o"),
        m(BACKGROUNDED, "10:02:00", "bg"),
    ])
    assert members(pipe, "action") == [["o", "bg"]]
    assert orphans(pipe.conn) == ["pre", "splash"]


@pytest.mark.parametrize(
    ("installed_at", "expected"),
    [
        # 6 s before the Opened: stays in the running span (which the Opened then interrupts).
        ("09:59:54", [(["o1", "s", "pre"], "next_open"), (["o2", "bg"], "backgrounded")]),
        # 5 s before: moves to the Opened's session.
        ("09:59:55", [(["o1", "s"], "next_open"), (["pre", "o2", "bg"], "backgrounded")]),
    ],
)
def test_action_updated_inside_a_running_span(pipe, installed_at, expected):
    run(pipe, [
        m(OPENED, "09:00:00", "o1"),
        m("screen:Home", "09:30:00", "s"),
        m(UPDATED, installed_at, "pre"),
        m(OPENED, "10:00:00", "o2"),
        m(BACKGROUNDED, "10:01:00", "bg"),
    ])
    assert [(s["members"], s["end_reason"]) for s in sessions(pipe, "action")] == expected
    assert orphans(pipe.conn) == []


def test_action_orphans_are_in_no_session_and_counted(pipe):
    run(pipe, [
        m(PUSH, "09:00:00", "push-before"),        # before the first Opened
        m(OPENED, "10:00:00", "o1"),
        m("screen:Home", "10:01:00", "home"),
        m(BACKGROUNDED, "10:02:00", "bg1"),
        m(PUSH, "10:10:00", "push-bg"),            # in background
        m(BACKGROUNDED, "10:11:00", "bg-again"),   # a second Backgrounded
        m(OPENED, "10:20:00", "o2"),
        m(BACKGROUNDED, "10:21:00", "bg2"),
    ])
    assert sessions(pipe, "action") == [
        {"members": ["o1", "home", "bg1"], "end_reason": "backgrounded", "session_date": D0},
        {"members": ["o2", "bg2"], "end_reason": "backgrounded", "session_date": D0},
    ]
    assert orphans(pipe.conn) == ["push-before", "push-bg", "bg-again"]
    assert table(pipe, "SELECT message_id, event, event_date FROM orphan_events ORDER BY timestamp") == [
        ("push-before", PUSH, D0), ("push-bg", PUSH, D0), ("bg-again", BACKGROUNDED, D0),
    ]
    assert table(pipe, "SELECT tracking_method, orphan_events FROM session_metrics_daily ORDER BY 1") == [
        ("action", 3), ("time", 0),
    ]
    # Time-based tracking has no orphans: every member is in exactly one session.
    assert members(pipe, "time") == [["push-before"], ["o1", "home", "bg1", "push-bg", "bg-again", "o2", "bg2"]]


def test_action_idle_inside_a_foreground_span_does_not_split_it(pipe):
    run(pipe, [
        m(OPENED, "10:00:00", "o"),
        m("screen:Home", "10:01:00", "home"),
        m("screen:Reader", "12:01:00", "reader"),  # 2 h idle in foreground, timeout 30 min
        m(BACKGROUNDED, "12:02:00", "bg"),
    ], timeout_minutes=30)
    assert sessions(pipe, "action", "duration_s") == [
        {"members": ["o", "home", "reader", "bg"], "end_reason": "backgrounded", "session_date": D0, "duration_s": 7320.0},
    ]
    assert members(pipe, "time") == [["o", "home"], ["reader", "bg"]]


def test_action_span_cut_at_max_duration_continues_in_a_session_without_opened(pipe):
    # Foreground from 10:00 with a member every 10 minutes, max 1 h.
    stream = [m(OPENED, "10:00:00", "o")]
    stream += [m("screen:S", f"{10 + i // 6}:{(i % 6) * 10:02d}:00", f"s{i:02d}") for i in range(1, 9)]  # 10:10..11:20
    stream.append(m(BACKGROUNDED, "11:25:00", "bg"))
    run(pipe, stream, max_hours=1)
    assert sessions(pipe, "action", "is_continuation", "started_at", "ended_at", "session_id") == [
        {"members": ["o", "s01", "s02", "s03", "s04", "s05", "s06"], "end_reason": "max_duration", "session_date": D0,
         "is_continuation": False, "started_at": t("10:00:00"), "ended_at": t("11:00:00"),
         "session_id": md5_session_id("dev-1", "action", "o")},
        {"members": ["s07", "s08", "bg"], "end_reason": "backgrounded", "session_date": D0,
         "is_continuation": True, "started_at": t("11:10:00"), "ended_at": t("11:25:00"),
         "session_id": md5_session_id("dev-1", "action", "s07")},
    ]


def test_action_session_without_end_seen_is_no_end(pipe):
    run(pipe, [
        m(OPENED, "10:00:00", "o"),
        m("screen:Home", "10:05:00", "home"),
        m("screen:Other", "18:00:00", "x", device="dev-2"),  # much newer data does not end it
    ])
    assert sessions(pipe, "action", "device_key") == [
        {"members": ["o", "home"], "end_reason": "no_end", "session_date": D0, "device_key": "dev-1"},
    ]
    assert orphans(pipe.conn) == ["x"]


# --------------------------------------------------------------------------- auto and fixed methods


def _foreground(day: int, prefix: str, extra_orphans: int) -> list[dict]:
    """4 members inside one span plus `extra_orphans` background pushes on D0 + day."""
    stream = [
        m(OPENED, "10:00:00", f"{prefix}-o", day),
        m("screen:Home", "10:01:00", f"{prefix}-home", day),
        m("Tap", "10:02:00", f"{prefix}-tap", day),
        m(BACKGROUNDED, "10:03:00", f"{prefix}-bg", day),
    ]
    stream += [m(PUSH, f"10:1{i}:00", f"{prefix}-push{i}", day) for i in range(extra_orphans)]
    return stream


def test_auto_chooses_action_at_80_percent_coverage_and_time_below(pipe):
    run(pipe, _foreground(0, "d0", 1) + _foreground(1, "d1", 2), tracking_method="auto")
    assert table(pipe, """SELECT session_date, members, members_in_spans, action_coverage, configured_method, chosen_method
                          FROM session_method_choice ORDER BY session_date""") == [
        (D0, 5, 4, 0.8, "auto", "action"),           # 4 / 5 = 80 %
        (D1, 6, 4, 4 / 6, "auto", "time"),           # 4 / 6 < 80 %
    ]
    chosen = table(pipe, "SELECT session_date, tracking_method, session_id, end_reason FROM sessions ORDER BY session_date, started_at")
    assert chosen == [
        (D0, "action", md5_session_id("dev-1", "action", "d0-o"), "backgrounded"),
        (D1, "time", md5_session_id("dev-1", "time", "d1-o"), "open"),
    ]
    assert [s["members"] for s in sessions(pipe, "time") if s["session_date"] == D1] == [
        ["d1-o", "d1-home", "d1-tap", "d1-bg", "d1-push0", "d1-push1"],
    ]
    assert table(pipe, "SELECT session_date, tracking_method, is_chosen_method FROM session_metrics_daily ORDER BY 1, 2") == [
        (D0, "action", True), (D0, "time", False), (D1, "action", False), (D1, "time", True),
    ]


@pytest.mark.parametrize(
    ("method", "stream", "expected_members"),
    [
        # Full action coverage, but the project says time.
        ("time", _foreground(0, "a", 0), [["a-o", "a-home", "a-tap", "a-bg"]]),
        # No span at all, but the project says action: no sessions, everything orphaned.
        ("action", [m("screen:Home", "10:00:00", "h1"), m("screen:Home", "10:01:00", "h2")], []),
    ],
)
def test_fixed_methods_always_use_their_method(pipe, method, stream, expected_members):
    run(pipe, stream, tracking_method=method)
    assert table(pipe, "SELECT configured_method, chosen_method FROM session_method_choice") == [(method, method)]
    rows = table(pipe, "SELECT tracking_method, session_id FROM sessions ORDER BY started_at")
    assert [r[0] for r in rows] == [method] * len(expected_members)
    assert [r[1] for r in rows] == [md5_session_id("dev-1", method, ms[0]) for ms in expected_members]
    assert members(pipe, method) == expected_members


# --------------------------------------------------------------------------- §7 partitions and ownership


MIDNIGHT = [
    m(OPENED, "23:50:00", "o"),
    m("screen:Home", "23:59:00", "home"),
    m("screen:Late", "00:05:00", "late", day=1),
    m(BACKGROUNDED, "00:20:00", "bg", day=1),
]


def test_session_crossing_midnight_belongs_to_its_start_day(pipe):
    run(pipe, MIDNIGHT)  # builds D0 and D1
    for method, end_reason in (("time", "open"), ("action", "backgrounded")):
        assert sessions(pipe, method, "started_at", "ended_at", "duration_s") == [
            {"members": ["o", "home", "late", "bg"], "end_reason": end_reason, "session_date": D0,
             "started_at": t("23:50:00"), "ended_at": t("00:20:00", 1), "duration_s": 1800.0},
        ]
    assert table(pipe, "SELECT tracking_method, message_id, event_date FROM session_events ORDER BY 1, seq") == [
        ("action", "o", D0), ("action", "home", D0), ("action", "late", D1), ("action", "bg", D1),
        ("time", "o", D0), ("time", "home", D0), ("time", "late", D1), ("time", "bg", D1),
    ]
    assert table(pipe, "SELECT session_date, count(*) FROM sessions GROUP BY 1") == [(D0, 1)]


def _snapshot(pipeline: Pipeline) -> dict[str, list[tuple]]:
    # ingested_ns is the capture clock: it differs between two captures of the same stream.
    return {
        name: pipeline.rows(f"SELECT * {'EXCLUDE (ingested_ns)' if name == 'events' else ''} FROM {name} ORDER BY ALL")
        for name in ("events", "session_events", "sessions_time_based", "sessions_action_based", "sessions",
                     "orphan_events", "session_method_choice", "session_metrics_daily")
    }


def test_session_id_is_the_stable_hash_and_rebuilding_changes_nothing(tmp_path):
    together = Pipeline(tmp_path / "together")
    apart = Pipeline(tmp_path / "apart")
    try:
        run(together, MIDNIGHT)
        assert [s["session_id"] for s in sessions(together, "time", "session_id")] == [md5_session_id("dev-1", "time", "o")]
        assert [s["session_id"] for s in sessions(together, "action", "session_id")] == [md5_session_id("dev-1", "action", "o")]
        before = _snapshot(together)
        together.build(project(), [D0])        # rebuild one partition
        together.build(project(), [D1, D0])    # and both again
        assert _snapshot(together) == before
        # Days built one at a time, later day first, give the very same rows.
        apart.capture("acme", MIDNIGHT, received_at=at("12:00"))
        apart.build(project(), [D1])
        apart.build(project(), [D0])
        assert _snapshot(apart) == before
    finally:
        together.close()
        apart.close()


def test_device_active_for_more_than_24h_is_cut_from_its_first_member_and_flagged(pipe):
    # A member every 20 minutes from D0 00:00 to D1 01:00, never a gap over the timeout.
    stream = [message("screen:Feed", at("00:00") + timedelta(minutes=20 * i), message_id=f"s{i:03d}") for i in range(76)]
    run(pipe, stream)  # builds D0 and D1 (default max duration: 24 h)
    assert sessions(pipe, "time", "long_activity", "started_at", "ended_at", "duration_s") == [
        {"members": [f"s{i:03d}" for i in range(73)], "end_reason": "max_duration", "session_date": D0,
         "long_activity": True, "started_at": t("00:00"), "ended_at": t("00:00", 1), "duration_s": 86400.0},
        {"members": ["s073", "s074", "s075"], "end_reason": "open", "session_date": D1,
         "long_activity": True, "started_at": t("00:20", 1), "ended_at": t("01:00", 1), "duration_s": 2400.0},
    ]
    assert table(pipe, """SELECT session_date, long_activity_sessions FROM session_metrics_daily
                          WHERE tracking_method = 'time' ORDER BY 1""") == [(D0, 1), (D1, 1)]



def test_an_installed_just_before_the_window_ends_is_judged_without_the_opened_beyond_it(tmp_path):
    # D0's window (D-1..D1) ends before the Opened that the Installed at D1 23:59:58 leads into,
    # so for D0 the Installed is not a pre-open member: D0's crashed span runs on to it and is
    # cut at the max duration. Built together or apart, D0 gets that same answer.
    stream = [
        m(OPENED, "23:00:00", "a-open"), m("screen:Home", "23:10:00", "a-home"),
        m(INSTALLED, "23:59:58", "b-installed", day=1), m(OPENED, "00:00:01", "b-open", day=2),
        m("screen:Home", "00:01:00", "b-home", day=2), m(BACKGROUNDED, "00:02:00", "b-bg", day=2),
    ]
    together, apart = Pipeline(tmp_path / "together"), Pipeline(tmp_path / "apart")
    try:
        run(together, stream)
        apart.capture("acme", stream, received_at=at("12:00"))
        for day in (D2, D0, D1):
            apart.build(project(), [day])
        for pipeline in (together, apart):
            assert [(s["members"], s["end_reason"], s["session_date"]) for s in sessions(pipeline, "action")] == [
                (["a-open", "a-home"], "max_duration", D0),
                (["b-installed", "b-open", "b-home", "b-bg"], "backgrounded", D1),
            ]
        assert _snapshot(together) == _snapshot(apart)
    finally:
        together.close()
        apart.close()

# --------------------------------------------------------------------------- §8 identity


def test_user_id_is_the_last_user_id_of_members_and_identify_calls_in_the_span(pipe):
    run(pipe, [
        # dev-1: an identify inside the span, after the last member with a userId, wins;
        # the ones before and after the span do not count.
        m("identify", "09:00:00", "i-before", device="dev-1", user="u-before"),
        m(OPENED, "10:00:00", "a-open", device="dev-1"),
        m("Login", "10:05:00", "a-login", device="dev-1", user="u-member"),
        m("identify", "10:10:00", "a-identify", device="dev-1", user="u-identify"),
        m("screen:Home", "10:20:00", "a-home", device="dev-1"),   # no userId: does not reset it
        m(BACKGROUNDED, "10:25:00", "a-bg", device="dev-1"),
        m("identify", "10:30:00", "i-after", device="dev-1", user="u-after"),
        # dev-2: a member with a userId after the identify wins.
        m(OPENED, "10:00:00", "b-open", device="dev-2"),
        m("identify", "10:01:00", "b-identify", device="dev-2", user="u-identify"),
        m("Purchase", "10:02:00", "b-buy", device="dev-2", user="u-member"),
        m(BACKGROUNDED, "10:03:00", "b-bg", device="dev-2"),
        # dev-3: an identify of another device inside the span is not this session's.
        m(OPENED, "10:00:00", "c-open", device="dev-3"),
        m("identify", "10:01:00", "c-other", device="dev-4", user="u-other"),
        m(BACKGROUNDED, "10:03:00", "c-bg", device="dev-3"),
    ], tracking_method="action")
    assert sessions(pipe, "action", "device_key", "user_id") == [
        {"members": ["a-open", "a-login", "a-home", "a-bg"], "end_reason": "backgrounded", "session_date": D0,
         "device_key": "dev-1", "user_id": "u-identify"},
        {"members": ["b-open", "b-buy", "b-bg"], "end_reason": "backgrounded", "session_date": D0,
         "device_key": "dev-2", "user_id": "u-member"},
        {"members": ["c-open", "c-bg"], "end_reason": "backgrounded", "session_date": D0,
         "device_key": "dev-3", "user_id": None},
    ]


def test_resolved_user_id_attributes_sessions_before_a_login_without_rebuilding_them(pipe):
    day1 = [
        m(OPENED, "10:00:00", "o1"), m(BACKGROUNDED, "10:05:00", "b1"),
        m(OPENED, "10:00:00", "never", device="dev-9"),  # this device never logs in
    ]
    run(pipe, day1, tracking_method="action")
    assert table(pipe, "SELECT device_key, user_id, resolved_user_id FROM sessions ORDER BY 1") == [
        ("dev-1", None, None), ("dev-9", None, None),
    ]
    stored_day1 = pipe.rows("SELECT * FROM chosen_sessions WHERE session_date = DATE '2026-11-20' ORDER BY ALL")

    # Day 3 (two days later): the device logs in. Only day 3 (and its neighbours' events) is built.
    run(pipe, [m(OPENED, "09:00:00", "o3", day=2), m("identify", "09:01:00", "login", day=2, user="u-42"),
               m(BACKGROUNDED, "09:02:00", "b3", day=2)], tracking_method="action")
    assert table(pipe, "SELECT session_date, device_key, user_id, resolved_user_id FROM sessions ORDER BY 1, 2") == [
        (D0, "dev-1", None, "u-42"),
        (D0, "dev-9", None, None),
        (D2, "dev-1", "u-42", "u-42"),
    ]
    assert pipe.rows("SELECT * FROM chosen_sessions WHERE session_date = DATE '2026-11-20' ORDER BY ALL") == stored_day1


# --------------------------------------------------------------------------- §3 event time, duplicates, quarantine


def test_sdk_message_timestamp_is_corrected_with_sent_at_from_the_envelope(pipe):
    # The device clock is 3 h ahead: it says 02:00 on D1 while it really is 23:00 on D0.
    raw = {"type": "track", "event": "Tap", "anonymousId": "dev-1", "messageId": "sdk-1",
           "timestamp": "2026-11-21T02:00:00.000Z"}
    received = at("23:00:12")                                     # server time at intake
    envelope = {"sentAt": "2026-11-21T02:00:10.000Z"}             # 10 s after the event, device clock
    pipe.writer.append("acme", [normalize(raw, received, envelope=envelope)])
    pipe.build(project(), [D0, D1])
    assert table(pipe, "SELECT message_id, event_date, timestamp, original_timestamp, sent_at, received_at FROM events") == [
        ("sdk-1", D0, t("23:00:02"), t("02:00:00", 1), t("02:00:10", 1), t("23:00:12")),
    ]
    assert sessions(pipe, "time", "started_at") == [
        {"members": ["sdk-1"], "end_reason": "open", "session_date": D0, "started_at": t("23:00:02")},
    ]


@pytest.mark.parametrize(
    ("fields", "expected_timestamp"),
    [
        ({"timestamp": "2026-11-20T10:00:00Z", "sentAt": "2026-11-20T10:00:30Z"}, t("09:59:40")),  # message sentAt
        ({"originalTimestamp": "2026-11-20T10:00:00Z"}, t("10:00:00")),  # no sentAt: the device time
        ({}, t("10:00:10")),                                           # neither: receivedAt
    ],
)
def test_sdk_message_timestamp_without_envelope(pipe, fields, expected_timestamp):
    raw = {"type": "screen", "name": "Home", "anonymousId": "dev-1", "messageId": "sdk", **fields}
    pipe.writer.append("acme", [normalize(raw, at("10:00:10"))])
    pipe.build(project(), [D0])
    assert table(pipe, "SELECT message_id, timestamp, received_at FROM events") == [("sdk", expected_timestamp, t("10:00:10"))]


def test_segment_delivered_message_keeps_its_timestamp(pipe):
    run(pipe, [m("screen:Home", "10:00:00", "seg", receivedAt=iso(at("15:00:00")), sentAt=iso(at("14:00:00")))])
    assert table(pipe, "SELECT timestamp, received_at FROM events") == [(t("10:00:00"), t("15:00:00"))]


def test_duplicate_message_id_is_counted_once_first_received_wins(pipe):
    first = m("screen:Home", "23:59:50", "dup")
    retry = m("screen:Home", "00:00:20", "dup", day=1)   # a re-delivery with a different timestamp (next day!)
    pipe.capture("acme", [first], received_at=at("23:59:51"))
    pipe.capture("acme", [retry, m("screen:Home", "00:00:30", "next", day=1)], received_at=at("00:00:31", 1))
    pipe.capture("acme", [first], received_at=at("00:01:00", 1))
    pipe.build(project(), [D0, D1])
    assert table(pipe, "SELECT message_id, event_date, timestamp, copies FROM events ORDER BY timestamp") == [
        ("dup", D0, t("23:59:50"), 3),
        ("next", D1, t("00:00:30", 1), 1),
    ]
    assert sessions(pipe, "time", "event_count") == [
        {"members": ["dup", "next"], "end_reason": "open", "session_date": D0, "event_count": 2},
    ]


def test_duplicate_received_later_never_wins_even_with_an_earlier_timestamp(pipe):
    pipe.capture("acme", [m("screen:Late", "10:05:00", "dup")], received_at=at("10:05:01"))
    pipe.capture("acme", [m("screen:Early", "10:00:00", "dup")], received_at=at("10:06:00"))
    pipe.build(project(), [D0])
    assert table(pipe, "SELECT message_id, name, timestamp, copies FROM events") == [("dup", "Late", t("10:05:00"), 2)]


def test_copies_captured_at_the_same_instant_keep_exactly_one_the_first_writer_file_wins(pipe, monkeypatch):
    # Two writer processes whose clocks give the same nanosecond: the copies tie on ingested_ns.
    monkeypatch.setattr("vespucci_assets.capture.time", SimpleNamespace(time_ns=lambda: 1_780_000_000_000_000_000))
    other_writer = pipe.store.writer()
    pipe.capture("acme", [m("screen:One", "10:00:00", "dup"), m("screen:Home", "10:00:10", "solo")], received_at=at("12:00"))
    other_writer.append("acme", [normalize(m("screen:Two", "10:00:00", "dup"), at("12:00"))])
    other_writer.close()
    pipe.build(project(), [D0])
    winner = "One" if pipe.writer.writer_id < other_writer.writer_id else "Two"
    assert table(pipe, "SELECT message_id, name, copies FROM events ORDER BY message_id") == [("dup", winner, 2), ("solo", "Home", 1)]


def test_one_writer_never_gives_two_copies_the_same_instant(pipe, monkeypatch):
    instant = 1_780_000_000_000_000_000
    monkeypatch.setattr("vespucci_assets.capture.time", SimpleNamespace(time_ns=lambda: instant))
    pipe.capture("acme", [m("screen:One", "10:00:00", "dup"), m("screen:Home", "10:00:10", "solo")], received_at=at("12:00"))
    pipe.capture("acme", [m("screen:Two", "10:00:00", "dup")], received_at=at("12:00"))
    assert [r["ingested_ns"] for r in pipe.store.read_records("acme", EVENTS, [D0])] == [instant, instant + 1, instant + 2]
    pipe.build(project(), [D0])
    assert table(pipe, "SELECT message_id, name, copies, ingested_ns FROM events ORDER BY message_id") == [
        ("dup", "One", 2, instant), ("solo", "Home", 1, instant + 1)]


def test_unusable_messages_are_quarantined_with_a_reason(pipe):
    good = m("screen:Home", "10:00:00", "good")
    no_type = {k: v for k, v in m("screen:Home", "10:00:00", "no-type").items() if k != "type"}
    no_ids = m("screen:Home", "10:00:00", "no-ids", anonymous=False)
    future = m("screen:Home", "10:00:00", "future", day=1)
    future["receivedAt"] = iso(at("09:59:59"))                      # received 24 h 00:00:01 before its timestamp
    huge = m("Big", "10:00:00", "huge", properties={"blob": "x" * (33 * 1024)})
    bad_props = m("Tap", "10:00:00", "bad-props", properties=["not", "an", "object"])
    pipe.capture("acme", [good, no_type, no_ids, future, huge, bad_props], received_at=at("12:00"))
    pipe.build(project(), [D0])
    rows = table(pipe, "SELECT project_id, received_date, received_at, reason, raw FROM quarantined_events")
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        ("acme", D0, t("12:00:00"), "missing type"),
        ("acme", D0, t("12:00:00"), "neither anonymousId nor userId"),
        ("acme", D0, t("12:00:00"), "timestamp more than 24 h after receivedAt"),
        ("acme", D0, t("12:00:00"), "message larger than 32 KB"),
        ("acme", D0, t("12:00:00"), "properties must be an object"),
    ]
    for row, message_id in zip(rows, ["no-type", "no-ids", "future", "huge", "bad-props"]):
        assert f'"messageId":"{message_id}"' in row[4]
    assert table(pipe, "SELECT message_id FROM events") == [("good",)]
