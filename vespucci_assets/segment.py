"""Segment message validation and normalization (SPEC section 3).

Turns one raw Segment call into a `CapturedMessage` ready for the capture store,
or a `Rejection` that says why it must be quarantined. Knows nothing of storage.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

import orjson

MESSAGE_TYPES = ("track", "screen", "page", "identify", "group", "alias")
MEMBER_TYPES = ("track", "screen", "page")
MAX_MESSAGE_BYTES = 32 * 1024
MAX_MESSAGE_ID_CHARS = 100
MAX_FUTURE_SKEW = timedelta(hours=24)
FIRST_DAY = date.fromisoformat(os.environ.get("VESPUCCI_FIRST_DAY", "2024-01-01"))
OBJECT_FIELDS = ("properties", "context", "traits", "integrations")
TOP_LEVEL_FIELDS = {
    "messageId", "type", "event", "name", "anonymousId", "userId", "timestamp",
    "originalTimestamp", "sentAt", "receivedAt", "properties", "context", "traits",
}


@dataclass(frozen=True)
class CapturedMessage:
    message_id: str
    type: str
    event: str | None
    name: str | None
    anonymous_id: str | None
    user_id: str | None
    timestamp: datetime
    original_timestamp: datetime | None
    sent_at: datetime | None
    received_at: datetime
    properties: dict
    context: dict
    traits: dict
    extra: dict

    @property
    def device_key(self) -> str:
        return self.anonymous_id or self.user_id  # type: ignore[return-value]

    @property
    def event_day(self) -> date:
        return self.timestamp.date()

    def to_record(self, ingested_ns: int) -> dict:
        return {
            "message_id": self.message_id,
            "type": self.type,
            "event": self.event,
            "name": self.name,
            "anonymous_id": self.anonymous_id,
            "user_id": self.user_id,
            "timestamp": format_ts(self.timestamp),
            "original_timestamp": format_ts(self.original_timestamp),
            "sent_at": format_ts(self.sent_at),
            "received_at": format_ts(self.received_at),
            "ingested_ns": ingested_ns,
            "properties": self.properties,
            "context": self.context,
            "traits": self.traits,
            "extra": self.extra,
        }


@dataclass(frozen=True)
class Rejection:
    reason: str
    raw: str
    received_at: datetime

    def to_record(self, ingested_ns: int) -> dict:
        return {
            "received_at": format_ts(self.received_at),
            "reason": self.reason,
            "raw": self.raw,
            "ingested_ns": ingested_ns,
        }


class InvalidMessage(ValueError):
    pass


def format_ts(value: datetime | None) -> str | None:
    if value is None:
        return None
    # isoformat is several times faster than strftime on the intake's hot path; same text.
    utc = value if value.tzinfo is timezone.utc else value.astimezone(timezone.utc)
    return utc.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def parse_ts(value, field: str) -> datetime | None:
    """ISO-8601 (naive means UTC) to an aware UTC datetime; None for absent."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidMessage(f"{field} must be an ISO-8601 string")
    parsed = _parse_iso(value)
    if parsed is None:
        raise InvalidMessage(f"{field} is not an ISO-8601 timestamp: {value[:40]!r}")
    return parsed


@functools.lru_cache(maxsize=8192)
def _parse_iso(value: str) -> datetime | None:
    """Cached: every message of a batch repeats the batch's sentAt."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


def _identifier(message: dict, field: str) -> str | None:
    value = message.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise InvalidMessage(f"{field} must be a string")
    text = str(value).strip()
    return text or None


def _optional_text(message: dict, field: str) -> str | None:
    value = message.get(field)
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        raise InvalidMessage(f"{field} must be a string")
    return str(value)


def _object(message: dict, field: str) -> dict:
    value = message.get(field)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidMessage(f"{field} must be an object")
    return value


def merge_envelope(item: dict, envelope: dict | None) -> dict:
    """Batch envelope context/integrations merge into each item; the item's own keys win."""
    if not envelope:
        return item
    merged = dict(item)
    for field in ("context", "integrations"):
        outer = envelope.get(field)
        if isinstance(outer, dict) and outer:
            inner = item.get(field)
            merged[field] = {**outer, **inner} if isinstance(inner, dict) else (inner if inner is not None else outer)
    return merged


def fallback_message_id(message: dict) -> str:
    """Deterministic id for a message sent without one, so a re-sent copy is still a duplicate."""
    canonical = json.dumps(message, sort_keys=True, separators=(",", ":"), default=str)
    return "vsp-" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]


