"""Sessionization throughput: capture store -> events -> both session methods -> metrics, at 10M events.

Usage:
    .venv/bin/python benchmarks/sessionize_bench.py                      # 10,000,000 events, 10,000 devices
    .venv/bin/python benchmarks/sessionize_bench.py --events 1000000
    .venv/bin/python benchmarks/sessionize_bench.py --events 20000 --check   # + build_all and quality checks
    .venv/bin/python benchmarks/sessionize_bench.py --profile            # slowest SQL statements, always

The stream. One project ('bench', tracking method auto) with --devices phones (default
events / 1000, so 10,000 for 10M) over 7 days of realistic mobile lifecycles: 2-10
foreground visits a day on most days (Application Opened, screens and tracks 2 s to 4 min
apart, an idle of 46-110 min inside 6 % of visits, Application Backgrounded; 6 % crash
without it), pushes received in background between visits (orphans), Application
Installed / Updated 20-400 ms before the Opened of a first run / upgrade, a login
(Login screen, identify, Signed In) for a third of the devices, device clocks off by hours
for some, 3 % of exact timestamp ties, and 1 % duplicate deliveries (later received_at,
slightly different timestamp). Generating that in Python is too slow, so it is made
set-based in DuckDB SQL in a child process (deterministic: every random draw is
`hash(seed, tag, keys...)`, timestamps are window sums of think times) and written with
`COPY (...) TO '<day>/bench-<day>.ndjson' (FORMAT json)`, one writer file per event-day
folder, each line exactly a `CapturedMessage.to_record` record. Exactly --events lines
are written (duplicates included): the journey lengths are adjusted per visit to the total.

What is timed, in this process, on a fresh warehouse file opened with
`connect_warehouse(path, memory_limit=--memory-limit)` and a temp_directory to spill to:
the steps of `pipeline.build_all` over all event days (one set-based run, as a backfill),
each as a phase: `events` (build_events), `quarantine`, `session_events`
(build_session_events, both methods), `sessions_time` / `sessions_action`
(build_method_sessions), `chosen` (build_chosen_sessions) and `metrics` (build_metrics).
Each phase ends with a CHECKPOINT (timed: it pays for making its own writes durable, as a
Dagster step closing its connection does) and the next opens a new connection, as a new
step does. Every conn.execute is timed too (a thin wrapper), so the slowest statements can be listed.

    sessionize_events_per_s = lines in the capture store / total seconds of all phases

References, measured after the pipeline on the same data in the same process:
- floor: `CREATE TABLE floor AS SELECT <the columns sessionization reads> FROM events
  WHERE is_member ORDER BY device_key, timestamp` (one sorted copy of the members) and its
  CHECKPOINT, timed twice on a new connection after the pipeline; the faster copy counts
  (the stricter floor).
  floor_ratio = (session_events + sessions_time + sessions_action) / floor.
- output copy: `INSERT INTO <a table declared like session_events' contract columns,
  compression included> SELECT ... FROM session_events` (no order, no computation): what
  merely writing the required output costs, two rows per member (one per method). Printed as a share of the floor, it bounds
  from below what floor_ratio can reach with this table contract.
- pandas: the member rows (device_key, timestamp) fetched into pandas, sorted, per-device
  diff, new session where the gap > 30 min, cumsum, count. pandas seconds = fetch + compute.
  Our time-based seconds = the statements of build_session_events that only the time
  method needs (time_runs, the per-window recompute's time_groups/cuts/membership, its
  session_events insert) + everything in it that both methods share (range_members,
  window_newest, recompute_windows, deletes, commit, counts: charged in full to time, as
  a time-only build would still pay it)
  + build_method_sessions('time'). pandas_ratio = pandas seconds / that. The session
  counts are printed side by side: ours also cuts at the max duration (24 h) and orders
  ties by lifecycle rank, received_at and messageId, so they can differ only there.

peak_rss_mb is ru_maxrss (and VmHWM) of this process after the pipeline and the floor,
before pandas runs (the peak over the pandas step is printed separately: VmHWM reset
through /proc/self/clear_refs, so it starts from the RSS DuckDB still holds); the
generator's child process is not counted. The last line is
always

    sessionize_events_per_s=<x> floor_ratio=<r> pandas_ratio=<p> peak_rss_mb=<y>
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import multiprocessing
import os
import re
import resource
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import duckdb  # noqa: E402

from vespucci_assets.capture import EVENTS, CaptureStore  # noqa: E402
from vespucci_assets.ingest import TS_FORMAT, build_events, build_quarantine  # noqa: E402
from vespucci_assets.pipeline import build_all, event_source, session_settings  # noqa: E402
from vespucci_assets.projects import Project  # noqa: E402
from vespucci_assets.reporting import build_chosen_sessions, build_method_sessions, build_metrics  # noqa: E402
from vespucci_assets.sessionize import ACTION, TIME, build_session_events  # noqa: E402
from vespucci_assets.sql_utils import window_days  # noqa: E402
from vespucci_assets.tables import SESSION_EVENTS  # noqa: E402
from vespucci_assets.warehouse import connect_warehouse  # noqa: E402

PROJECT = Project(project_id="bench", name="Sessionize benchmark", tracking_method="auto")
FIRST_DAY = date(2025, 6, 2)
DAYS = 7
RELEASE_DAY = 3  # a new app build ships on the 4th day: Application Updated on upgrades
DUPLICATE_RATE = 0.01
EVENTS_PER_DEVICE = 1000  # default devices = events / this (10,000 devices at 10M)
TIMEOUT = timedelta(minutes=30)
BUSY_PATTERNS = ("pytest", "vespucci demo", "vespucci materialize", "benchmarks/")
# SPEC section 9's columns of session_events.
SESSION_EVENTS_CONTRACT = "project_id, session_date, tracking_method, session_id, message_id, seq, timestamp"
# Declared as in the warehouse (message_id's compression included), so the copy costs what writing session_events does.
SESSION_EVENTS_CONTRACT_DDL = ", ".join(c.ddl() for c in SESSION_EVENTS.columns if c.name in SESSION_EVENTS_CONTRACT.split(", "))
FLOOR_COLUMNS = "device_key, timestamp, lifecycle_rank, received_at, message_id, event_date, type, event, name, anonymous_id, user_id"

# --- the stream, generated in DuckDB ------------------------------------------------------------

TIMEZONES = (  # (zone, UTC offset in minutes, share): the Americas' evenings straddle midnight UTC
    ("America/Phoenix", -420, 2), ("America/Mexico_City", -360, 2), ("America/Bogota", -300, 2),
    ("America/Sao_Paulo", -180, 2), ("UTC", 0, 1), ("Africa/Lagos", 60, 1), ("Africa/Johannesburg", 120, 1),
    ("Asia/Dubai", 240, 1), ("Asia/Kolkata", 330, 1), ("Asia/Tokyo", 540, 1),
)
HARDWARE = {  # per platform: (manufacturer, model, os, os version); library
    "ios": ((("Apple", "iPhone15,2", "iOS", "17.5.1"), ("Apple", "iPhone14,5", "iOS", "17.4"),
             ("Apple", "iPhone16,1", "iOS", "18.0")), ("analytics-swift", "1.6.1")),
    "android": ((("Google", "Pixel 8", "Android", "14"), ("samsung", "SM-S911B", "Android", "14"),
                 ("Xiaomi", "2201117TY", "Android", "13")), ("analytics-kotlin", "1.16.3")),
}
RELEASES = (("4.2.0", "420"), ("4.3.0", "431"))
# kind -> (type, event or screen name, properties shape). 0..3 are placed by the journey
# (Home first, the login steps), 4..23 are drawn uniformly for the other steps.
SPECIAL_KINDS = {
    0: ("screen", "Home", "none"), 1: ("screen", "Login", "none"), 2: ("identify", None, "none"),
    3: ("track", "Signed In", "signin"),
    100: ("track", "Application Installed", "version"), 101: ("track", "Application Updated", "update"),
    102: ("track", "Application Opened", "opened"), 103: ("track", "Application Backgrounded", "none"),
    104: ("track", "Push Notification Received", "push"),
}
JOURNEY_KINDS = (
    ("screen", "Product List", "category"), ("screen", "Product List", "category"),
    ("screen", "Product Detail", "sku"), ("screen", "Product Detail", "sku"), ("screen", "Product Detail", "sku"),
    ("screen", "Search", "none"), ("screen", "Cart", "none"), ("screen", "Account", "none"), ("screen", "Home", "none"),
    ("track", "Product List Viewed", "category"), ("track", "Product Viewed", "product"),
    ("track", "Product Viewed", "product"), ("track", "Product Viewed", "product"),
    ("track", "Products Searched", "search"), ("track", "Added To Cart", "cart"), ("track", "Added To Cart", "cart"),
    ("track", "Product Clicked", "product"), ("track", "Checkout Started", "checkout"),
    ("track", "Order Completed", "order"), ("track", "Promotion Viewed", "promotion"),
)
PRODUCTS = (("sku-1001", "Espresso Cup", 12.0), ("sku-1002", "Moka Pot", 39.9), ("sku-1003", "Linen Apron", 24.5),
            ("sku-1004", "Olive Oil 1L", 18.0), ("sku-1005", "Pasta Board", 55.0), ("sku-1006", "Chef Knife", 89.0))


def _lit(value) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return repr(value)


def _list(values) -> str:
    return "[" + ", ".join(_lit(v) for v in values) + "]"


def generate_store(root: Path, events: int, devices: int, seed: int, memory_limit: str,
                   project_id: str = PROJECT.project_id, days: int = DAYS) -> dict:
    """Write exactly `events` capture-store lines for `project_id` over `days` days under root; returns a summary."""
    base_messages = events - round(events * DUPLICATE_RATE)
    duplicates = events - base_messages
    work = root.parent / "generator-tmp"
    work.mkdir(parents=True, exist_ok=True)
    conn = duckdb.connect()
    conn.execute(f"SET memory_limit = '{memory_limit}'")
    conn.execute(f"SET temp_directory = {_lit(str(work))}")
    conn.execute("SET preserve_insertion_order = false")
    conn.execute("SET enable_progress_bar = false")

    def u(tag: str, *keys: str) -> str:
        """A deterministic uniform draw in [0, 1) from the seed, a tag and key columns."""
        return f"((hash({seed}, '{tag}', {', '.join(keys)}) >> 11)::DOUBLE / 9007199254740992.0)"

    tz_pick = [i for i, (_, _, share) in enumerate(TIMEZONES) for _ in range(share)]
    epoch_us = int(datetime.combine(FIRST_DAY, datetime.min.time(), tzinfo=timezone.utc).timestamp()) * 1_000_000
    day_us, hour_us, minute_us, second_us = 86_400_000_000, 3_600_000_000, 60_000_000, 1_000_000

    def uuid_sql(h: str) -> str:
        return f"substr({h}, 1, 8) || '-' || substr({h}, 9, 4) || '-4' || substr({h}, 14, 3) || '-a' || substr({h}, 18, 3) || '-' || substr({h}, 21, 12)"

    def context_sql(version: tuple[str, str]) -> str:
        return f"""json_object(
            'app', json_object('name', 'Mercato', 'version', '{version[0]}', 'build', '{version[1]}', 'namespace', 'com.example.mercato'),
            'device', json_object('id', device_id, 'manufacturer', hw[1], 'model', hw[2], 'type', platform),
            'os', json_object('name', hw[3], 'version', hw[4]),
            'library', json_object('name', lib[1], 'version', lib[2]),
            'timezone', tz_name, 'locale', 'en-US')"""

    hardware = {p: ("[" + ", ".join(_list(h) for h in models) + "]", _list(lib)) for p, (models, lib) in HARDWARE.items()}
    conn.execute(
        f"""
        CREATE TABLE devices AS
        WITH b AS (
            SELECT range::INTEGER AS d, md5('{seed}:anon:' || range) AS ha, md5('{seed}:hw:' || range) AS hh,
                   {_list(tz_pick)}[1 + floor({u('tz', 'range')} * {len(tz_pick)})::INTEGER] AS tz_i,
                   CASE WHEN {u('platform', 'range')} < 0.5 THEN 'ios' ELSE 'android' END AS platform,
                   1 + floor({u('model', 'range')} * 3)::INTEGER AS model_i,
                   CASE WHEN {u('installs', 'range')} < 0.3 THEN floor({u('install_day', 'range')} * 5)::INTEGER END AS install_day,
                   {u('identity', 'range')} AS r_identity,
                   {u('skew', 'range')} AS r_skew, {u('skew_size', 'range')} AS r_skew_size,
                   {u('updates', 'range')} < 0.5 AS r_updates,
                   {u('login_visit', 'range')} AS login_frac,
                   'user-' || (100000 + hash({seed}, 'uid', range) % 900000)::VARCHAR AS user_key
            FROM range({devices})
        ),
        t AS (
            SELECT *, {uuid_sql('ha')} AS anonymous_id,
                   CASE WHEN platform = 'android' THEN replace({uuid_sql('hh')}, '-', '') ELSE upper({uuid_sql('hh')}) END AS device_id,
                   {_list([z for z, _, _ in TIMEZONES])}[tz_i + 1] AS tz_name,
                   {_list([o for _, o, _ in TIMEZONES])}[tz_i + 1] AS tz_offset_min,
                   CASE WHEN platform = 'ios' THEN {hardware['ios'][0]}[model_i] ELSE {hardware['android'][0]}[model_i] END AS hw,
                   CASE WHEN platform = 'ios' THEN {hardware['ios'][1]} ELSE {hardware['android'][1]} END AS lib,
                   install_day IS NULL AND r_identity < 0.3 AS signed_in_before,
                   r_identity >= 0.3 AND r_identity < 0.65 AS logs_in,
                   r_updates AND (install_day IS NULL OR install_day < {RELEASE_DAY}) AS updates,
                   CASE WHEN r_skew < 0.12
                        THEN (CASE WHEN r_skew_size < 0.5 THEN -1 ELSE 1 END) * ({hour_us} + floor(((r_skew_size * 2) % 1) * 8 * {hour_us}))
                        ELSE floor((r_skew_size - 0.5) * 6 * {second_us}) END::BIGINT AS skew_us
            FROM b
        )
        SELECT d, anonymous_id, user_key, platform, tz_offset_min, install_day, signed_in_before, logs_in, updates,
               login_frac, skew_us,
               {context_sql(RELEASES[0])} AS ctx_old, {context_sql(RELEASES[1])} AS ctx_new
        FROM t
        """
    )
    conn.execute(
        f"""
        CREATE TABLE device_days AS
        SELECT d, k::INTEGER AS k, [2, 3, 4, 5, 6, 7, 8, 9, 10][1 + floor({u('visits', 'd', 'k')} * 9)::INTEGER] AS n_v,
               {u('wake', 'd', 'k')} AS r_wake, {u('day_end', 'd', 'k')} AS r_end
        FROM devices, range({days}) AS r(k)
        WHERE (install_day IS NULL OR k >= install_day) AND {u('skip_day', 'd', 'k')} >= 0.12
        """
    )
    # One row per foreground visit, with everything that fixes its message count.
    conn.execute(
        f"""
        CREATE TABLE visits_planned AS
        WITH v AS (SELECT d, k, n_v, unnest(range(n_v))::INTEGER AS j FROM device_days),
        n AS (
            SELECT v.*, (row_number() OVER (PARTITION BY d ORDER BY k, j) - 1)::INTEGER AS vi,
                   count(*) OVER (PARTITION BY d) AS dev_visits
            FROM v
        ),
        w AS (
            SELECT n.*, dv.install_day, dv.updates, dv.logs_in, dv.login_frac,
                   min(vi) FILTER (WHERE k >= {RELEASE_DAY}) OVER (PARTITION BY d) AS first_release_vi,
                   CASE WHEN {u('long_visit', 'd', 'vi')} < 0.2 THEN 30 + floor({u('m', 'd', 'vi')} * 51)
                        ELSE 5 + floor({u('m', 'd', 'vi')} * 26) END::INTEGER AS m_base,
                   {u('crash', 'd', 'vi')} < 0.06 AS crashed
            FROM n JOIN devices AS dv USING (d)
        )
        SELECT d, k, j, n_v, vi, dev_visits, m_base, crashed,
               CASE WHEN install_day IS NOT NULL AND vi = 0 THEN 100
                    WHEN updates AND vi = first_release_vi THEN 101 END AS pre_open,
               CASE WHEN install_day IS NOT NULL AND install_day >= {RELEASE_DAY} THEN 0
                    WHEN updates THEN first_release_vi END AS new_version_vi,
               CASE WHEN logs_in THEN floor(login_frac * dev_visits)::INTEGER END AS login_vi,
               CASE WHEN NOT crashed AND vi < dev_visits - 1 AND {u('push', 'd', 'vi')} < 0.3
                    THEN 1 + ({u('push2', 'd', 'vi')} < 0.33)::INTEGER ELSE 0 END AS pushes,
               CASE WHEN {u('idle', 'd', 'vi')} < 0.06 THEN floor((46 + 64 * {u('idle_len', 'd', 'vi')}) * {minute_us}) END::BIGINT AS idle_us
        FROM w
        """
    )
    # Exactly base_messages messages: spread the difference over the visits' journey lengths.
    conn.execute(
        f"""
        CREATE TABLE visits AS
        WITH p AS (
            SELECT *, (pre_open IS NOT NULL)::INTEGER AS has_pre,
                   (pre_open IS NOT NULL)::INTEGER + 1 + (NOT crashed)::INTEGER + pushes AS n_fixed,
                   row_number() OVER (ORDER BY hash({seed}, 'adjust', d, vi)) - 1 AS adjust_rank
            FROM visits_planned
        ),
        tot AS (SELECT {base_messages} - sum(n_fixed + m_base) AS delta, count(*) AS visits FROM p),
        a AS (
            SELECT p.*, (m_base + floor(delta / visits)
                         + CASE WHEN adjust_rank < delta - floor(delta / visits) * visits THEN 1 ELSE 0 END)::INTEGER AS m
            FROM p, tot
        )
        SELECT *, coalesce(vi = login_vi, false) AS is_login,
               1 + floor({u('login_step', 'd', 'vi')} * (m - 3))::INTEGER AS login_step,
               1 + floor({u('idle_step', 'd', 'vi')} * (m - 1))::INTEGER AS idle_step,
               pre_open IS NULL AND {u('warm', 'd', 'vi')} < 0.5 AS warm
        FROM a
        """
    )
    shortest, planned = conn.execute("SELECT min(m), sum(n_fixed + m) FROM visits").fetchone()
    if shortest < 4 or planned != base_messages:
        raise SystemExit(f"cannot fit {events:,} events to {devices:,} devices (shortest visit {shortest}): use fewer --devices")
    # One row per message of a visit (pushes come later), offsets as window sums of think times.
    conn.execute(
        f"""
        CREATE TABLE slots AS
        WITH s AS (
            SELECT d, vi, pre_open, m, is_login, login_step, idle_step, idle_us, has_pre,
                   unnest(range(has_pre + 1 + m + (NOT crashed)::INTEGER))::INTEGER AS t
            FROM visits
        ),
        r AS (
            SELECT *, t - has_pre - 1 AS step,
                   CASE WHEN t < has_pre THEN 0 WHEN t = has_pre THEN 1 WHEN t <= has_pre + m THEN 2 ELSE 3 END AS role,
                   {u('think', 'd', 'vi', 't')} AS r1, {u('think_len', 'd', 'vi', 't')} AS r2
            FROM s
        ),
        k AS (
            SELECT *,
                   CASE WHEN role = 0 THEN pre_open WHEN role = 1 THEN 102 WHEN role = 3 THEN 103
                        WHEN step = 0 THEN 0
                        WHEN is_login AND step = login_step THEN 1
                        WHEN is_login AND step = login_step + 1 THEN 2
                        WHEN is_login AND step = login_step + 2 THEN 3
                        ELSE 4 + floor({u('kind', 'd', 'vi', 't')} * {len(JOURNEY_KINDS)})::INTEGER END AS kind
            FROM r
        )
        SELECT d, vi, t, kind::SMALLINT AS kind, is_login AND step > login_step AS after_login,
               sum(CASE WHEN role = 0 THEN 0
                        WHEN role = 1 THEN CASE WHEN has_pre = 1 THEN 20000 + floor(r1 * 380000) ELSE 0 END
                        WHEN kind = 0 THEN 300000 + floor(r1 * 1700000)
                        WHEN kind = 2 THEN 5000 + floor(r1 * 45000)
                        WHEN kind = 3 THEN 100000 + floor(r1 * 900000)
                        WHEN r1 < 0.03 THEN 0
                        WHEN r1 < 0.13 THEN 60 * {second_us} + floor(r2 * 180 * {second_us})
                        ELSE 2 * {second_us} + floor(r2 * 43 * {second_us}) END
                   + CASE WHEN role = 2 AND step = idle_step AND idle_us IS NOT NULL THEN idle_us ELSE 0 END)
                   OVER (PARTITION BY d, vi ORDER BY t ROWS UNBOUNDED PRECEDING)::BIGINT AS off_us
        FROM k
        """
    )
    # Place the visits of a device-day in its local 07:00-01:00 window, gaps drawn at random.
    conn.execute(
        f"""
        CREATE TABLE placed AS
        WITH dur AS (SELECT d, vi, max(off_us) AS dur_us FROM slots GROUP BY ALL),
        v AS (
            SELECT v.d, v.k, v.j, v.vi, v.n_v, dur.dur_us,
                   CASE WHEN {u('short_gap', 'v.d', 'v.vi')} < 0.1 THEN 0.005 ELSE 0.2 + {u('gap', 'v.d', 'v.vi')} END AS w
            FROM visits AS v JOIN dur USING (d, vi)
        ),
        dd AS (
            SELECT v.*, dday.r_wake,
                   sum(dur_us) OVER (PARTITION BY d, k) AS day_dur,
                   sum(w) OVER (PARTITION BY d, k) + 0.2 + dday.r_end AS w_all,
                   sum(w) OVER (PARTITION BY d, k ORDER BY j ROWS UNBOUNDED PRECEDING) AS w_upto,
                   coalesce(sum(dur_us) OVER (PARTITION BY d, k ORDER BY j ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS dur_before
            FROM v JOIN device_days AS dday USING (d, k)
        )
        SELECT d, vi, dur_us, start_us, lead(start_us) OVER (PARTITION BY d ORDER BY vi) AS next_start_us
        FROM (
            SELECT dd.d, dd.vi, dd.dur_us,
                   ({epoch_us} + k * {day_us} + 7 * {hour_us} + floor(r_wake * {hour_us}) - tz_offset_min::BIGINT * {minute_us}
                    + floor(greatest(18 * {hour_us} - day_dur, (n_v + 1) * 120 * {second_us}) * w_upto / w_all) + dur_before)::BIGINT AS start_us
            FROM dd JOIN devices USING (d)
        )
        """
    )
    conn.execute(
        f"""
        CREATE TABLE messages AS
        WITH raw AS (
            SELECT s.d, s.vi, s.t, s.kind, s.after_login, p.start_us + s.off_us AS e_us
            FROM slots AS s JOIN placed AS p USING (d, vi)
            UNION ALL
            SELECT v.d, v.vi, (1000 + pi)::INTEGER, 104::SMALLINT, false,
                   p.start_us + p.dur_us + floor((p.next_start_us - p.start_us - p.dur_us) * (0.1 + 0.8 * {u('push_at', 'v.d', 'v.vi', 'pi')}))::BIGINT
            FROM (SELECT d, vi, unnest(range(pushes)) AS pi FROM visits WHERE pushes > 0) AS v JOIN placed AS p USING (d, vi)
        ),
        timed AS (
            SELECT raw.*, dv.skew_us,
                   floor(50000 + 1950000 * {u('latency', 'raw.d', 'raw.vi')})::BIGINT AS lat_us,
                   floor(500000 + 24500000 * {u('upload', 'raw.d', 'raw.vi', 'raw.t')})::BIGINT
                     + CASE WHEN {u('offline', 'raw.d', 'raw.vi')} < 0.03 THEN floor((1 + 5 * {u('offline_h', 'raw.d', 'raw.vi')}) * {hour_us})::BIGINT ELSE 0 END AS upload_us,
                   dv.signed_in_before OR (dv.logs_in AND (raw.vi > v.login_vi OR (raw.vi = v.login_vi AND (raw.after_login OR raw.kind = 104)))) AS has_user,
                   v.new_version_vi IS NOT NULL AND raw.vi >= v.new_version_vi AS new_version,
                   v.warm
            FROM raw JOIN devices AS dv USING (d) JOIN visits AS v USING (d, vi)
        )
        SELECT d, vi, t, kind, has_user, new_version, warm,
               e_us + lat_us AS ts_us, e_us + skew_us AS original_us, e_us + upload_us + skew_us AS sent_us,
               e_us + upload_us + lat_us AS received_us
        FROM timed
        """
    )
    # The duplicates: a retried upload of the same messages, received 5-120 s later.
    conn.execute(
        f"""
        CREATE TABLE stream AS
        WITH dups AS (
            SELECT d, vi, t, kind, has_user, new_version, warm,
                   ts_us + (hash({seed}, 'jitter', d, vi, t) % 3000)::BIGINT AS ts_us, original_us,
                   sent_us + floor((5 + 115 * {u('retry', 'd', 'vi', 't')}) * {second_us})::BIGINT AS sent_us,
                   received_us + floor((5 + 115 * {u('retry', 'd', 'vi', 't')}) * {second_us})::BIGINT AS received_us
            FROM messages ORDER BY hash({seed}, 'duplicate', d, vi, t) LIMIT {duplicates}
        )
        SELECT *, received_us * 1000 + (hash({seed}, 'ns', d, vi, t, received_us) % 1000)::BIGINT AS ingested_ns,
               (ts_us // {day_us})::INTEGER AS day_no
        FROM (SELECT * FROM messages UNION ALL SELECT * FROM dups)
        """
    )
    kinds = [(k, *v) for k, v in SPECIAL_KINDS.items()] + [(4 + i, *v) for i, v in enumerate(JOURNEY_KINDS)]
    conn.execute(
        "CREATE TABLE kinds AS SELECT * FROM (VALUES "
        + ", ".join(f"({k}::SMALLINT, {_lit(t)}, {_lit(n)}, {_lit(p)})" for k, t, n, p in kinds)
        + ") AS k(kind, type, label, shape)"
    )
    products = "[" + ", ".join(f"{{'id': {_lit(i)}, 'name': {_lit(n)}, 'price': {p}}}" for i, n, p in PRODUCTS) + "]"
    properties = f"""
        CASE k.shape
            WHEN 'none' THEN '{{}}'::JSON
            WHEN 'version' THEN json_object('version', ver[1], 'build', ver[2])
            WHEN 'update' THEN json_object('previous_version', '{RELEASES[0][0]}', 'previous_build', '{RELEASES[0][1]}',
                                           'version', '{RELEASES[1][0]}', 'build', '{RELEASES[1][1]}')
            WHEN 'opened' THEN json_object('from_background', s.warm, 'version', ver[1], 'build', ver[2])
            WHEN 'push' THEN json_object('campaign', json_object(
                 'name', ['back-in-stock', 'weekend-sale', 'cart-reminder', 'order-shipped'][1 + r4], 'medium', 'Push', 'source', 'mercato-crm'))
            WHEN 'signin' THEN json_object('method', ['email', 'apple', 'google'][1 + r4 % 3])
            WHEN 'category' THEN json_object('category', ['Kitchen', 'Pantry', 'Tableware', 'Gifts'][1 + r4])
            WHEN 'sku' THEN json_object('product_id', prod.id)
            WHEN 'product' THEN json_object('product_id', prod.id, 'name', prod.name, 'price', prod.price, 'currency', 'EUR')
            WHEN 'cart' THEN json_object('product_id', prod.id, 'name', prod.name, 'price', prod.price, 'currency', 'EUR', 'quantity', 1 + r4 % 3)
            WHEN 'search' THEN json_object('query', ['moka', 'knife', 'olive oil', 'gift for dad'][1 + r4])
            WHEN 'checkout' THEN json_object('value', prod.price * (1 + r4 % 3), 'currency', 'EUR')
            WHEN 'order' THEN json_object('order_id', 'ord-' || lpad((hash({seed}, 'order', s.d, s.vi) % 10000000)::VARCHAR, 7, '0'),
                                          'total', prod.price, 'revenue', prod.price, 'currency', 'EUR')
            WHEN 'promotion' THEN json_object('promotion_id', 'promo-' || r4)
        END"""
    day_numbers = [row[0] for row in conn.execute("SELECT DISTINCT day_no FROM stream ORDER BY 1").fetchall()]
    written = 0
    for day_no in day_numbers:
        day = date(1970, 1, 1) + timedelta(days=day_no)
        folder = root / project_id / EVENTS / day.isoformat()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"bench-{day.isoformat()}.ndjson"
        ts = "strftime(make_timestamp({}), '" + TS_FORMAT + "')"
        conn.execute(
            f"""
            COPY (
                SELECT {uuid_sql(f"md5('{seed}:msg:' || s.d || ':' || s.vi || ':' || s.t)")} AS message_id,
                       k.type,
                       CASE WHEN k.type = 'track' THEN k.label END AS event,
                       CASE WHEN k.type = 'screen' THEN k.label END AS name,
                       dv.anonymous_id,
                       CASE WHEN s.has_user THEN dv.user_key END AS user_id,
                       {ts.format('s.ts_us')} AS timestamp,
                       {ts.format('s.original_us')} AS original_timestamp,
                       {ts.format('s.sent_us')} AS sent_at,
                       {ts.format('s.received_us')} AS received_at,
                       s.ingested_ns,
                       {properties} AS properties,
                       CASE WHEN s.new_version THEN dv.ctx_new ELSE dv.ctx_old END AS context,
                       CASE WHEN k.type = 'identify'
                            THEN json_object('email', dv.user_key || '@example.com', 'plan', CASE WHEN r4 < 2 THEN 'free' ELSE 'plus' END)
                            ELSE '{{}}'::JSON END AS traits,
                       '{{}}'::JSON AS extra
                FROM (
                    SELECT *, (hash({seed}, 'prop', d, vi, t) % 4)::INTEGER AS r4,
                           {products}[1 + (hash({seed}, 'product', d, vi, t) % {len(PRODUCTS)})::INTEGER] AS prod,
                           CASE WHEN new_version THEN {_list(RELEASES[1])} ELSE {_list(RELEASES[0])} END AS ver
                    FROM stream WHERE day_no = {day_no}
                ) AS s
                JOIN devices AS dv USING (d) JOIN kinds AS k USING (kind)
                ORDER BY s.ingested_ns
            ) TO {_lit(str(path))} (FORMAT json)
            """
        )
        written += conn.execute(f"SELECT count(*) FROM stream WHERE day_no = {day_no}").fetchone()[0]
    summary = dict(zip(
        ("messages", "members", "identifies", "pushes", "opened", "backgrounded", "installed", "updated", "devices", "visits"),
        conn.execute(
            """
            SELECT count(*), count(*) FILTER (WHERE k.type <> 'identify'), count(*) FILTER (WHERE k.type = 'identify'),
                   count(*) FILTER (WHERE s.kind = 104), count(*) FILTER (WHERE s.kind = 102), count(*) FILTER (WHERE s.kind = 103),
                   count(*) FILTER (WHERE s.kind = 100), count(*) FILTER (WHERE s.kind = 101),
                   count(DISTINCT d), (SELECT count(*) FROM visits)
            FROM messages AS s JOIN kinds AS k USING (kind)
            """
        ).fetchone(),
    ))
    summary.update(lines=written, duplicates=duplicates, days=len(day_numbers),
                   journey_adjust=round(conn.execute("SELECT avg(m - m_base) FROM visits").fetchone()[0], 2))
    conn.close()
    shutil.rmtree(work, ignore_errors=True)
    if written != events:
        raise SystemExit(f"wrote {written} lines, expected {events}")
    return summary


def _generate_child(root: str, events: int, devices: int, seed: int, memory_limit: str, project_id: str, days: int, out) -> None:
    out.send(generate_store(Path(root), events, devices, seed, memory_limit, project_id, days))
    out.close()


def generate_in_child(root: Path, events: int, devices: int, seed: int, memory_limit: str,
                      project_id: str = PROJECT.project_id, days: int = DAYS) -> dict:
    """The generator runs in its own process, so its memory does not count in this one's peak RSS."""
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_generate_child, args=(str(root), events, devices, seed, memory_limit, project_id, days, send))
    child.start()
    send.close()
    try:
        summary = receive.recv()
    except EOFError:
        summary = None
    child.join()
    if child.exitcode != 0 or summary is None:
        raise SystemExit(f"the generator failed (exit code {child.exitcode})")
    return summary


# --- timing ------------------------------------------------------------------------------------


SQL_HELPERS = ("transaction", "set_target_days", "delete_days")


class TimedConnection:
    """Times every execute (the build functions only call execute) and tags it with its phase and caller."""

    def __init__(self, open_connection):
        self._open = open_connection
        self._conn = open_connection()
        self.phase = "setup"
        self.statements: list[tuple[str, str, str, float]] = []  # (phase, caller, sql, seconds)

    def execute(self, sql, parameters=None):
        caller = sys._getframe(1)
        while caller.f_back is not None and (caller.f_code.co_name in SQL_HELPERS or "contextlib" in caller.f_code.co_filename):
            caller = caller.f_back
        where = f"{Path(caller.f_code.co_filename).stem}.{caller.f_code.co_name}"
        start = time.perf_counter()
        result = self._conn.execute(sql) if parameters is None else self._conn.execute(sql, parameters)
        self.statements.append((self.phase, where, sql, time.perf_counter() - start))
        return result

    def reconnect(self) -> None:
        """A new connection, as each Dagster step opens its own: no temp tables or caches carried over."""
        self._conn.close()
        self._conn = self._open()

    @property
    def raw(self):
        return self._conn

    def __getattr__(self, name):
        return getattr(self._conn, name)


def statement_label(sql: str) -> str:
    text = " ".join(sql.split())
    target = re.match(r"(CREATE OR REPLACE TEMP TABLE \w+|CREATE TABLE \w+|INSERT INTO \w+|DELETE FROM \w+|\w+( \w+)?)", text)
    label = target.group(1) if target else text[:60]
    source = re.search(r"FROM (\w+_membership|\w+_groups|summarized|target_days)\b", text)
    if label.startswith("INSERT") and source:
        label += f" ... FROM {source.group(1)}"
    if label.startswith("DELETE"):
        label += " (days)"
    return label


def method_of(sql: str) -> str:
    """Which method a build_session_events statement serves: 'time', 'action' or 'shared'."""
    method_tables = r"_(runs|groups|long_members|pieces_\d+|cuts|membership)\b"
    time_only = re.search(r"\btime" + method_tables, sql)
    action_only = re.search(r"\baction" + method_tables, sql)
    if time_only and not action_only:
        return TIME
    if action_only and not time_only:
        return ACTION
    return "shared"


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def vm_hwm_mb() -> float | None:
    with contextlib.suppress(OSError):
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    return None


def reset_vm_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def cpu_busy_s() -> float:
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def other_busy_processes() -> list[str]:
    """Other processes that would disturb the figures (a test run, a demo, another bench)."""
    found = []
    me = os.getpid()
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != me and int(name) != os.getppid():
            with contextlib.suppress(OSError):
                with open(f"/proc/{name}/cmdline", "rb") as fh:
                    cmd = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
                if any(p in cmd for p in BUSY_PATTERNS) and "multiprocessing" not in cmd:
                    found.append(f"{name}: {cmd[:100]}")
    return found


def wait_for_idle(limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while (busy := other_busy_processes()) and time.monotonic() < deadline:
        print(f"waiting for {len(busy)} other processes to end: {busy[0]}", flush=True)
        time.sleep(20)
    print(f"other busy processes when timing starts: {len(busy)}" + "".join(f"\n  {b}" for b in busy), flush=True)


# --- the run ------------------------------------------------------------------------------------


def run_pipeline(conn: TimedConnection, store: CaptureStore, days: list[date]) -> dict[str, float]:
    """The steps of pipeline.build_all, one timed phase each."""
    settings = session_settings(PROJECT)
    steps = [
        ("events", lambda: build_events(conn, event_source(PROJECT, store), PROJECT.project_id, window_days(days))),
        ("quarantine", lambda: build_quarantine(conn, store, PROJECT.project_id, days)),
        ("session_events", lambda: build_session_events(conn, PROJECT.project_id, days, settings)),
        ("sessions_time", lambda: build_method_sessions(conn, PROJECT.project_id, days, TIME)),
        ("sessions_action", lambda: build_method_sessions(conn, PROJECT.project_id, days, ACTION)),
        ("chosen", lambda: build_chosen_sessions(conn, PROJECT.project_id, days)),
        ("metrics", lambda: build_metrics(conn, PROJECT.project_id, days)),
    ]
    phases = {}
    for name, step in steps:
        conn.phase = name
        start = time.perf_counter()
        step()
        conn.execute("CHECKPOINT")  # a phase pays for making its own writes durable, as a Dagster step does
        phases[name] = time.perf_counter() - start
        print(f"  {name:<16} {phases[name]:>9.2f} s", flush=True)
        conn.reconnect()
    conn.phase = "after"
    return phases


def timed_copy(conn, query: str, columns_ddl: str | None = None) -> float:
    """Seconds to write the query's rows into a new table (declared with `columns_ddl`, if given; dropped afterwards)."""
    conn.execute("DROP TABLE IF EXISTS timed_copy")
    start = time.perf_counter()
    if columns_ddl:
        conn.execute(f"CREATE TABLE timed_copy ({columns_ddl})")
        conn.execute(f"INSERT INTO timed_copy {query}")
    else:
        conn.execute(f"CREATE TABLE timed_copy AS {query}")
    conn.execute("CHECKPOINT")
    elapsed = time.perf_counter() - start
    conn.execute("DROP TABLE timed_copy")
    return elapsed


FLOOR_QUERY = f"SELECT {FLOOR_COLUMNS} FROM events WHERE is_member ORDER BY device_key, timestamp"
OUTPUT_COPY_QUERY = f"SELECT {SESSION_EVENTS_CONTRACT} FROM session_events"


def pandas_time_sessions(conn) -> tuple[int, float, float]:
    """Naive time-based sessions in pandas: (sessions, fetch seconds, compute seconds)."""
    import pandas as pd

    start = time.perf_counter()
    df = conn.execute("SELECT device_key, timestamp FROM events WHERE is_member").df()
    fetched = time.perf_counter()
    df = df.sort_values(["device_key", "timestamp"], kind="stable")
    gap = df.groupby("device_key", sort=False)["timestamp"].diff()
    new_session = gap.isna() | (gap > pd.Timedelta(TIMEOUT))
    session_no = new_session.cumsum()
    sessions = int(session_no.iloc[-1]) if len(session_no) else 0
    done = time.perf_counter()
    del df, gap, new_session, session_no
    gc.collect()
    return sessions, fetched - start, done - fetched


def quality_checks(conn, days: list[date]) -> list[tuple[str, bool, str]]:
    from vespucci_assets import quality

    settings = session_settings(PROJECT)
    results = []
    checks = [
        ("unique_message_ids", lambda: quality.unique_message_ids(conn, PROJECT.project_id, days)),
        ("members_conserved", lambda: quality.members_conserved(conn, PROJECT.project_id, days)),
        ("no_member_in_two_sessions", lambda: quality.no_member_in_two_sessions(conn, PROJECT.project_id, days)),
        ("action_session_shape", lambda: quality.action_session_shape(conn, PROJECT.project_id, days)),
        ("time_gap_rules", lambda: quality.time_gap_rules(conn, PROJECT.project_id, days, settings)),
    ]
    for method in (TIME, ACTION):
        checks += [
            (f"no_overlapping_sessions[{method}]", lambda m=method: quality.no_overlapping_sessions(conn, PROJECT.project_id, days, m)),
            (f"session_bounds[{method}]", lambda m=method: quality.session_bounds(conn, PROJECT.project_id, days, m, settings)),
            (f"event_count_matches_members[{method}]", lambda m=method: quality.event_count_matches_members(conn, PROJECT.project_id, days, m)),
        ]
    for name, check in checks:
        outcome = check()
        results.append((name, outcome.passed, outcome.summary + (f" e.g. {outcome.examples[:2]}" if outcome.examples else "")))
    return results


SUMMARY_SQL = """
    SELECT
      (SELECT count(*) FROM events), (SELECT count(*) FROM events WHERE is_member),
      (SELECT coalesce(sum(copies - 1), 0) FROM events),
      (SELECT count(*) FROM sessions_time_based), (SELECT count(*) FROM sessions_action_based),
      (SELECT count(*) FROM orphan_events), (SELECT count(*) FROM chosen_sessions),
      (SELECT count(*) FROM session_events), (SELECT list(DISTINCT chosen_method) FROM session_method_choice),
      (SELECT round(sum(members_in_spans) / sum(members), 4) FROM session_method_choice),
      (SELECT count(*) FROM sessions_time_based WHERE end_reason = 'max_duration'),
      (SELECT count(*) FROM sessions_time_based WHERE long_activity),
      (SELECT median(duration_s) FROM sessions_action_based),
      (SELECT list(DISTINCT end_reason ORDER BY end_reason) FROM sessions_action_based)
"""
SUMMARY_KEYS = ("events", "members", "duplicates", "time_sessions", "action_sessions", "orphans", "chosen_sessions",
                "session_events", "chosen_methods", "action_coverage", "time_max_duration_cuts", "time_long_activity",
                "action_median_s", "action_end_reasons")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000, help="capture-store lines to write (duplicates included)")
    parser.add_argument("--devices", type=int, default=None, help=f"default: events / {EVENTS_PER_DEVICE}")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--memory-limit", default="2GB", help="DuckDB memory_limit of the timed warehouse connection")
    parser.add_argument("--generator-memory-limit", default="6GB")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a new temporary folder, removed afterwards")
    parser.add_argument("--keep", action="store_true", help="keep the workdir (a later run with the same --workdir, "
                        "--events, --devices and --seed reuses its capture store)")
    parser.add_argument("--wait-idle", type=float, default=0, metavar="S",
                        help="before timing, wait up to S seconds (polling every 20 s) for other test/bench runs to end")
    parser.add_argument("--check", action="store_true", help="also run build_all on a second warehouse and the quality checks")
    parser.add_argument("--profile", action="store_true", help="list the slowest SQL statements even when floor_ratio <= 2")
    args = parser.parse_args()
    devices = args.devices or max(1, round(args.events / EVENTS_PER_DEVICE))

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="sessionize-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        busy = other_busy_processes()
        print(f"events {args.events:,}  devices {devices:,}  days {DAYS}  seed {args.seed}  memory_limit {args.memory_limit}"
              f"  threads {os.cpu_count()}  workdir {workdir}")
        print(f"other busy processes at start: {len(busy)}" + "".join(f"\n  {b}" for b in busy)
              + f"  (load average {' '.join(f'{v:.2f}' for v in os.getloadavg())})")

        capture_root = workdir / "capture"
        manifest_path = workdir / "manifest.json"
        wanted = {"events": args.events, "devices": devices, "seed": args.seed}
        manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
        if manifest.get("params") == wanted and capture_root.is_dir():
            summary, generation_s = manifest["summary"], None
            print("capture store reused from an earlier run")
        else:
            shutil.rmtree(capture_root, ignore_errors=True)
            start = time.perf_counter()
            summary = generate_in_child(capture_root, args.events, devices, args.seed, args.generator_memory_limit)
            generation_s = time.perf_counter() - start
            manifest_path.write_text(json.dumps({"params": wanted, "summary": summary}))
        store = CaptureStore(capture_root)
        days = store.days(PROJECT.project_id)
        size_mb = sum(p.stat().st_size for p in store.files(PROJECT.project_id, EVENTS, days)) / 2**20
        print(f"capture store: {summary['lines']:,} lines ({summary['duplicates']:,} duplicate deliveries), "
              f"{len(days)} day folders {days[0]}..{days[-1]}, {size_mb:,.0f} MB"
              + (f", generated in {generation_s:.1f} s" if generation_s is not None else ""))
        print("  messages: " + ", ".join(f"{k} {summary[k]:,}" for k in
                                         ("members", "identifies", "opened", "backgrounded", "pushes", "installed", "updated", "visits"))
              + f"; journey length adjusted by {summary['journey_adjust']:+} steps per visit to hit --events")

        db_path = workdir / "vespucci.duckdb"
        for leftover in (db_path, Path(f"{db_path}.wal")):
            leftover.unlink(missing_ok=True)
        spill = workdir / "duckdb-tmp"

        def open_warehouse():
            opened = connect_warehouse(db_path, memory_limit=args.memory_limit)
            opened.execute(f"SET temp_directory = {_lit(str(spill))}")
            opened.execute("SET enable_progress_bar = false")
            return opened

        conn = TimedConnection(open_warehouse)
        if args.wait_idle:
            wait_for_idle(args.wait_idle)

        print("pipeline (build_all's steps, all days in one run):", flush=True)
        busy_before, own_before, wall_before = cpu_busy_s(), own_cpu_s(), time.perf_counter()
        phases = run_pipeline(conn, store, days)
        wall = time.perf_counter() - wall_before
        other_cores = max(0.0, (cpu_busy_s() - busy_before) - (own_cpu_s() - own_before)) / wall
        total_s = sum(phases.values())

        raw = conn.raw  # a new connection since the last phase
        floor_runs = [timed_copy(raw, FLOOR_QUERY) for _ in range(2)]
        floor_s = min(floor_runs)
        print(f"  floor copy       {floor_s:>9.2f} s   (members ordered by device_key, timestamp; "
              f"runs {', '.join(f'{r:.2f}' for r in floor_runs)} s)", flush=True)
        output_s = timed_copy(raw, OUTPUT_COPY_QUERY, SESSION_EVENTS_CONTRACT_DDL)
        print(f"  output copy      {output_s:>9.2f} s   (session_events' contract columns, both methods, copied as they are)", flush=True)
        peak_rss = rss_mb()
        peak_hwm = vm_hwm_mb()

        result = dict(zip(SUMMARY_KEYS, raw.execute(SUMMARY_SQL).fetchone()))

        reset = reset_vm_hwm()
        pandas_sessions, pandas_fetch_s, pandas_compute_s = pandas_time_sessions(raw)
        pandas_s = pandas_fetch_s + pandas_compute_s
        pandas_hwm = vm_hwm_mb() if reset else None

        split = defaultdict(float)
        for phase, _, sql, seconds in conn.statements:
            if phase == "session_events":
                split[method_of(sql)] += seconds
        split["shared"] += phases["session_events"] - sum(split.values())  # Python between statements
        ours_time_s = split["shared"] + split[TIME] + phases["sessions_time"]
        sessionize_s = phases["session_events"] + phases["sessions_time"] + phases["sessions_action"]
        floor_ratio = sessionize_s / floor_s
        pandas_ratio = pandas_s / ours_time_s
        events_per_s = summary["lines"] / total_s

        print(f"results: events {result['events']:,} (members {result['members']:,}, duplicates dropped {result['duplicates']:,}), "
              f"time sessions {result['time_sessions']:,}, action sessions {result['action_sessions']:,}, "
              f"orphans {result['orphans']:,}, chosen {result['chosen_methods']} ({result['chosen_sessions']:,} sessions, "
              f"action coverage {result['action_coverage']}), session_events rows {result['session_events']:,}")
        print(f"  action median duration {result['action_median_s']:.0f} s, action end reasons {result['action_end_reasons']}, "
              f"time max_duration cuts {result['time_max_duration_cuts']}, long_activity {result['time_long_activity']}")
        print(f"total pipeline     {total_s:>9.2f} s   ({events_per_s:,.0f} events/s; other processes used {other_cores:.2f} cores meanwhile"
              + ("; DISTURBED: figures are not representative)" if other_cores > 0.15 else ")"))
        print(f"sessionize         {sessionize_s:>9.2f} s   (session_events + both build_method_sessions)")
        print(f"  session_events split: shared {split['shared']:.2f} s, time-only {split[TIME]:.2f} s, action-only {split[ACTION]:.2f} s")
        print(f"  ours, time-based {ours_time_s:>9.2f} s   (shared + time-only + sessions_time)")
        print(f"floor              {floor_s:>9.2f} s   floor_ratio {floor_ratio:.2f} (target <= 2.0)")
        print(f"  output copy      {output_s:>9.2f} s   = {output_s / floor_s:.2f} x floor before any sorting or grouping "
              f"({result['session_events']:,} rows)")
        print(f"pandas             {pandas_s:>9.2f} s   (fetch {pandas_fetch_s:.2f} s + sort/diff/cumsum {pandas_compute_s:.2f} s)"
              f"   pandas_ratio {pandas_ratio:.2f}")
        print(f"  time sessions: ours {result['time_sessions']:,}, pandas {pandas_sessions:,} "
              f"(difference {result['time_sessions'] - pandas_sessions:+,}; ours also cuts at 24 h: {result['time_max_duration_cuts']} cuts)")
        print(f"peak RSS           {peak_rss:>9.0f} MB  (ru_maxrss after pipeline + floor; VmHWM {peak_hwm:.0f} MB; target <= 3072)"
              + (f"; VmHWM over the pandas step {pandas_hwm:.0f} MB (from the RSS it started at), process ru_maxrss now {rss_mb():.0f} MB"
                 if pandas_hwm else ""))

        if floor_ratio > 2.0 or args.profile:
            by_statement = defaultdict(lambda: [0.0, 0])
            for phase, where, sql, seconds in conn.statements:
                key = (phase, where, statement_label(sql))
                by_statement[key][0] += seconds
                by_statement[key][1] += 1
            print("slowest SQL statements (phase, caller, statement, calls):")
            for (phase, where, label), (seconds, calls) in sorted(by_statement.items(), key=lambda kv: -kv[1][0])[:12]:
                print(f"  {seconds:>8.2f} s  {phase:<15} {where:<40} {label} x{calls}")

        failed = False
        if args.check:
            print("check: build_all on a second warehouse, then the quality checks on every day")
            check_db = workdir / "check.duckdb"
            for leftover in (check_db, Path(f"{check_db}.wal")):
                leftover.unlink(missing_ok=True)
            other = connect_warehouse(check_db, memory_limit=args.memory_limit)
            other.execute(f"SET temp_directory = {_lit(str(spill))}")
            build_all(other, store, PROJECT, days)
            again = dict(zip(SUMMARY_KEYS, other.execute(SUMMARY_SQL).fetchone()))
            same = all(again[k] == result[k] for k in SUMMARY_KEYS if k != "action_median_s")
            print(f"  build_all gives the same counts: {same}")
            other.close()
            failed |= not same
            for name, passed, text in quality_checks(raw, days):
                print(f"  {'ok  ' if passed else 'FAIL'} {name}: {text}")
                failed |= not passed
            sensible = result["time_sessions"] > 0 and result["action_sessions"] > 0 and result["orphans"] > 0
            print(f"  sessions sensible (time > 0, action > 0, orphans > 0): {sensible}")
            failed |= not sensible
        raw.close()
        busy = other_busy_processes()
        if busy:
            print(f"other busy processes at the end: {len(busy)}" + "".join(f"\n  {b}" for b in busy))
        print(f"sessionize_events_per_s={events_per_s:.0f} floor_ratio={floor_ratio:.2f} "
              f"pandas_ratio={pandas_ratio:.2f} peak_rss_mb={peak_rss:.0f}")
        if failed:
            sys.exit(1)
    finally:
        if args.keep:
            for leftover in (workdir / "vespucci.duckdb", workdir / "vespucci.duckdb.wal", workdir / "check.duckdb",
                             workdir / "check.duckdb.wal"):
                leftover.unlink(missing_ok=True)
            shutil.rmtree(workdir / "duckdb-tmp", ignore_errors=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
