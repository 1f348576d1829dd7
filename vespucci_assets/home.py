"""Where Vespucci keeps its state: everything lives under VESPUCCI_HOME."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Home:
    root: Path

    @classmethod
    def from_env(cls) -> "Home":
        return cls(Path(os.environ.get("VESPUCCI_HOME", ".vespucci")).resolve())

    @property
    def registry_path(self) -> Path:
        return self.root / "projects.json"

    @property
    def capture_dir(self) -> Path:
        return self.root / "capture"

    @property
    def warehouse_path(self) -> Path:
        return self.root / "vespucci.duckdb"

    @property
    def dagster_home(self) -> Path:
        return Path(os.environ["DAGSTER_HOME"]).resolve() if os.environ.get("DAGSTER_HOME") else self.root / "dagster"

    def ensure(self) -> "Home":
        self.root.mkdir(parents=True, exist_ok=True)
        self.capture_dir.mkdir(parents=True, exist_ok=True)
        return self
