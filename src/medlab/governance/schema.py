"""The governance tables of the hub (SQLAlchemy 2): organisations, users, tokens, projects,
members, data-use agreements, approvals, budget holds and metered usage.

They share one metadata with the hub's own tables (:mod:`medlab.federation.hub.db`), so one
Alembic history (``medlab/governance/migrations``) creates and upgrades the whole hub
database, on SQLite or PostgreSQL alike. Times are UTC without tzinfo.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    """Every table of the hub's database."""


def utcnow() -> dt.datetime:
    """Now, UTC, without tzinfo (SQLite keeps naive datetimes)."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Setting(Base):
    """The hub's own settings (``governance``: ``authorized`` or ``open``)."""

    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Organisation(Base):
    __tablename__ = "organisations"
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class User(Base):
    __tablename__ = "users"
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    organisation: Mapped[str | None] = mapped_column(
        ForeignKey("organisations.name"), nullable=True
    )
    role: Mapped[str] = mapped_column(String(20))
    public_key: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    disabled_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class Token(Base):
    __tablename__ = "tokens"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    user: Mapped[str] = mapped_column(ForeignKey("users.name"), index=True)
    token_hash: Mapped[str] = mapped_column(String(100), unique=True)
    scopes: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class Project(Base):
    __tablename__ = "projects"
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    organisation: Mapped[str] = mapped_column(ForeignKey("organisations.name"))
    purpose: Mapped[str] = mapped_column(Text)
    starts: Mapped[dt.datetime] = mapped_column(DateTime)
    ends: Mapped[dt.datetime] = mapped_column(DateTime)
    created_by: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Member(Base):
    __tablename__ = "members"
    project: Mapped[str] = mapped_column(ForeignKey("projects.name"), primary_key=True)
    user: Mapped[str] = mapped_column(ForeignKey("users.name"), primary_key=True)
    role: Mapped[str] = mapped_column(String(20))
    added_by: Mapped[str] = mapped_column(String(100))
    added_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Agreement(Base):
    """A data-use agreement of one project at one node, and the hub's mirror of its budget:
    ``*_held`` is reserved by studies not yet settled, ``*_spent`` what the node reported."""

    __tablename__ = "agreements"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project: Mapped[str] = mapped_column(ForeignKey("projects.name"), index=True)
    node: Mapped[str] = mapped_column(ForeignKey("nodes.name"), index=True)
    analyses: Mapped[list[str]] = mapped_column(JSON)
    domains: Mapped[list[str]] = mapped_column(JSON)
    policy_version: Mapped[str] = mapped_column(String(100))
    epsilon: Mapped[float] = mapped_column(Float)
    rho: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime)
    state: Mapped[str] = mapped_column(String(20), default="draft")
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_by: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    signed_by: Mapped[str | None] = mapped_column(String(100), nullable=True)
    signature: Mapped[str | None] = mapped_column(String(200), nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    epsilon_held: Mapped[float] = mapped_column(Float, default=0.0)
    rho_held: Mapped[float] = mapped_column(Float, default=0.0)
    epsilon_spent: Mapped[float] = mapped_column(Float, default=0.0)
    rho_spent: Mapped[float] = mapped_column(Float, default=0.0)


class Approval(Base):
    """One of a study's two approvals before dispatch (``kind``: lead or reviewer); the key
    makes a second approval of the same kind impossible, however concurrent."""

    __tablename__ = "approvals"
    study_id: Mapped[str] = mapped_column(ForeignKey("studies.id"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20), primary_key=True)
    user: Mapped[str] = mapped_column(String(100))
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Hold(Base):
    """The budget a study holds on one node's agreement until it is settled."""

    __tablename__ = "holds"
    study_id: Mapped[str] = mapped_column(ForeignKey("studies.id"), primary_key=True)
    agreement: Mapped[str] = mapped_column(ForeignKey("agreements.id"), primary_key=True)
    epsilon: Mapped[float] = mapped_column(Float)
    rho: Mapped[float] = mapped_column(Float)
    settled: Mapped[bool] = mapped_column(default=False)


class Usage(Base):
    """One metered quantity: ``kind`` is studies, tasks, node_seconds, releases, epsilon or
    rho."""

    __tablename__ = "usage"
    __table_args__ = (UniqueConstraint("study_id", "node", "kind", "round"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project: Mapped[str] = mapped_column(String(100), index=True)
    study_id: Mapped[str] = mapped_column(String(40))
    node: Mapped[str] = mapped_column(String(100))
    round: Mapped[int] = mapped_column(Integer, default=0)
    kind: Mapped[str] = mapped_column(String(20))
    amount: Mapped[float] = mapped_column(Float)
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
