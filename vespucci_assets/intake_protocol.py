"""What an intake request means (SPEC section 11), as pure functions over bytes.

Routes, limits, gzip, JSON, where the API key comes from, the Webhooks-destination
signature, and turning a decoded body into normalized messages. No I/O and no
HTTP server here: `intake.py` wires these into the ASGI app.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import reprlib
import zlib
from dataclasses import dataclass, field
from datetime import datetime

from vespucci_assets.segment import MESSAGE_TYPES, CapturedMessage, Rejection, normalize

MAX_BODY_BYTES = 500 * 1024
# Segment's own batches stay under 500 KB uncompressed, so 8x that is generous for
# honest clients while a gzip bomb is stopped after inflating a few MB.
MAX_INFLATED_BYTES = 4 * 1024 * 1024
MAX_BATCH_MESSAGES = 2500
WRITE_KEY_FIELD = "writeKey"
SIGNATURE_HEADERS = ("x-signature", "x-segment-signature")

BATCH = "batch"
CALL = "call"
WEBHOOK = "webhook"


class IntakeError(Exception):
    """A whole request is refused; nothing of it is stored."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def body(self) -> dict:
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True)
class Route:
    kind: str
    call_type: str | None = None


ROUTES: dict[str, Route] = {
    "/v1/batch": Route(BATCH),
    "/v1/import": Route(BATCH),
    "/v1/b": Route(BATCH),
    "/webhook": Route(WEBHOOK),
    **{f"/v1/{call_type}": Route(CALL, call_type) for call_type in MESSAGE_TYPES},
}


def route_for(path: str) -> Route | None:
    return ROUTES.get(path.rstrip("/"))


@dataclass
class Submission:
    """The messages one request carries, and the API key its body names, if any."""

    messages: list
    envelope: dict = field(default_factory=dict)
    body_key: str | None = None


# --- decoding ---------------------------------------------------------------------


def inflate(body: bytes, content_encoding: str) -> bytes:
    encoding = content_encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "x-gzip"):
        raise IntakeError(415, "unsupported_encoding", f"Content-Encoding {encoding[:20]!r} is not supported; use gzip")
    return _gunzip(body)


def _gunzip(body: bytes) -> bytes:
    inflated = bytearray()
    rest = body
    while rest:  # concatenated gzip members are one valid gzip stream
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            inflated += inflater.decompress(rest, MAX_INFLATED_BYTES + 1 - len(inflated))
        except zlib.error as exc:
            raise IntakeError(400, "invalid_gzip", f"request body is not valid gzip: {exc}") from None
        if len(inflated) > MAX_INFLATED_BYTES:
            raise IntakeError(
                413, "inflated_too_large", f"request body inflates to more than {MAX_INFLATED_BYTES // 1024} KB"
            )
        if not inflater.eof:
            raise IntakeError(400, "invalid_gzip", "request body is truncated gzip")
        rest = inflater.unused_data
    return bytes(inflated)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def parse_json(data: bytes):
    if not data or data.isspace():
        raise IntakeError(400, "empty_body", "request body is empty")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise IntakeError(400, "invalid_encoding", f"request body is not UTF-8 (bad byte at offset {exc.start})") from None
    try:
        # NaN/Infinity would be written back out as invalid JSON, so they are refused here.
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise IntakeError(400, "invalid_json", "request body is nested too deeply") from None
    except ValueError as exc:
        raise IntakeError(400, "invalid_json", f"request body is not valid JSON: {exc}") from None


# --- authentication inputs ----------------------------------------------------------


def basic_auth_user(authorization: str | None) -> str | None:
    """The API key of `Authorization: Basic base64(key:)`, or None without Basic credentials."""
    if not authorization:
        return None
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except ValueError:  # binascii.Error and UnicodeDecodeError are both ValueErrors
        raise IntakeError(401, "invalid_api_key", "malformed HTTP Basic credentials") from None
    return decoded.partition(":")[0] or None


def verify_signature(secret: str, presented: str | None, body: bytes, payload) -> None:
    """Segment signs a single event's body; for a batch, classic docs say the first event only."""
    if not presented:
        raise IntakeError(401, "missing_signature", "this project requires an X-Signature header")
    presented = presented.strip().lower().removeprefix("sha1=")
    signed_forms = [body]
    if isinstance(payload, list) and payload:
        signed_forms.append(_first_element_text(body))
    for signed in signed_forms:
        expected = hmac.new(secret.encode("utf-8"), signed, hashlib.sha1).hexdigest()
        if hmac.compare_digest(expected, presented):
            return
    raise IntakeError(401, "invalid_signature", "X-Signature does not match the request body")


