"""Deterministic sample Segment mobile stream for the Vespucci demo.

`demo_batches` simulates a fleet of phones running a shopping app for a few days and
returns the batch uploads their Segment SDK (analytics-swift / analytics-kotlin) would
make, with the untidy parts of real traffic: crashes, pushes received in background,
long idle time in the foreground, logins, SDK retries, skewed device clocks, offline
devices uploading hours late and sessions that cross midnight UTC.

Pure Python, seeded: the same arguments always give the same batches. Knows nothing of
Dagster or storage.
"""

from __future__ import annotations

import copy
import hashlib
import random
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone

STYLES = ("action", "time")
APP_NAME = "Mercato"
RELEASES = (("4.2.0", "420"), ("4.3.0", "431"))
LIBRARIES = {
    "ios": {"name": "analytics-swift", "version": "1.6.1"},
    "android": {"name": "analytics-kotlin", "version": "1.16.3"},
}
DEVICE_MODELS = {
    "ios": (("Apple", "iPhone15,2", "iOS", "17.5.1"), ("Apple", "iPhone14,5", "iOS", "17.4"),
            ("Apple", "iPhone16,1", "iOS", "18.0")),
    "android": (("Google", "Pixel 8", "Android", "14"), ("samsung", "SM-S911B", "Android", "14"),
                ("Xiaomi", "2201117TY", "Android", "13")),
}
# (zone, UTC offset in hours, share of users). Zones without daylight saving time, so the
# fixed offset is their true local time; the Americas' evening peak straddles midnight UTC.
TIMEZONES = (("America/Phoenix", -7, 2), ("America/Mexico_City", -6, 2), ("America/Bogota", -5, 2),
             ("America/Sao_Paulo", -3, 2), ("UTC", 0, 1), ("Africa/Lagos", 1, 1), ("Africa/Johannesburg", 2, 1),
             ("Asia/Dubai", 4, 1), ("Asia/Kolkata", 5.5, 1), ("Asia/Tokyo", 9, 1))
# Relative chance that a session starts in each local hour 0..23: commute, lunch, evening.
HOUR_WEIGHTS = (2, 1, 0.5, 0.2, 0.2, 0.5, 2, 5, 7, 5, 4, 4, 7, 6, 4, 4, 5, 6, 8, 9, 10, 10, 8, 5)
SESSIONS_PER_DAY = (1, 2, 2, 3, 3, 3, 4, 4, 5, 6)
PRODUCTS = (("sku-1001", "Espresso Cup", 12.0), ("sku-1002", "Moka Pot", 39.9), ("sku-1003", "Linen Apron", 24.5),
            ("sku-1004", "Olive Oil 1L", 18.0), ("sku-1005", "Pasta Board", 55.0), ("sku-1006", "Chef Knife", 89.0))
# Checkout is rare: about one session in ten ends with an order.
JOURNEY_ACTIONS = ("browse", "search", "view", "add_to_cart", "checkout", "account")
JOURNEY_WEIGHTS = (8, 4, 10, 6, 0.6, 2)
CATEGORIES = ("Kitchen", "Pantry", "Tableware", "Gifts")
SEARCHES = ("moka", "knife", "olive oil", "gift for dad", "apron")
FIRST_NAMES = ("Ada", "Bruno", "Chiara", "Diego", "Elif", "Femi", "Giulia", "Hiro", "Ines", "Jonas")
COMPANIES = (("acct-trattoria-roma", "Trattoria Roma"), ("acct-cafe-lumen", "Cafe Lumen"))
CAMPAIGNS = ("back-in-stock", "weekend-sale", "cart-reminder", "order-shipped")

MAX_BATCH_MESSAGES = 20
FLUSH_INTERVAL = timedelta(seconds=30)
# Sessions end this long before the window closes, so upload delays stay inside it too.
END_MARGIN = timedelta(minutes=5)
MIN_SESSION_GAP = timedelta(minutes=2)
IDLE_MINUTES = (46, 110)
SKEWED_CLOCK_HOURS = (1, 9)

