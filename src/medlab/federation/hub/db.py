"""The hub's state in a relational database (SQLAlchemy 2): SQLite ``DIR/hub.db`` by default,
any SQLAlchemy URL by ``--db`` (PostgreSQL: ``postgresql+psycopg://…``). The URL given to
``hub init`` is recorded in ``DIR/database`` (mode 0600: it may hold a password), so every
later command on that directory finds the same database without ``--db``.

Nodes (onboarding), studies, their tasks (one per node and round, with the node's released
output once uploaded), the nonces seen (replay protection) and each study's result files;
users, projects, agreements and the rest of governance are in
:mod:`medlab.governance.schema`, on the same metadata. The schema is created and upgraded by
the Alembic history in ``medlab/governance/migrations``. Every change is committed before
the hub acknowledges it.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from medlab.governance.schema import Base, utcnow

__all__ = ["Base", "utcnow"]


class Node(Base):
    __tablename__ = "nodes"
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    public_key: Mapped[str] = mapped_column(Text)
    key_id: Mapped[str] = mapped_column(String(100), unique=True)
    added_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_seen: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    version: Mapped[str | None] = mapped_column(String(100), nullable=True)
    organisation: Mapped[str | None] = mapped_column(
        ForeignKey("organisations.name"), nullable=True
    )


class Study(Base):
    __tablename__ = "studies"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    spec: Mapped[dict] = mapped_column(JSON)  # type: ignore[type-arg]
    spec_hash: Mapped[str] = mapped_column(String(100))
    researcher: Mapped[str] = mapped_column(ForeignKey("users.name"))
    project: Mapped[str | None] = mapped_column(String(100), nullable=True)
    min_sites: Mapped[int] = mapped_column(Integer)
    deadline: Mapped[dt.datetime] = mapped_column(DateTime)
    signature: Mapped[str | None] = mapped_column(String(200), nullable=True)
    state: Mapped[str] = mapped_column(String(20), default="running")
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    nodes: Mapped[list[str]] = mapped_column(JSON, default=list)
    submitted_project: Mapped[str | None] = mapped_column(String(100), nullable=True)
    epsilon: Mapped[float] = mapped_column(Float, default=0.0)
    rho: Mapped[float] = mapped_column(Float, default=0.0)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Task(Base):
    __tablename__ = "tasks"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    study_id: Mapped[str] = mapped_column(ForeignKey("studies.id"), index=True)
    node: Mapped[str] = mapped_column(ForeignKey("nodes.name"), index=True)
    round: Mapped[int] = mapped_column(Integer, default=1)
    state: Mapped[str] = mapped_column(String(30), default="pending")
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    envelope: Mapped[dict] = mapped_column(JSON)  # type: ignore[type-arg]
    output: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # type: ignore[type-arg]
    output_hash: Mapped[str | None] = mapped_column(String(100), nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    ended_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class Nonce(Base):
    __tablename__ = "nonces"
    node: Mapped[str] = mapped_column(String(100), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(128), primary_key=True)
    seen_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)


class NodeProfile(Base):
    """A node's profile as its agent reported it (one row per change; the newest is the
    node's profile now, the older ones its data-quality history across snapshots)."""

    __tablename__ = "node_profiles"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    node: Mapped[str] = mapped_column(ForeignKey("nodes.name"), index=True)
    digest: Mapped[str] = mapped_column(String(100))
    fingerprint: Mapped[str | None] = mapped_column(String(100), nullable=True)
    profile: Mapped[dict] = mapped_column(JSON)  # type: ignore[type-arg]
    received_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    seen_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Concept(Base):
    """A concept of the vocabulary the operator loaded for the study builder's search (the
    public OMOP vocabularies the nodes share; never a hospital's local concepts)."""

    __tablename__ = "vocabulary_concepts"
    concept_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(255), index=True)
    domain: Mapped[str] = mapped_column(String(20), index=True)
    vocabulary: Mapped[str] = mapped_column(String(20))
    concept_class: Mapped[str] = mapped_column(String(20))
    standard: Mapped[str | None] = mapped_column(String(1), nullable=True)
    code: Mapped[str] = mapped_column(String(50))


class ConceptAncestor(Base):
    """An ancestor and one of its descendants (each concept is its own, at level 0)."""

    __tablename__ = "vocabulary_ancestors"
    ancestor: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    descendant: Mapped[int] = mapped_column(
        BigInteger, primary_key=True, autoincrement=False, index=True
    )


class StudyFile(Base):
    __tablename__ = "study_files"
    study_id: Mapped[str] = mapped_column(ForeignKey("studies.id"), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    content: Mapped[bytes] = mapped_column(LargeBinary)


DATABASE_FILE = "database"


def default_url(directory: Path) -> str:
    """The hub's default database: SQLite in ``DIR/hub.db``."""
    return f"sqlite:///{(directory / 'hub.db').resolve()}"


def record_url(directory: Path, url: str) -> None:
    """Remember ``url`` as the database of the hub in ``directory`` (written whole, 0600)."""
    path = directory / DATABASE_FILE
    staged = path.with_name(path.name + ".new")
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(url + "\n")
    os.replace(staged, path)


def url_of(directory: Path, url: str | None = None) -> str:
    """The database of the hub in ``directory``: ``url`` when given, else the one recorded
    by ``hub init``, else SQLite in ``DIR/hub.db``."""
    if url:
        return url
    recorded = directory / DATABASE_FILE
    if recorded.is_file():
        return recorded.read_text().strip()
    return default_url(directory)


def connect(url: str) -> sessionmaker[Session]:
    """A session factory on ``url``, its schema migrated to the latest revision first."""
    from medlab.governance import migrate

    engine = create_engine(url, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":
        _sqlite_pragmas(engine)
    migrate.upgrade(engine)
    return sessionmaker(engine, expire_on_commit=False)


def _sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(connection, _record) -> None:  # type: ignore[no-untyped-def]
        connection.isolation_level = None  # SQLAlchemy begins, below
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
        cursor.execute("PRAGMA synchronous=FULL")  # a commit survives a crash
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:  # type: ignore[no-untyped-def]
        # A writing transaction takes the write lock at the start: one that read first and
        # then wrote would otherwise fail at once ("database is locked") when another writer
        # is in, instead of waiting its turn (busy_timeout). Readers never wait (WAL).
        immediate = connection.get_execution_options().get("writes", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose changes are committed together, or not at all."""
    with factory() as session, session.begin():
        session.connection(execution_options={"writes": True})
        yield session
