"""The snapshot fingerprint: same data, same hash, whatever the load order; any change shows."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medlab.cdm.fingerprint import snapshot_fingerprint
from medlab.cdm.loader import load_omop_csv
from medlab.cdm.store import init_store, open_store
from medlab.privacy.ingest import RAW

HEADER = "location_id,address_1,city,latitude\n"


def _store_of(tmp: Path, name: str, files: dict[str, str]) -> str:
    src = tmp / f"{name}_csv"
    src.mkdir()
    for file, text in files.items():
        (src / file).write_text(text)
    store = tmp / f"{name}.duckdb"
    init_store(store)
    load_omop_csv(store, src, ingest=RAW)  # every value as given: the fingerprint is tested
    with open_store(store, read_only=True) as con:
        return snapshot_fingerprint(con)[0]


_row = st.tuples(
    st.text(alphabet="abc |:-", max_size=4),
    st.one_of(st.none(), st.text(alphabet="xyz", max_size=3)),
    st.one_of(st.none(), st.floats(-90, 90, allow_nan=False).map(lambda f: round(f, 3))),
)


def _csv(rows: list[tuple[str, str | None, float | None]]) -> str:
    def cell(v: object) -> str:
        return "" if v is None else f'"{v}"'

    body = "".join(
        f"{i + 1},{cell(a)},{cell(c)},{'' if lat is None else lat}\n"
        for i, (a, c, lat) in enumerate(rows)
    )
    return HEADER + body


@settings(max_examples=15)  # each example builds and loads two stores (about 2 s)
@given(rows=st.lists(_row, min_size=1, max_size=12), data=st.data())
def test_row_order_does_not_matter(tmp_path_factory, rows, data) -> None:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("fp")
    lines = _csv(rows).splitlines(keepends=True)
    shuffled = data.draw(st.permutations(lines[1:]))
    first = _store_of(tmp, "a", {"location.csv": "".join(lines)})
    second = _store_of(tmp, "b", {"LOCATION.csv": lines[0].upper() + "".join(shuffled)})
    assert first == second


def test_any_changed_value_changes_the_fingerprint(tmp_path: Path) -> None:
    base = _store_of(tmp_path, "base", {"location.csv": HEADER + "1,a,b,1.5\n2,c,d,2\n"})
    variants = {
        "value": HEADER + "1,a,b,1.5\n2,c,e,2\n",
        "number": HEADER + "1,a,b,1.5\n2,c,d,2.000001\n",
        "emptied": HEADER + '1,a,b,1.5\n2,c,"",2\n',
        "boundary": HEADER + "1,a,b,1.5\n2,cd,,2\n",
        "extra_copy": HEADER + "1,a,b,1.5\n2,c,d,2\n3,c,d,2\n",
    }
    seen = {base}
    for name, text in variants.items():
        fingerprint = _store_of(tmp_path, name, {"location.csv": text})
        assert fingerprint not in seen, name
        seen.add(fingerprint)


def test_fingerprint_format_and_table_digests(eunomia_store: Path) -> None:
    with open_store(eunomia_store, read_only=True) as con:
        fingerprint, digests = snapshot_fingerprint(con)
    assert fingerprint.startswith("sha256:") and len(fingerprint) == 71
    by_table = {d.table: d for d in digests}
    assert by_table["person"].rows == 2694
    assert "cohort" not in by_table  # results are not part of the data snapshot


def test_small_tables_digested_together_equal_each_streamed(
    eunomia_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medlab.cdm import fingerprint as fp

    with open_store(eunomia_store, read_only=True) as con:
        together = snapshot_fingerprint(con)
        monkeypatch.setattr(fp, "_TOGETHER_ROWS", -1)  # every table streamed, one by one
        streamed = snapshot_fingerprint(con)
        assert together == streamed
        assert [d.sha256 for d in together[1]] == [
            fp.table_digest(con, t).sha256
            for t in sorted(fp.schema.cdm_tables(), key=lambda t: t.name)
        ]