INSTALL_IN_WINDOW_RATE = 0.3
SIGNED_IN_BEFORE_RATE = 0.3
LOGS_IN_RATE = 0.35
ALIAS_RATE = 0.35
GROUP_RATE = 0.3
SKEWED_CLOCK_RATE = 0.12
OFFLINE_PRONE_RATE = 0.15
OFFLINE_SESSION_RATE = 0.2
SKIP_DAY_RATE = 0.12
CRASH_RATE = 0.06
# Evenings (local 19:00 on) bring longer browsing and phones left open in front of the TV.
IDLE_RATE = {"day": 0.04, "evening": 0.12}
LONG_JOURNEY_RATE = {"day": 0.08, "evening": 0.35}
PUSH_RATE = 0.3
WARM_START_RATE = 0.7
UPDATE_RATE = 0.5
RETRY_RATE = 0.02


@dataclass(frozen=True)
class DemoBatch:
    project_id: str
    received_at: datetime  # aware UTC: when the (simulated) server received this upload
    envelope: dict  # {"sentAt": device-clock ISO string, "context": {"library": ...}}
    messages: list[dict]  # raw Segment messages as the SDK sends them


@dataclass
class _Event:
    at: datetime  # true time
    message: dict
    span: int


@dataclass
class _Device:
    rng: random.Random
    id_salt: int
    platform: str
    anonymous_id: str
    device_id: str
    hardware: tuple[str, str, str, str]
    timezone_name: str
    utc_offset: timedelta
    clock_skew: timedelta
    offline_prone: bool
    installs_at: datetime | None  # first run inside the window; None: installed before it
    login: tuple[int, str] | None  # (span number, user id) of a login inside the window
    first_run: bool
    user_id: str | None = None
    release: int = 0
    span: int = 0  # current foreground span; pushes in background carry the previous one
    span_starts: list[datetime] = field(default_factory=list)
    span_ends: list[datetime] = field(default_factory=list)


