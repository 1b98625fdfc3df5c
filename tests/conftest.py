"""Shared fixtures: the real Eunomia sample and small synthetic stores."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from medlab.cdm.loader import load_omop_csv
from medlab.cdm.store import init_store
from medlab.synth.generate import synthesize

settings.register_profile(
    "ci",
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
settings.register_profile("dev", max_examples=20, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

REPO = Path(__file__).resolve().parents[1]
EUNOMIA = Path(os.environ.get("MEDLAB_EUNOMIA_DIR", REPO.parent / "shared/data/eunomia-gibleed"))


@pytest.fixture(scope="session")
def eunomia_dir() -> Path:
    """The Eunomia GiBleed CSV export (OMOP CDM v5.3.1), as shipped in shared/."""
    if not (EUNOMIA / "PERSON.csv").exists():
        pytest.skip(f"Eunomia sample not found at {EUNOMIA} (set MEDLAB_EUNOMIA_DIR)")
    return EUNOMIA


@pytest.fixture(scope="session")
def eunomia_store(tmp_path_factory: pytest.TempPathFactory, eunomia_dir: Path) -> Path:
    """A node store with Eunomia loaded (read it, do not change it)."""
    store = tmp_path_factory.mktemp("eunomia") / "eunomia.duckdb"
    init_store(store)
    load_omop_csv(store, eunomia_dir)
    return store


@pytest.fixture(scope="session")
def synth_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three small synthetic hospitals (1,500 patients, seed 11)."""
    out = tmp_path_factory.mktemp("synth_small")
    synthesize(out, sites=3, patients=1500, seed=11)
    return out


@pytest.fixture(scope="session")
def synth_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The issue's reference run: 3 sites, 30,000 patients, seed 7."""
    out = tmp_path_factory.mktemp("synth_study")
    synthesize(out, sites=3, patients=30000, seed=7)
    return out


@pytest.fixture
def writable_copy(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Copy a store to a temporary path so a test may change it."""

    def copy(store: Path) -> Path:
        target = tmp_path / store.name
        shutil.copy(store, target)
        return target

    return copy


@pytest.fixture(autouse=True, scope="session")
def hub_directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The hub's key and log for the test session, never the user's ~/.medlab."""
    hub = tmp_path_factory.mktemp("hub")
    previous = os.environ.get("MEDLAB_HUB_DIR")
    os.environ["MEDLAB_HUB_DIR"] = str(hub)
    yield hub
    if previous is None:
        del os.environ["MEDLAB_HUB_DIR"]
    else:
        os.environ["MEDLAB_HUB_DIR"] = previous


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A real PostgreSQL server on 127.0.0.1: ``$MEDLAB_PG_URL`` (``make test`` starts one
    with scripts/pg.sh), or a throwaway cluster started here and stopped afterwards."""
    url = os.environ.get("MEDLAB_PG_URL")
    if url:
        yield url
        return
    directory = Path(tempfile.mkdtemp(prefix="medlab-pg-"))
    script = str(REPO / "scripts" / "pg.sh")
    subprocess.run([script, "start", str(directory)], check=True)
    try:
        yield (directory / "url").read_text().strip()
    finally:
        subprocess.run([script, "stop", str(directory)], check=False)


@pytest.fixture
def postgres_url(postgres_server: str) -> str:
    """A fresh, empty database on that server."""
    from sqlalchemy import create_engine

    name = "t_" + secrets.token_hex(6)
    engine = create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    engine.dispose()
    return postgres_server.rsplit("/", 1)[0] + "/" + name
