"""The hub's vocabulary for the study builder: loaded from OMOP files by ``medlab hub
vocabulary``, searched by name, code and id, a site's local concepts never loaded, a bad
file refused with its line and the vocabulary left as it was."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tests import webapp

from medlab.cli.main import main
from medlab.federation.hub import vocabulary
from medlab.federation.hub.service import Hub, init_hub


@pytest.fixture
def hub(tmp_path: Path) -> Hub:
    return init_hub(tmp_path / "hub")


def test_the_synthetic_vocabulary_loads_and_is_searched(
    hub: Hub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["hub", "vocabulary", str(tmp_path / "hub"), str(webapp.VOCABULARY)]) == 0
    assert "vocabulary loaded: 484 concepts" in capsys.readouterr().out
    with hub.sessions() as s:
        assert vocabulary.size(s) == 484
        names = [c.name for c in vocabulary.search(s, "WARFARIN")]
        assert names[0] == "Warfarin" and "Warfarin Sodium 5 MG Oral Tablet" in names
        assert [c.concept_id for c in vocabulary.search(s, "313217")] == [313217]
        assert [c.concept_id for c in vocabulary.search(s, "49436004")] == [313217]  # code
        drugs = vocabulary.search(s, "a", domain="Drug", standard=True)
        assert drugs and {c.domain for c in drugs} == {"Drug"}
        assert vocabulary.search(s, "   ") == []
        counts = vocabulary.descendant_counts(s, {1310149, 313217})
        assert counts[1310149] > 1  # warfarin and its clinical drugs


def _copy(source: Path, target: Path) -> Path:
    target.mkdir()
    for name in ("concept.csv", "concept_ancestor.csv"):
        shutil.copy(source / name, target / f"{Path(name).stem.upper()}.csv")
    return target


def test_local_concepts_stay_out_and_a_bad_file_changes_nothing(hub: Hub, tmp_path: Path) -> None:
    folder = _copy(webapp.VOCABULARY, tmp_path / "omop")
    with (folder / "CONCEPT.csv").open("a") as f:
        f.write("2000000001,Local ward code,Observation,Local,Code,,W1,1970-01-01,2099-12-31,\n")
    loaded = vocabulary.load(hub.sessions, [folder])
    assert (loaded.concepts, loaded.local_skipped) == (484, 1)
    bad = _copy(webapp.VOCABULARY, tmp_path / "bad")
    lines = (bad / "CONCEPT_ANCESTOR.csv").read_text().splitlines()
    lines[5] = "x1310149,1310149,0,0"
    (bad / "CONCEPT_ANCESTOR.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(Exception, match=r"CONCEPT_ANCESTOR.csv:6: ancestor_concept_id"):
        vocabulary.load(hub.sessions, [bad])
    with hub.sessions() as s:
        assert vocabulary.size(s) == 484  # as it was
    (bad / "CONCEPT.csv").write_text("concept_id,concept_name\n1,x\n")
    with pytest.raises(Exception, match=r"CONCEPT.csv:1: no column domain_id"):
        vocabulary.load(hub.sessions, [bad])