def demo_batches(project_id: str, *, style: str, end_day: date, days: int = 7, devices: int = 60,
                 seed: int = 7) -> list[DemoBatch]:
    """SDK uploads of `devices` phones over the `days` UTC days ending at `end_day`, by received_at."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, not {style!r}")
    if days < 1 or devices < 1:
        raise ValueError("days and devices must be at least 1")
    window_start = datetime.combine(end_day - timedelta(days=days - 1), time(0), tzinfo=timezone.utc)
    window_end = window_start + timedelta(days=days)
    release_at = window_start + timedelta(days=days / 2, hours=9)
    # The project only salts the ids: every project of one style gets the same traffic shape.
    id_salt = int.from_bytes(hashlib.sha256(project_id.encode()).digest()[:16], "big")
    batches: list[DemoBatch] = []
    for index in range(devices):
        rng = random.Random(f"vespucci-demo:{seed}:{style}:{index}")
        device = _new_device(rng, id_salt, window_start, window_end)
        events = _device_events(device, window_start, window_end - END_MARGIN, release_at)
        if style == "time":
            events = [e for e in events if not _is_lifecycle(e.message)]
        batches += _device_uploads(project_id, device, events)
    return sorted(batches, key=lambda b: b.received_at)


def _new_device(rng: random.Random, id_salt: int, window_start: datetime, window_end: datetime) -> _Device:
    platform = rng.choice(("ios", "android"))
    timezone_name, offset_hours, _ = rng.choices(TIMEZONES, [share for _, _, share in TIMEZONES])[0]
    window = window_end - window_start
    installs_at = window_start + window * rng.uniform(0, 0.7) if rng.random() < INSTALL_IN_WINDOW_RATE else None
    identity = rng.random()
    signed_in_before = installs_at is None and identity < SIGNED_IN_BEFORE_RATE
    logs_in = SIGNED_IN_BEFORE_RATE <= identity < SIGNED_IN_BEFORE_RATE + LOGS_IN_RATE
    return _Device(
        rng=rng,
        platform=platform,
        id_salt=id_salt,
        anonymous_id=_uuid(rng, id_salt),
        device_id=_uuid(rng, id_salt).replace("-", "") if platform == "android" else _uuid(rng, id_salt).upper(),
        hardware=rng.choice(DEVICE_MODELS[platform]),
        timezone_name=timezone_name,
        utc_offset=timedelta(hours=offset_hours),
        clock_skew=_clock_skew(rng),
        offline_prone=rng.random() < OFFLINE_PRONE_RATE,
        installs_at=installs_at,
        login=(rng.randrange(0, 8), _user_id(rng)) if logs_in else None,
        user_id=_user_id(rng) if signed_in_before else None,
        first_run=installs_at is not None,
    )


def _clock_skew(rng: random.Random) -> timedelta:
    if rng.random() < SKEWED_CLOCK_RATE:
        hours = rng.uniform(*SKEWED_CLOCK_HOURS)
        return timedelta(hours=rng.choice((-1, 1)) * hours)
    return timedelta(seconds=rng.uniform(-3, 3))


def _device_events(device: _Device, window_start: datetime, last_allowed: datetime,
                   release_at: datetime) -> list[_Event]:
    """Every message of one device in true-time order, tagged with its foreground span."""
    events: list[_Event] = []
    previous: list[_Event] = []
    for start in _session_starts(device, window_start, last_allowed):
        if previous and start < previous[-1].at + MIN_SESSION_GAP:
            continue
        backgrounded = bool(previous) and _is_event(previous[-1].message, "Application Backgrounded")
        pushes = _background_pushes(device, previous[-1].at, start) if backgrounded else []
        warm = backgrounded and start - previous[-1].at < timedelta(hours=3) and device.rng.random() < WARM_START_RATE
        device.span = len(device.span_starts)
        foreground = _foreground(device, start, warm, release_at)
        if foreground[-1].at >= last_allowed:
            break
        events += pushes + foreground
        device.span_starts.append(start)
        device.span_ends.append(foreground[-1].at)
        previous = foreground
    return events


def _session_starts(device: _Device, window_start: datetime, last_allowed: datetime) -> list[datetime]:
    rng = device.rng
    starts = []
    day = (window_start + device.utc_offset).date()
    while day <= (last_allowed + device.utc_offset).date():
        if rng.random() >= SKIP_DAY_RATE:
            for _ in range(rng.choice(SESSIONS_PER_DAY)):
                hour = rng.choices(range(24), HOUR_WEIGHTS)[0]
                local = datetime.combine(day, time(hour), tzinfo=timezone.utc) + timedelta(seconds=rng.uniform(0, 3600))
                starts.append(local - device.utc_offset)
        day += timedelta(days=1)
    earliest = device.installs_at or window_start
    return sorted(s for s in starts if earliest <= s < last_allowed)


def _foreground(device: _Device, opened_at: datetime, warm: bool, release_at: datetime) -> list[_Event]:
    """One foreground span: launch, a shopping journey, then Backgrounded unless the app crashes."""
    rng = device.rng
    events = _launch(device, opened_at, warm, release_at)
    part_of_day = "evening" if (opened_at + device.utc_offset).hour >= 19 else "day"
    steps = _journey(rng, LONG_JOURNEY_RATE[part_of_day])
    logs_in_here = device.login is not None and device.login[0] == device.span
    login_step = rng.randrange(1, len(steps)) if logs_in_here else None
    idle_step = rng.randrange(1, len(steps)) if rng.random() < IDLE_RATE[part_of_day] else None
    at = events[-1].at
    for step, (kind, fields) in enumerate(steps):
        at += _think_time(rng)
        if step == idle_step:
            at += timedelta(minutes=rng.uniform(*IDLE_MINUTES))
        if step == login_step:
            events += _login(device, at)
            at = events[-1].at + _think_time(rng)
        events.append(_message(device, at, kind, **fields))
    if rng.random() >= CRASH_RATE:
        events.append(_message(device, at + _think_time(rng), "track", event="Application Backgrounded",
                               properties={}))
    return events


def _launch(device: _Device, at: datetime, warm: bool, release_at: datetime) -> list[_Event]:
    """Installed on first run or Updated on a new build (cold starts only), then Opened."""
    rng = device.rng
    events = []
    if device.first_run:
        device.first_run = False
        device.release = len(RELEASES) - 1 if at >= release_at else 0
        events.append(_message(device, at, "track", event="Application Installed", properties=_version(device)))
    elif not warm and at >= release_at and device.release + 1 < len(RELEASES) and rng.random() < UPDATE_RATE:
        previous_version, previous_build = RELEASES[device.release]
        device.release += 1
        properties = {"previous_version": previous_version, "previous_build": previous_build, **_version(device)}
        events.append(_message(device, at, "track", event="Application Updated", properties=properties))
    opened_at = at + timedelta(milliseconds=rng.uniform(20, 400)) if events else at
    opened = {"from_background": warm, **_version(device)}
    events.append(_message(device, opened_at, "track", event="Application Opened", properties=opened))
    return events


def _journey(rng: random.Random, long_rate: float) -> list[tuple[str, dict]]:
    """What the user does in the app, as (call type, fields) pairs."""
    steps = [_screen("Home")]
    for _ in range(rng.randint(10, 25) if rng.random() < long_rate else rng.randint(2, 8)):
        action = rng.choices(JOURNEY_ACTIONS, JOURNEY_WEIGHTS)[0]
        steps += _checkout(rng) if action == "checkout" else _browsing(rng, action)
    return steps


def _browsing(rng: random.Random, action: str) -> list[tuple[str, dict]]:
    if action == "browse":
        category = rng.choice(CATEGORIES)
        return [_screen("Product List", category=category), _track("Product List Viewed", category=category)]
    if action == "search":
        return [_screen("Search"), _track("Products Searched", query=rng.choice(SEARCHES))]
    if action == "account":
        return [_screen("Account")]
    product = _product(rng)
    viewed = [_screen("Product Detail", product_id=product["product_id"]), _track("Product Viewed", **product)]
    if action == "add_to_cart":
        return viewed + [_track("Added To Cart", quantity=rng.randint(1, 3), **product)]
    return viewed


def _checkout(rng: random.Random) -> list[tuple[str, dict]]:
    products = [_product(rng) for _ in range(rng.randint(1, 3))]
    total = round(sum(p["price"] for p in products), 2)
    order = {"order_id": f"ord-{rng.randrange(10**7):07d}", "total": total, "revenue": total,
             "currency": "EUR", "products": products}
    return [_screen("Cart"), _track("Checkout Started", value=total, currency="EUR"),
            _screen("Checkout"), _track("Order Completed", **order)]


def _login(device: _Device, at: datetime) -> list[_Event]:
    """Login screen, optional alias, identify (userId from here on), optional group, Signed In."""
    rng = device.rng
    user_id = device.login[1]  # type: ignore[index]
    events = [_message(device, at, "screen", name="Login", properties={})]
    at += _think_time(rng)
    if rng.random() < ALIAS_RATE:
        events.append(_message(device, at, "alias", userId=user_id, previousId=device.anonymous_id))
        at += timedelta(milliseconds=rng.uniform(5, 50))
    device.user_id = user_id
    name = rng.choice(FIRST_NAMES)
    traits = {"email": f"{name.lower()}.{user_id}@example.com", "name": name, "plan": rng.choice(("free", "plus"))}
    events.append(_message(device, at, "identify", traits=traits))
    if rng.random() < GROUP_RATE:
        group_id, group_name = rng.choice(COMPANIES)
        at += timedelta(milliseconds=rng.uniform(5, 50))
        events.append(_message(device, at, "group", groupId=group_id, traits={"name": group_name, "plan": "business"}))
    events.append(_message(device, at + timedelta(seconds=rng.uniform(0.1, 1)), "track", event="Signed In",
                           properties={"method": rng.choice(("email", "apple", "google"))}))
    return events


def _background_pushes(device: _Device, backgrounded_at: datetime, next_open: datetime) -> list[_Event]:
    rng = device.rng
    gap = next_open - backgrounded_at
    if gap < timedelta(minutes=20) or rng.random() >= PUSH_RATE:
        return []
    pushes = []
    for at in sorted(backgrounded_at + gap * rng.uniform(0.1, 0.9) for _ in range(rng.choice((1, 1, 2)))):
        campaign = {"name": rng.choice(CAMPAIGNS), "medium": "Push", "source": "mercato-crm"}
        pushes.append(_message(device, at, "track", event="Push Notification Received", properties={"campaign": campaign}))
    return pushes


def _device_uploads(project_id: str, device: _Device, events: list[_Event]) -> list[DemoBatch]:
    """The SDK flushes every 20 messages, every 30 s and on background; offline spans wait."""
    rng = device.rng
    offline = {span for span in range(len(device.span_starts)) if _goes_offline(device, span)}
    batches: list[DemoBatch] = []
    last_upload = None
    for group in _upload_groups(events):
        span = group[0].span
        if span in offline:
            upload_at = device.span_starts[span + 1] + timedelta(seconds=rng.uniform(1, 8))
        else:
            upload_at = group[-1].at + timedelta(seconds=rng.uniform(0.5, 25))
        if last_upload is not None:
            upload_at = max(upload_at, last_upload + timedelta(milliseconds=rng.uniform(150, 600)))
        last_upload = upload_at
        batches += _deliveries(project_id, device, [e.message for e in group], upload_at)
    return batches


def _goes_offline(device: _Device, span: int) -> bool:
    """Offline from this span until the device's next launch, hours later (same or next day)."""
    if not device.offline_prone or span + 1 == len(device.span_starts) or device.rng.random() >= OFFLINE_SESSION_RATE:
        return False
    end, next_start = device.span_ends[span], device.span_starts[span + 1]
    return next_start - end >= timedelta(hours=1) and (next_start.date() - end.date()).days <= 1


