"""The vocabulary the study builder searches: concepts and their ancestry, loaded by the
operator from OMOP vocabulary files (``CONCEPT.csv`` and ``CONCEPT_ANCESTOR.csv``, as Athena
exports them or as a node's store holds them). These are the public vocabularies the nodes
share; a hospital's local concepts (ids from 2,000,000,000) are never loaded, and nothing is
read from a node.

A load replaces the whole vocabulary in one transaction, after both files have been read
and checked: a bad file names its line and field and leaves the vocabulary as it was.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import delete, func, insert, or_, select
from sqlalchemy.orm import Session, sessionmaker

from medlab.errors import LoadError
from medlab.federation.hub import db

LOCAL_CONCEPTS = 2_000_000_000  # OMOP: ids from here on are a site's own concepts
MAX_CONCEPTS = 5_000_000
_BATCH = 5000
_CONCEPT = ("concept_id", "concept_name", "domain_id", "vocabulary_id", "concept_class_id")
_ANCESTOR = ("ancestor_concept_id", "descendant_concept_id")


@dataclass(frozen=True)
class Loaded:
    """What a load kept."""

    concepts: int
    ancestors: int
    local_skipped: int


def _file(directory: Path, name: str) -> Path:
    """``NAME.csv`` in ``directory``, in either case."""
    for candidate in (directory / f"{name.upper()}.csv", directory / f"{name}.csv"):
        if candidate.is_file():
            return candidate
    raise LoadError(f"{directory}: no {name.upper()}.csv (OMOP vocabulary file) here")


def _rows(path: Path, needed: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """Each data row of a CSV file (comma or tab separated) as its line and fields."""
    with path.open(newline="", encoding="utf-8") as handle:
        sample = handle.readline()
        handle.seek(0)
        reader = csv.DictReader(handle, delimiter="\t" if "\t" in sample else ",")
        fields = {f.lower(): f for f in reader.fieldnames or []}
        missing = [f for f in needed if f not in fields]
        if missing:
            raise LoadError(f"{path}:1: no column {', '.join(missing)}")
        try:
            return [
                (n, {k.lower(): (v or "") for k, v in row.items() if k is not None})
                for n, row in enumerate(reader, start=2)
            ]
        except (csv.Error, UnicodeDecodeError) as exc:
            raise LoadError(f"{path}:{reader.line_num}: {exc}") from None


def _id(path: Path, line: int, field: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise LoadError(f"{path}:{line}: {field}: not a concept id: {text[:40]!r}") from None


def load(sessions: sessionmaker[Session], directories: list[Path]) -> Loaded:
    """Replace the hub's vocabulary with the union of the ones in ``directories`` (the
    first folder that has a concept wins it)."""
    concepts: dict[int, dict[str, object]] = {}
    pairs: set[tuple[int, int]] = set()
    skipped = 0
    for directory in directories:
        found, local = _concepts(_file(directory, "concept"))
        skipped += local
        for concept_id, row in found.items():
            concepts.setdefault(concept_id, row)
        if len(concepts) > MAX_CONCEPTS:
            raise LoadError(f"{directory}: more than {MAX_CONCEPTS:,} concepts")
        pairs |= _ancestry(_file(directory, "concept_ancestor"), set(found))
    pairs |= {(c, c) for c in concepts}  # every concept is its own descendant
    with db.transaction(sessions) as s:
        s.execute(delete(db.ConceptAncestor))
        s.execute(delete(db.Concept))
        rows = list(concepts.values())
        for start in range(0, len(rows), _BATCH):
            s.execute(insert(db.Concept), rows[start : start + _BATCH])
        ancestry = [{"ancestor": a, "descendant": d} for a, d in sorted(pairs)]
        for start in range(0, len(ancestry), _BATCH):
            s.execute(insert(db.ConceptAncestor), ancestry[start : start + _BATCH])
    return Loaded(len(concepts), len(pairs), skipped)


def _concepts(path: Path) -> tuple[dict[int, dict[str, object]], int]:
    """The concepts of a CONCEPT file, and how many local ones it left out."""
    found: dict[int, dict[str, object]] = {}
    skipped = 0
    for line, row in _rows(path, _CONCEPT):
        concept_id = _id(path, line, "concept_id", row["concept_id"])
        if concept_id >= LOCAL_CONCEPTS:
            skipped += 1
            continue
        found[concept_id] = {
            "concept_id": concept_id,
            "name": row["concept_name"][:255],
            "domain": row["domain_id"][:20],
            "vocabulary": row["vocabulary_id"][:20],
            "concept_class": row["concept_class_id"][:20],
            "standard": row.get("standard_concept") or None,
            "code": row.get("concept_code", "")[:50],
        }
    return found, skipped


def _ancestry(path: Path, known: set[int]) -> set[tuple[int, int]]:
    """The ancestor-descendant pairs of a CONCEPT_ANCESTOR file between ``known`` concepts."""
    pairs = set()
    for line, row in _rows(path, _ANCESTOR):
        a = _id(path, line, "ancestor_concept_id", row["ancestor_concept_id"])
        d = _id(path, line, "descendant_concept_id", row["descendant_concept_id"])
        if a in known and d in known:
            pairs.add((a, d))
    return pairs


def search(
    s: Session, text: str, domain: str | None = None, standard: bool = False, limit: int = 50
) -> list[db.Concept]:
    """Concepts whose name holds ``text`` (any case) or whose id or code is ``text``;
    standard concepts first, then by name."""
    text = text.strip()[:200]
    if not text:
        return []
    matches = [func.lower(db.Concept.name).contains(text.lower(), autoescape=True)]
    matches.append(db.Concept.code == text)
    if text.isdigit() and int(text) < 2**63:
        matches.append(db.Concept.concept_id == int(text))
    query = select(db.Concept).where(or_(*matches))
    if domain:
        query = query.where(db.Concept.domain == domain)
    if standard:
        query = query.where(db.Concept.standard == "S")
    query = query.order_by((db.Concept.standard == "S").desc(), db.Concept.name).limit(limit)
    return list(s.scalars(query))


def concepts(s: Session, ids: set[int]) -> dict[int, db.Concept]:
    """The concepts of ``ids`` the vocabulary holds."""
    if not ids:
        return {}
    found = s.scalars(select(db.Concept).where(db.Concept.concept_id.in_(ids)))
    return {c.concept_id: c for c in found}


def descendant_counts(s: Session, ids: set[int]) -> dict[int, int]:
    """How many concepts each of ``ids`` stands for with its descendants (itself included)."""
    if not ids:
        return {}
    rows = s.execute(
        select(db.ConceptAncestor.ancestor, func.count())
        .where(db.ConceptAncestor.ancestor.in_(ids))
        .group_by(db.ConceptAncestor.ancestor)
    )
    return {a: n for a, n in rows}


def size(s: Session) -> int:
    """How many concepts the vocabulary holds."""
    return int(s.scalar(select(func.count()).select_from(db.Concept)) or 0)
