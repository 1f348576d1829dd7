"""Project registry: one Segment source per project, with hashed API keys.

Stored as one JSON file under VESPUCCI_HOME, rewritten atomically under an
exclusive lock so concurrent CLI calls and the intake never see half a file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

PROJECT_ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
TRACKING_METHODS = ("action", "time", "auto")
SOURCES = ("webhook", "warehouse")
# Where a project's tables are computed: the embedded DuckDB file, its own Segment warehouse, or Spark.
ENGINES = ("duckdb", "warehouse", "spark")
WAREHOUSE_SCHEMES = ("postgresql", "postgres", "redshift", "duckdb")
ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
MIN_TIMEOUT_MINUTES = 1
MAX_TIMEOUT_MINUTES = 24 * 60
MAX_SESSION_HOURS = 24
API_KEY_PREFIX = "vsp_"


class ProjectError(ValueError):
    """A registry operation that cannot be carried out; the message is user-facing."""


@dataclass(frozen=True)
class Project:
    project_id: str
    name: str
    tracking_method: str = "auto"
    session_timeout_minutes: int = 30
    max_session_hours: int = MAX_SESSION_HOURS
    source: str = "webhook"
    warehouse_url: str | None = None
    warehouse_schema: str | None = None
    webhook_secret: str | None = None
    engine: str = "duckdb"
    api_key_hashes: tuple[str, ...] = field(default_factory=tuple)
    created_at: str = ""

    @property
    def session_timeout_s(self) -> int:
        return self.session_timeout_minutes * 60

    @property
    def max_session_s(self) -> int:
        return self.max_session_hours * 3600

    def public_dict(self) -> dict:
        data = asdict(self)
        data.pop("api_key_hashes")
        data["webhook_secret"] = "set" if self.webhook_secret else None
        data["warehouse_url"] = redact_url(self.warehouse_url)
        data["api_keys"] = len(self.api_key_hashes)
        return data


def hash_api_key(api_key: str) -> str:
    # Keys are 256-bit random tokens, so a fast hash is as strong as a slow one here.
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def validate_settings(project: Project) -> Project:
    if not PROJECT_ID_PATTERN.fullmatch(project.project_id):
        raise ProjectError(
            f"invalid project id {project.project_id!r}: use 1-63 of a-z 0-9 _ -, starting with a letter or digit"
        )
    if project.tracking_method not in TRACKING_METHODS:
        raise ProjectError(f"invalid tracking method {project.tracking_method!r}: use one of {', '.join(TRACKING_METHODS)}")
    if not MIN_TIMEOUT_MINUTES <= project.session_timeout_minutes <= MAX_TIMEOUT_MINUTES:
        raise ProjectError(f"session timeout must be between {MIN_TIMEOUT_MINUTES} and {MAX_TIMEOUT_MINUTES} minutes")
    if not 1 <= project.max_session_hours <= MAX_SESSION_HOURS:
        raise ProjectError(f"max session duration must be between 1 and {MAX_SESSION_HOURS} hours")
    if project.max_session_hours * 60 < project.session_timeout_minutes:
        raise ProjectError("max session duration must not be shorter than the session timeout")
    if project.source not in SOURCES:
        raise ProjectError(f"invalid source {project.source!r}: use one of {', '.join(SOURCES)}")
    if project.source == "warehouse":
        if not project.warehouse_url or not project.warehouse_schema:
            raise ProjectError("a warehouse source needs --warehouse-url and --warehouse-schema")
        if urlsplit(project.warehouse_url).scheme not in WAREHOUSE_SCHEMES:
            raise ProjectError(f"invalid --warehouse-url {redact_url(project.warehouse_url)!r}: use postgresql://... or duckdb:///path")
    if project.engine not in ENGINES:
        raise ProjectError(f"invalid engine {project.engine!r}: use one of {', '.join(ENGINES)}")
    if project.engine == "warehouse" and (
        project.source != "warehouse" or urlsplit(project.warehouse_url or "").scheme not in ("postgresql", "postgres")
    ):
        raise ProjectError(
            "--engine warehouse computes inside the project's Segment warehouse: it needs --source warehouse "
            "with a postgresql:// --warehouse-url"
        )
    if project.engine == "spark" and project.source != "webhook":
        raise ProjectError("--engine spark reads the capture store: use it with --source webhook (or --engine warehouse)")
    return project


def redact_url(url: str | None) -> str | None:
    """The URL without its password (a ${VAR} reference is kept: it names, not holds, the secret)."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.password is None or ENV_REFERENCE.fullmatch(parts.password):
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class Registry:
    def __init__(self, path: Path):
        self.path = Path(path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_suffix(".lock")
        with open(lock_path, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield self._read()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self) -> dict:
        if not self.path.exists():
            return {"projects": {}}
        try:
            return json.loads(self.path.read_text())
        except json.JSONDecodeError as exc:
            raise ProjectError(f"project registry {self.path} is corrupt: {exc}") from exc

    def _write(self, data: dict) -> None:
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    @staticmethod
    def _load(raw: dict) -> Project:
        raw = dict(raw)
        raw["api_key_hashes"] = tuple(raw.get("api_key_hashes", ()))
        known = Project.__dataclass_fields__
        return Project(**{k: v for k, v in raw.items() if k in known})

    @staticmethod
    def _dump(project: Project) -> dict:
        data = asdict(project)
        data["api_key_hashes"] = list(project.api_key_hashes)
        return data

    def list(self) -> list[Project]:
        data = self._read()
        return [self._load(raw) for _, raw in sorted(data["projects"].items())]

    def get(self, project_id: str) -> Project:
        raw = self._read()["projects"].get(project_id)
        if raw is None:
            raise ProjectError(f"unknown project {project_id!r} (see `vespucci projects list`)")
        return self._load(raw)

    def add(self, project: Project) -> tuple[Project, str]:
        """Register a project; returns it with its API key, which is shown only this once."""
        api_key = new_api_key()
        project = validate_settings(
            replace(
                project,
                api_key_hashes=(hash_api_key(api_key),),
                created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            )
        )
        with self._locked() as data:
            if project.project_id in data["projects"]:
                raise ProjectError(f"project {project.project_id!r} already exists")
            data["projects"][project.project_id] = self._dump(project)
            self._write(data)
        return project, api_key

    def update(self, project_id: str, **changes) -> Project:
        with self._locked() as data:
            if project_id not in data["projects"]:
                raise ProjectError(f"unknown project {project_id!r} (see `vespucci projects list`)")
            project = validate_settings(replace(self._load(data["projects"][project_id]), **changes))
            data["projects"][project_id] = self._dump(project)
            self._write(data)
        return project

    def rotate_key(self, project_id: str, keep_old: bool = False) -> str:
        api_key = new_api_key()
        current = self.get(project_id)
        hashes = (*current.api_key_hashes, hash_api_key(api_key)) if keep_old else (hash_api_key(api_key),)
        self.update(project_id, api_key_hashes=hashes)
        return api_key

    def authenticate(self, api_key: str) -> Project | None:
        """The project this API key belongs to, or None."""
        if not api_key:
            return None
        presented = hash_api_key(api_key)
        found = None
        for project in self.list():
            for stored in project.api_key_hashes:
                if hmac.compare_digest(stored, presented):
                    found = project
        return found