def _upload_groups(events: list[_Event]) -> list[list[_Event]]:
    groups: list[list[_Event]] = []
    current: list[_Event] = []
    for event in events:
        if current and (len(current) == MAX_BATCH_MESSAGES or event.span != current[0].span
                        or event.at - current[0].at > FLUSH_INTERVAL):
            groups.append(current)
            current = []
        current.append(event)
        if _is_event(event.message, "Application Backgrounded"):
            groups.append(current)
            current = []
    return groups + [current] if current else groups


def _deliveries(project_id: str, device: _Device, messages: list[dict], upload_at: datetime) -> list[DemoBatch]:
    """One upload, plus a retried copy when the response was lost (same messages, later sentAt)."""
    batches = [_batch(project_id, device, messages, upload_at)]
    if device.rng.random() < RETRY_RATE:
        retry_at = upload_at + timedelta(seconds=device.rng.uniform(5, 120))
        batches.append(_batch(project_id, device, copy.deepcopy(messages), retry_at))
    return batches


def _batch(project_id: str, device: _Device, messages: list[dict], upload_at: datetime) -> DemoBatch:
    return DemoBatch(
        project_id=project_id,
        received_at=upload_at + timedelta(seconds=device.rng.uniform(0.05, 2)),
        envelope={"sentAt": _iso(upload_at + device.clock_skew), "context": {"library": dict(LIBRARIES[device.platform])}},
        messages=messages,
    )


