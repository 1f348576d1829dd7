import pytest


@pytest.fixture
def vespucci_home(tmp_path, monkeypatch):
    """A fresh VESPUCCI_HOME (and Dagster instance inside it) for one test."""
    home = tmp_path / "home"
    monkeypatch.setenv("VESPUCCI_HOME", str(home))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    return home
