"""Resources: where the Vespucci state lives, and the DuckDB warehouse."""

from __future__ import annotations

import dagster as dg
from dagster_duckdb import DuckDBResource

from vespucci_assets.capture import CaptureStore
from vespucci_assets.home import Home
from vespucci_assets.projects import Project, ProjectError, Registry


class VespucciHome(dg.ConfigurableResource):
    """The VESPUCCI_HOME folder: project registry and capture store."""

    root: str

    @property
    def home(self) -> Home:
        from pathlib import Path

        return Home(Path(self.root))

    def registry(self) -> Registry:
        return Registry(self.home.registry_path)

    def capture_store(self) -> CaptureStore:
        return CaptureStore(self.home.capture_dir)

    def project(self, project_id: str) -> Project:
        try:
            return self.registry().get(project_id)
        except ProjectError as exc:
            raise dg.Failure(description=f"{exc}; add it with `vespucci projects add {project_id}`") from None


def build_resources(home: Home) -> dict:
    return {
        "vespucci": VespucciHome(root=str(home.root)),
        "duckdb": DuckDBResource(database=str(home.warehouse_path)),
    }
