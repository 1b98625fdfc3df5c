"""Malformed input of every kind the issue names, through the command line: never a traceback.

Hypothesis mutates real inputs (an ATLAS/Circe export, the example study spec, an OMOP CSV
directory, a release policy, a DP query) with the classes of damage seen in the wild: invalid
UTF-8, a lone surrogate, nesting 1,000 deep, a field of the wrong type, numbers beyond what the
engines hold (ints of 2^31 and more, ``inf``/``nan``, 1e308, 1e-300), day counts of 1e9,
degenerate histogram bins, thousands of rules or concept items; and every input path is also
tried as a directory, a FIFO, ``/dev/zero`` and a symbolic-link loop. For each case: the
command exits (within a time limit), with 0 or with one plain ``error:`` line (never the
internal-error catch-all, never a traceback), and a refused command leaves the store, its
budgets and its log byte for byte as they were.

``HYPOTHESIS_PROFILE=ci`` runs a bounded, seeded set; ``MEDLAB_FUZZ_EXAMPLES=2000`` runs a long
local campaign. Each test reports cases run and tracebacks in ``FUZZ_REPORT``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medlab.cli.main import INTERNAL_ERROR, main

REPO = Path(__file__).resolve().parents[2]
CIRCE = REPO.parent / "shared/data/eunomia-cohorts/CohortGenerator/celecoxibAge40.json"
STUDY = REPO / "examples/studies/eunomia_celecoxib_diclofenac.yaml"
EXAMPLES = int(os.environ.get("MEDLAB_FUZZ_EXAMPLES", "0")) or None
TIME_LIMIT = 60
FUZZ_REPORT: dict[str, list[int]] = {}  # input kind -> [cases, tracebacks]

FUZZ = settings(
    max_examples=EXAMPLES or 25,
    deadline=None,
    derandomize=EXAMPLES is None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class _Hang(BaseException):  # not caught by the command's own error handling
    pass


@contextmanager
def _time_limit(seconds: int) -> Iterator[None]:
    def expire(signum: int, frame: object) -> None:
        raise _Hang(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _tables(store: Path) -> dict[str, list[tuple[Any, ...]]]:
    """The logical content of a DuckDB store: every table of every schema, sorted."""
    import duckdb

    with duckdb.connect(str(store), read_only=True) as con:
        names = con.execute(
            "SELECT schema_name, table_name FROM duckdb_tables() ORDER BY ALL"
        ).fetchall()
        return {
            f"{schema}.{table}": con.execute(
                f'SELECT * FROM "{schema}"."{table}" ORDER BY ALL'
            ).fetchall()
            for schema, table in names
        }


def _state(paths: list[Path]) -> dict[str, Any]:
    """Every store's tables, and every other file of its keys, secrets and logs, byte for
    byte (DuckDB's own files change on a checkpoint; their content is what counts)."""
    found: dict[str, Any] = {}
    for path in paths:
        found[str(path)] = _tables(path)
        for item in sorted(path.parent.glob(path.stem + ".*")):
            if item.suffix in (".lock", ".wal", ".duckdb"):
                continue
            if item.is_file():
                found[str(item)] = item.read_bytes()
            elif item.is_dir():
                for f in sorted(item.rglob("*")):
                    if f.is_file():
                        found[str(f)] = f.read_bytes()
    return found


def _check(
    kind: str, args: list[str], capsys: pytest.CaptureFixture[str], stores: list[Path]
) -> None:
    """Run one command; assert it answers like a tool for people."""
    before = _state(stores)
    try:
        with _time_limit(TIME_LIMIT):
            code = main(args)
    except _Hang:
        pytest.fail(f"{kind}: hung on {args}")
    _, err = capsys.readouterr()
    counts = FUZZ_REPORT.setdefault(kind, [0, 0])
    counts[0] += 1
    if code == INTERNAL_ERROR or "Traceback" in err:
        counts[1] += 1
        pytest.fail(f"{kind}: internal error on {args}: {err}")
    if code != 0:
        lines = [line for line in err.splitlines() if line.strip()]
        assert lines and lines[0].startswith("error:"), (kind, err)
        assert sum(line.startswith("error:") for line in lines) == 1, (kind, err)
        assert _state(stores) == before, f"{kind}: a refused command changed the store"


# -- damage -------------------------------------------------------------------------------

WEIRD_NUMBERS = [
    2**31,
    2**31 - 1,
    -(2**31) - 1,
    2**63,
    10**30,
    1e308,
    -1e308,
    1e-300,
    float("inf"),
    float("-inf"),
    float("nan"),
    1e9,
    -1e9,
    0,
    -1,
    0.5,
    1e-6,
    1e17,
]
WEIRD_VALUES: list[Any] = [
    *WEIRD_NUMBERS,
    None,
    True,
    "",
    "x" * 10_000,
    "\ud800",
    "[bold]markup[/]",
    [],
    {},
    [1, [2, [3]]],
    {"Type": ["First"]},
    {"a": None},
]


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            found += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _paths(v, (*prefix, i))
    return found


def _replace(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    copy = json.loads(json.dumps(document))
    node = copy
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return copy


def _nest(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@st.composite
def damaged(draw: st.DrawFn, document: Any) -> bytes:
    """One document with one kind of damage, as the bytes of a file."""
    kind = draw(
        st.sampled_from(["value", "value", "value", "deep", "bytes", "truncate", "huge", "type"])
    )
    paths = _paths(document)
    if kind == "value":
        path = draw(st.sampled_from(paths))
        value = draw(st.sampled_from(WEIRD_VALUES))
        text = json.dumps(_replace(document, path, value), allow_nan=True)
        return text.encode("utf-8", "surrogatepass")
    if kind == "type":  # a container where a scalar was, and the reverse
        path = draw(st.sampled_from(paths))
        value = draw(st.sampled_from([[7], {"x": 1}, 12345, "text"]))
        return json.dumps(_replace(document, path, value)).encode()
    if kind == "deep":
        depth = draw(st.sampled_from([70, 1100, 5000]))
        path = draw(st.sampled_from(paths))
        return (
            json.dumps(_replace(document, path, _nest(1)))[:-1]
            .encode()
            .replace(b"[1]", b"[" * depth + b"1" + b"]" * depth, 1)
            + b"}"
        )
    if kind == "bytes":
        data = bytearray(json.dumps(document).encode())
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        data[at:at] = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x00"]))
        return bytes(data)
    if kind == "truncate":
        data = json.dumps(document).encode()
        return data[: draw(st.integers(0, len(data)))]
    path = draw(st.sampled_from([p for p in paths if p] or [()]))
    many = draw(st.sampled_from([5000, 25_000]))
    return json.dumps(_replace(document, path, [{"concept_id": 1}] * many)).encode()


SPECIAL = ["directory", "fifo", "dev-zero", "loop"]


def _special(tmp: Path, kind: str, name: str) -> Path:
    path = tmp / name
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    else:
        (tmp / "loop-b").symlink_to(path)
        path.symlink_to(tmp / "loop-b")
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.acceptance.attacks import worlds as w

    return w.build(tmp_path_factory.mktemp("fuzz-store"), True)


@pytest.fixture
def scratch(tmp_path: Path) -> Callable[[], Path]:
    counter = [0]

    def fresh() -> Path:
        counter[0] += 1
        directory = tmp_path / f"case{counter[0]}"
        directory.mkdir()
        return directory

    return fresh


def _circe() -> Any:
    return json.loads(CIRCE.read_text())


def _study() -> Any:
    return yaml.safe_load(STUDY.read_text())


POLICY = {
    "version": "fuzz",
    "min_cell_count": 10,
    "precision": {"ratio": 3},
    "differential_privacy": {"enabled": True, "epsilon_per_release": 1.0},
    "cell_key": {"max_perturbation": 3},
}
QUERY = {
    "project": "fuzz",
    "cohort": {"primary": {"criteria": [{"domain": "observation_period"}]}},
    "statistic": "histogram",
    "field": "age",
    "bounds": [0, 100],
    "bin_width": 10,
    "epsilon": 1.0,
}


# -- the fuzz tests -------------------------------------------------------------------------


@pytest.mark.skipif(not CIRCE.exists(), reason="the Eunomia Circe exports are not here")
@FUZZ
@given(data=st.data())
def test_circe_definitions(data: st.DataObject, capsys, scratch) -> None:  # type: ignore[no-untyped-def]
    path = scratch() / "cohort.json"
    path.write_bytes(data.draw(damaged(_circe())))
    _check("circe", ["cohort", "sql", str(path)], capsys, [])
    _check("circe", ["cohort", "import", str(path)], capsys, [])


@FUZZ
@given(data=st.data())
def test_study_specs(data: st.DataObject, capsys, scratch) -> None:  # type: ignore[no-untyped-def]
    path = scratch() / "study.json"
    path.write_bytes(data.draw(damaged(_study())))
    _check("study spec", ["study", "validate", str(path)], capsys, [])


@FUZZ
@given(data=st.data())
def test_policies(data: st.DataObject, capsys, scratch, store: Path) -> None:  # type: ignore[no-untyped-def]
    path = scratch() / "policy.json"
    path.write_bytes(data.draw(damaged(POLICY)))
    copy = path.parent / "node.duckdb"
    shutil.copy(store, copy)
    _check("policy", ["node", "policy", "set", str(copy), str(path)], capsys, [copy])


@FUZZ
@given(data=st.data())
def test_dp_queries(data: st.DataObject, capsys, scratch, store: Path) -> None:  # type: ignore[no-untyped-def]
    directory = scratch()
    copy = directory / "node.duckdb"
    shutil.copy(store, copy)
    from medlab.privacy import budget as budgets
    from medlab.privacy.node_policy import set_policy
    from medlab.privacy.policy import parse_policy

    set_policy(copy, parse_policy(POLICY))
    budgets.grant(copy, "fuzz", epsilon=5.0)
    path = directory / "query.json"
    path.write_bytes(data.draw(damaged(QUERY)))
    _check("query", ["node", "query", str(copy), str(path)], capsys, [copy])


CSV = {
    "person.csv": "person_id,gender_concept_id,year_of_birth,race_concept_id,ethnicity_concept_id\n"
    "1,8507,1970,0,0\n2,8532,1980,0,0\n",
    "observation_period.csv": "observation_period_id,person_id,observation_period_start_date,"
    "observation_period_end_date,period_type_concept_id\n1,1,2000-01-01,2020-12-31,32817\n",
    "condition_occurrence.csv": "condition_occurrence_id,person_id,condition_concept_id,"
    "condition_start_date,condition_type_concept_id\n1,1,100,2010-01-01,32817\n",
}
CSV_DAMAGE = [
    b"\xff\xfe",
    b"\xc3\x28",
    b"2147483648",
    b"99999999999999999999",
    b"inf",
    b"nan",
    b"1e308",
    b'"unclosed',
    b"\x00",
    b",,,,,,,,,,,,",
    b"0000-00-00",
    b"9999-99-99",
    b"\n\n\n",
    b"\xed\xa0\x80",
]


@FUZZ
@given(
    file=st.sampled_from(sorted(CSV)),
    damage=st.sampled_from(CSV_DAMAGE),
    at=st.floats(0, 1),
)
def test_omop_csv_directories(file: str, damage: bytes, at: float, capsys, scratch) -> None:  # type: ignore[no-untyped-def]
    from medlab.cdm.store import init_store

    directory = scratch()
    source = directory / "csv"
    source.mkdir()
    for name, text in CSV.items():
        data = text.encode()
        if name == file:
            cut = int(at * len(data))
            data = data[:cut] + damage + data[cut:]
        (source / name).write_bytes(data)
    node = directory / "node.duckdb"
    init_store(node)
    _check("omop csv", ["node", "load", str(node), "--omop-csv", str(source)], capsys, [node])


@pytest.mark.parametrize("kind", SPECIAL)
def test_special_files_as_every_input(kind: str, capsys, tmp_path: Path, store: Path) -> None:  # type: ignore[no-untyped-def]
    bad = _special(tmp_path, kind, "input.json")
    commands = [
        ["cohort", "sql", str(bad)],
        ["cohort", "import", str(bad)],
        ["study", "validate", str(bad)],
        ["node", "policy", "set", str(store), str(bad)],
        ["node", "query", str(store), str(bad)],
        ["node", "info", str(bad)],
        ["verify", str(bad)],
        ["log", "verify", str(bad), "--against", str(bad)],
        ["node", "load", str(store), "--omop-csv", str(bad)],
    ]
    for args in commands:
        _check(f"special {kind}", args, capsys, [store])
    if kind != "directory":  # a CSV directory holding a special file where a table should be
        source = tmp_path / "csv"
        source.mkdir()
        _special(source, kind, "person.csv")
        _check(
            f"special {kind}",
            ["node", "load", str(store), "--omop-csv", str(source)],
            capsys,
            [store],
        )


def test_limits_on_definitions(capsys, scratch) -> None:  # type: ignore[no-untyped-def]
    rules = {
        "primary": {"criteria": [{"domain": "observation_period"}]},
        "inclusion_rules": [{"name": f"r{i}", "expression": {}} for i in range(20_000)],
    }
    items = {
        "concept_sets": [{"id": 0, "items": [{"concept_id": i} for i in range(200_000)]}],
        "primary": {"criteria": [{"domain": "condition_occurrence", "codeset_id": 0}]},
    }
    for definition, limit in ((rules, "200"), (items, "20,000")):
        path = scratch() / "big.json"
        path.write_text(json.dumps(definition))
        _check("limits", ["cohort", "sql", str(path)], capsys, [])
        code = main(["cohort", "sql", str(path)])
        err = capsys.readouterr().err
        assert code == 6 and limit in err


def _circe_with(path: tuple[Any, ...], value: Any) -> Any:
    return _replace(_circe(), path, value)


NAMED: list[tuple[str, list[str], Callable[[], Any]]] = [
    (
        "PrimaryCriteriaLimit.Type a list",
        ["cohort", "sql"],
        lambda: _circe_with(("PrimaryCriteria", "PrimaryCriteriaLimit"), {"Type": ["First"]}),
    ),
    (
        "CriteriaList an integer",
        ["cohort", "sql"],
        lambda: _circe_with(("PrimaryCriteria", "CriteriaList"), 3),
    ),
    (
        "a lone surrogate in a name",
        ["cohort", "sql"],
        lambda: _circe_with(("ConceptSets", 0, "name"), "\ud800"),
    ),
    (
        "a concept id of 2^31",
        ["cohort", "sql"],
        lambda: _circe_with(
            ("ConceptSets", 0, "expression", "items", 0, "concept", "CONCEPT_ID"), 2**31
        ),
    ),
    (
        "an age of inf",
        ["cohort", "sql"],
        lambda: {
            "primary": {
                "criteria": [
                    {"domain": "observation_period", "age": {"op": "gt", "value": float("inf")}}
                ]
            }
        },
    ),
    (
        "an age of nan",
        ["cohort", "sql"],
        lambda: {
            "primary": {
                "criteria": [
                    {"domain": "observation_period", "age": {"op": "gt", "value": float("nan")}}
                ]
            }
        },
    ),
    (
        "a CustomEra gap of 1e9 days",
        ["cohort", "sql"],
        lambda: {
            "concept_sets": [{"id": 0, "items": [{"concept_id": 1}]}],
            "primary": {"criteria": [{"domain": "drug_exposure", "codeset_id": 0}]},
            "end_strategy": {"type": "drug_era", "codeset_id": 0, "gap_days": 10**9},
        },
    ),
    (
        "a risk window of 1e9 days",
        ["study", "validate"],
        lambda: _replace(
            _study(), ("analyses", 0, "settings", "population", "risk_window_end"), 10**9
        ),
    ),
    (
        "a cohort id of 2^31",
        ["study", "validate"],
        lambda: _replace(_study(), ("cohorts", 0, "id"), 2**31),
    ),
    (
        "JSON nested 1,000 deep",
        ["study", "validate"],
        lambda: (
            json.dumps(_replace(_study(), ("description",), "DEEP"))
            .replace('"DEEP"', "[" * 1000 + "]" * 1000)
            .encode()
        ),
    ),
]


@pytest.mark.parametrize(("name", "command", "make"), NAMED, ids=[n for n, _, _ in NAMED])
def test_the_cases_the_issue_names(name: str, command: list[str], make, capsys, scratch) -> None:  # type: ignore[no-untyped-def]
    path = scratch() / "input.json"
    document = make()
    if isinstance(document, bytes):
        path.write_bytes(document)
    else:
        path.write_bytes(json.dumps(document, allow_nan=True).encode("utf-8", "surrogatepass"))
    _check(name, [*command, str(path)], capsys, [])
    assert main([*command, str(path)]) != 0
    capsys.readouterr()


def test_dp_bounds_epsilons_and_bins_the_issue_names(capsys, scratch, store: Path) -> None:  # type: ignore[no-untyped-def]
    directory = scratch()
    copy = directory / "node.duckdb"
    shutil.copy(store, copy)
    from medlab.privacy.node_policy import set_policy
    from medlab.privacy.policy import parse_policy

    set_policy(copy, parse_policy(POLICY))
    for change in (
        {"bounds": [float("-inf"), float("inf")]},
        {"bounds": [0, 1e308]},
        {"epsilon": 1e-300},
        {"bin_width": 1e-6},
        {"bounds": [1e17, 1e17 + 1e3]},
    ):
        path = directory / "query.json"
        path.write_text(json.dumps({**QUERY, **change}, allow_nan=True))
        _check("named query", ["node", "query", str(copy), str(path)], capsys, [copy])
        assert main(["node", "query", str(copy), str(path)]) == 6
        capsys.readouterr()


def test_the_fuzz_report() -> None:
    """Cases run and tracebacks per input kind (read by the README's figures)."""
    total = sum(c for c, _ in FUZZ_REPORT.values())
    tracebacks = sum(t for _, t in FUZZ_REPORT.values())
    print(f"fuzz: {total} cases, {tracebacks} tracebacks: {FUZZ_REPORT}")
    assert tracebacks == 0
