"""Resources: where the Vespucci state lives, and the DuckDB warehouse."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource
from pydantic import PrivateAttr

from vespucci_assets.capture import CaptureStore
from vespucci_assets.engines import DUCKDB_ENGINE, EngineError, connect_engine
from vespucci_assets.home import Home
from vespucci_assets.projects import Project, ProjectError, Registry
from vespucci_assets.warehouse import DEFAULT_LOCK_TIMEOUT_S, SharedWriter


class VespucciHome(dg.ConfigurableResource):
    """The VESPUCCI_HOME folder: project registry and capture store."""

    root: str

    @property
    def home(self) -> Home:
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


class Warehouse(DuckDBResource):
    """The DuckDB file, opened by one writer at a time (see `vespucci_assets.warehouse`), schema in place.

    Within a run, the steps executing in one process share the writer (`SharedWriter`), released
    between steps only when idle and at the end of the run.
    """

    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S
    _writer: SharedWriter | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._writer = SharedWriter(self.database, self.lock_timeout_s)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._writer is not None:
            self._writer.close()

    @contextlib.contextmanager
    def get_connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        writer = self._writer or SharedWriter(self.database, self.lock_timeout_s)
        try:
            with writer.connection() as conn:
                yield conn
        finally:
            if writer is not self._writer:
                writer.close()

    @contextlib.contextmanager
    def project_connection(self, project: Project) -> Iterator:
        """Where this project's tables are computed: this DuckDB file, its own warehouse, or Spark."""
        if project.engine == DUCKDB_ENGINE:
            with self.get_connection() as conn:
                yield conn
            return
        try:
            engine = connect_engine(project, Path(self.database).parent)
        except EngineError as exc:
            raise dg.Failure(description=f"project {project.project_id!r}: {exc}") from None
        try:
            yield engine
        finally:
            engine.close()


def build_resources(home: Home) -> dict:
    return {
        "vespucci": VespucciHome(root=str(home.root)),
        "duckdb": Warehouse(database=str(home.warehouse_path)),
    }