def _first_element_text(body: bytes) -> bytes:
    """The exact bytes of a JSON array's first element, as the sender serialized it."""
    text = body.decode("utf-8-sig")
    start = text.index("[") + 1
    while text[start].isspace():
        start += 1
    _, end = json.JSONDecoder().raw_decode(text, start)
    return text[start:end].encode("utf-8")


# --- messages -------------------------------------------------------------------------


def read_submission(route: Route, payload) -> Submission:
    if route.kind == BATCH:
        return _batch_submission(payload)
    if route.kind == CALL:
        return _call_submission(payload, route.call_type)
    return _webhook_submission(payload)


def _batch_submission(payload) -> Submission:
    if not isinstance(payload, dict):
        raise IntakeError(400, "invalid_body", 'request body must be a JSON object with a "batch" array')
    batch = payload.get("batch")
    if not isinstance(batch, list):
        raise IntakeError(400, "invalid_batch", '"batch" must be an array of messages')
    _check_count(batch)
    envelope = {k: v for k, v in payload.items() if k not in ("batch", WRITE_KEY_FIELD)}
    return Submission([_without_write_key(m) for m in batch], envelope, _write_key_of(payload))


def _call_submission(payload, call_type: str | None) -> Submission:
    if not isinstance(payload, dict):
        raise IntakeError(400, "invalid_body", "request body must be a JSON object (one message)")
    message = {**_without_write_key(payload), "type": call_type}
    return Submission([message], body_key=_write_key_of(payload))


def _webhook_submission(payload) -> Submission:
    if isinstance(payload, dict):
        return Submission([_without_write_key(payload)], body_key=_write_key_of(payload))
    if not isinstance(payload, list):
        raise IntakeError(400, "invalid_body", "request body must be one event (JSON object) or an array of events")
    _check_count(payload)
    first_key = _write_key_of(payload[0]) if payload else None
    return Submission([_without_write_key(m) for m in payload], body_key=first_key)


def _check_count(messages: list) -> None:
    if len(messages) > MAX_BATCH_MESSAGES:
        raise IntakeError(
            413, "too_many_messages", f"{len(messages)} messages in one request; the limit is {MAX_BATCH_MESSAGES}"
        )


def _write_key_of(message) -> str | None:
    key = message.get(WRITE_KEY_FIELD) if isinstance(message, dict) else None
    return key if isinstance(key, str) and key else None


def _without_write_key(message):
    # API keys must never reach the capture store, where they would sit in plain text.
    if isinstance(message, dict) and WRITE_KEY_FIELD in message:
        return {k: v for k, v in message.items() if k != WRITE_KEY_FIELD}
    return message


def normalize_all(submission: Submission, received_at: datetime, default_type: str | None) -> list:
    return [_normalize_or_quarantine(m, received_at, submission.envelope, default_type) for m in submission.messages]


def _normalize_or_quarantine(raw, received_at: datetime, envelope: dict, default_type: str | None):
    try:
        return normalize(raw, received_at, envelope=envelope, default_type=default_type)
    except Exception as exc:  # noqa: BLE001 - one odd message must never fail (and so endlessly retry) its batch
        return quarantined(raw, received_at, f"unusable message ({type(exc).__name__})")


def quarantined(raw, received_at: datetime, reason: str) -> Rejection:
    return Rejection(reason=reason, raw=_storable_text(raw), received_at=received_at)


def _storable_text(raw) -> str:
    try:
        return json.dumps(raw, ensure_ascii=True, separators=(",", ":"), default=str)
    except (ValueError, RecursionError):
        return reprlib.repr(raw)


def storable_or_quarantined(item: CapturedMessage | Rejection) -> CapturedMessage | Rejection:
    """The item itself if the capture store can encode it, else a quarantine record saying why."""
    try:
        json.dumps(item.to_record(0), ensure_ascii=False, default=str).encode("utf-8")
        return item
    except (ValueError, RecursionError) as exc:  # UnicodeEncodeError is a ValueError
        original = item.raw if isinstance(item, Rejection) else vars(item)
        return quarantined(original, item.received_at, f"message cannot be stored ({type(exc).__name__})")