def _message(device: _Device, at: datetime, kind: str, **fields) -> _Event:
    message = {
        "type": kind,
        "messageId": _uuid(device.rng, device.id_salt),
        "anonymousId": device.anonymous_id,
        "userId": device.user_id,
        "timestamp": _iso(at + device.clock_skew),
        **fields,
        "context": _context(device),
    }
    return _Event(at, message, device.span)


def _context(device: _Device) -> dict:
    manufacturer, model, os_name, os_version = device.hardware
    version, build = RELEASES[device.release]
    return {
        "app": {"name": APP_NAME, "version": version, "build": build, "namespace": "com.example.mercato"},
        "device": {"id": device.device_id, "manufacturer": manufacturer, "model": model, "type": device.platform},
        "os": {"name": os_name, "version": os_version},
        "library": dict(LIBRARIES[device.platform]),
        "timezone": device.timezone_name,
        "locale": "en-US",
    }


def _screen(name: str, **properties) -> tuple[str, dict]:
    return "screen", {"name": name, "properties": properties}


def _track(event: str, **properties) -> tuple[str, dict]:
    return "track", {"event": event, "properties": properties}


def _product(rng: random.Random) -> dict:
    product_id, name, price = rng.choice(PRODUCTS)
    return {"product_id": product_id, "name": name, "price": price, "currency": "EUR"}


def _version(device: _Device) -> dict:
    version, build = RELEASES[device.release]
    return {"version": version, "build": build}


def _think_time(rng: random.Random) -> timedelta:
    seconds = rng.uniform(60, 240) if rng.random() < 0.1 else rng.uniform(2, 45)
    return timedelta(seconds=seconds)


def _user_id(rng: random.Random) -> str:
    return f"user-{rng.randrange(10**5, 10**6)}"


def _uuid(rng: random.Random, salt: int) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128) ^ salt, version=4))


def _is_event(message: dict, event: str) -> bool:
    return message["type"] == "track" and message.get("event") == event


def _is_lifecycle(message: dict) -> bool:
    return message["type"] == "track" and message["event"].startswith("Application ")


def _iso(moment: datetime) -> str:
    """ISO-8601 UTC with milliseconds, as the mobile SDKs write it."""
    return moment.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"  # moments here are all UTC