def normalize(
    raw,
    received_at: datetime,
    *,
    envelope: dict | None = None,
    default_type: str | None = None,
) -> CapturedMessage | Rejection:
    """Validate one Segment call and compute its event time per SPEC section 3."""
    raw_json = _compact_json(raw)
    try:
        if raw_json is None:
            raise InvalidMessage("message is not encodable as UTF-8 JSON (a lone surrogate, or nested too deep)")
        if len(raw_json) > MAX_MESSAGE_BYTES:
            raise InvalidMessage(f"message larger than {MAX_MESSAGE_BYTES // 1024} KB")
        if not isinstance(raw, dict):
            raise InvalidMessage("message is not a JSON object")
        return _normalize(merge_envelope(raw, envelope), received_at, envelope or {}, default_type)
    except InvalidMessage as exc:
        return Rejection(reason=str(exc), raw=_raw_text(raw_json, raw), received_at=received_at)


def _compact_json(value) -> bytes | None:
    """The message as compact UTF-8 JSON, whose size the 32 KB limit counts; None if it has none.

    orjson first, as this runs for every message; json for what orjson refuses (integers over 64 bits).
    """
    try:
        return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS)
    except (orjson.JSONEncodeError, TypeError):
        try:
            return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str).encode("utf-8")
        except (ValueError, RecursionError):  # UnicodeEncodeError is a ValueError
            return None


def _raw_text(raw_json: bytes | None, raw) -> str:
    if raw_json is not None:
        return raw_json.decode("utf-8")
    try:
        return json.dumps(raw, ensure_ascii=True, separators=(",", ":"), default=str)
    except (ValueError, RecursionError):
        return repr(raw)[:MAX_MESSAGE_BYTES]


def _normalize(message: dict, server_time: datetime, envelope: dict, default_type: str | None) -> CapturedMessage:
    message_type = message.get("type") or default_type
    if message_type is None:
        raise InvalidMessage("missing type")
    if not isinstance(message_type, str) or message_type.lower() not in MESSAGE_TYPES:
        raise InvalidMessage(f"unknown type {str(message_type)[:40]!r}")
    message_type = message_type.lower()
    anonymous_id = _identifier(message, "anonymousId")
    user_id = _identifier(message, "userId")
    if anonymous_id is None and user_id is None:
        raise InvalidMessage("neither anonymousId nor userId")
    message_id = _identifier(message, "messageId") or fallback_message_id(message)
    if len(message_id) > MAX_MESSAGE_ID_CHARS:
        raise InvalidMessage(f"messageId longer than {MAX_MESSAGE_ID_CHARS} characters")
    event = _optional_text(message, "event")
    if message_type == "track" and not event:
        raise InvalidMessage("track without event name")
    name = _optional_text(message, "name")
    properties = _object(message, "properties")
    context = _object(message, "context")
    traits = _object(message, "traits")
    _object(message, "integrations")

    segment_received_at = parse_ts(message.get("receivedAt"), "receivedAt")
    sent_at = parse_ts(message.get("sentAt"), "sentAt") or parse_ts(envelope.get("sentAt"), "sentAt")
    if segment_received_at is not None:
        received_at = segment_received_at
        original = parse_ts(message.get("originalTimestamp"), "originalTimestamp")
        timestamp = parse_ts(message.get("timestamp"), "timestamp") or _corrected(received_at, sent_at, original)
    else:
        received_at = server_time
        original = parse_ts(message.get("timestamp"), "timestamp") or parse_ts(
            message.get("originalTimestamp"), "originalTimestamp"
        )
        timestamp = _corrected(received_at, sent_at, original)
    if timestamp - received_at > MAX_FUTURE_SKEW:
        raise InvalidMessage("timestamp more than 24 h after receivedAt")
    if timestamp.date() < FIRST_DAY:
        raise InvalidMessage(f"timestamp before the first supported day {FIRST_DAY.isoformat()}")

    extra = {k: v for k, v in message.items() if k not in TOP_LEVEL_FIELDS and v is not None}
    return CapturedMessage(
        message_id=message_id,
        type=message_type,
        event=event,
        name=name,
        anonymous_id=anonymous_id,
        user_id=user_id,
        timestamp=timestamp,
        original_timestamp=original,
        sent_at=sent_at,
        received_at=received_at,
        properties=properties,
        context=context,
        traits=traits,
        extra=extra,
    )


def _corrected(received_at: datetime, sent_at: datetime | None, original: datetime | None) -> datetime:
    if original is None:
        return received_at
    if sent_at is None:
        return original
    return received_at - (sent_at - original)
