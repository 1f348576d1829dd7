"""`vespucci import`: NDJSON, JSON arrays, batch bodies, .gz, and folders of Segment S3 archives.

Files go through the same validation as the intake. Every file is parsed before
anything is written, so a malformed file leaves no partial state behind.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from vespucci_assets.capture import CaptureWriter
from vespucci_assets.segment import normalize

IMPORTABLE_SUFFIXES = (".json", ".ndjson", ".jsonl", ".gz", ".log")
CHUNK = 5000


class ImportFailed(ValueError):
    """A file that cannot be imported; the message names it and the problem."""


@dataclass
class ImportSummary:
    files: int = 0
    accepted: int = 0
    quarantined: int = 0


@dataclass(frozen=True)
class Upload:
    """Messages read together, with the batch envelope they came in (if any)."""

    messages: list
    envelope: dict | None


def collect_files(paths: list[str | Path]) -> list[Path]:
    files: list[Path] = []
    for given in paths:
        path = Path(given)
        if not path.exists():
            raise ImportFailed(f"{path}: no such file or folder")
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(IMPORTABLE_SUFFIXES))
            if not found:
                raise ImportFailed(f"{path}: folder holds no .json, .ndjson, .jsonl or .gz files")
            files.extend(found)
        else:
            files.append(path)
    return files


def read_uploads(path: Path) -> Iterator[Upload]:
    """The messages of one file; raises ImportFailed naming the file on anything malformed."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        text = raw.decode("utf-8")
    except PermissionError:
        raise ImportFailed(f"{path}: permission denied") from None
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise ImportFailed(f"{path}: cannot read: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ImportFailed(f"{path}: not UTF-8 text (byte {exc.start})") from None
    stripped = text.lstrip()
    if not stripped:
        return
    if stripped[0] == "[" or (stripped[0] == "{" and "\n" not in stripped.strip()):
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ImportFailed(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
        yield _upload(document, path, 1)
        return
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            document = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ImportFailed(f"{path}: invalid JSON on line {lineno}: {exc.msg}") from None
        yield _upload(document, path, lineno)


def _upload(document, path: Path, lineno: int) -> Upload:
    if isinstance(document, list):
        return Upload(document, None)
    if isinstance(document, dict) and isinstance(document.get("batch"), list):
        return Upload(document["batch"], {k: v for k, v in document.items() if k != "batch"})
    if isinstance(document, dict):
        return Upload([document], None)
    raise ImportFailed(f"{path}: line {lineno} is not a JSON object or array")


def import_files(writer: CaptureWriter, project_id: str, paths: list[str | Path]) -> ImportSummary:
    files = collect_files(paths)
    for path in files:
        for _ in read_uploads(path):
            pass
    summary = ImportSummary(files=len(files))
    for path in files:
        pending = []
        for upload in read_uploads(path):
            received_at = datetime.now(timezone.utc)
            pending.extend(normalize(m, received_at, envelope=upload.envelope) for m in upload.messages)
            if len(pending) >= CHUNK:
                _flush(writer, project_id, pending, summary)
        _flush(writer, project_id, pending, summary)
    return summary


def _flush(writer: CaptureWriter, project_id: str, pending: list, summary: ImportSummary) -> None:
    if pending:
        result = writer.append(project_id, pending)
        summary.accepted += result.accepted
        summary.quarantined += result.quarantined
        pending.clear()
