"""Imports flow one way: library parts never import the CLI or the tests."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "medlab"


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_nothing_outside_the_cli_imports_it() -> None:
    for path in SRC.rglob("*.py"):
        if "cli" in path.relative_to(SRC).parts or path.name == "demo.py":
            continue
        bad = {n for n in _imports(path) if n.startswith(("medlab.cli", "tests"))}
        assert not bad, f"{path}: {bad}"


def test_modules_stay_small() -> None:
    for path in SRC.rglob("*.py"):
        assert len(path.read_text().splitlines()) < 600, path


ANALYSES = ("characterization", "comparative_release", "feasibility", "incidence", "utilization")


def test_every_combine_step_takes_released_payloads_only() -> None:
    import importlib
    import inspect

    import pytest

    from medlab.privacy.release import Release

    for name in ANALYSES:
        module = importlib.import_module(f"medlab.analyses.{name}")
        signature = inspect.signature(module.combine)
        (parameter,) = signature.parameters.values()
        assert parameter.annotation == "list[Released]", name
        assert hasattr(module, "to_release"), name
        with pytest.raises(TypeError, match="only released"):
            module.combine([Release(name, "site", ())])


def test_only_the_gate_makes_released_payloads_and_studies_release_every_local_step() -> None:
    for path in SRC.rglob("*.py"):
        if path.relative_to(SRC).parts[0] == "privacy":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name | ast.Attribute):
                called = node.func.id if isinstance(node.func, ast.Name) else node.func.attr
                assert called != "Released", f"{path} builds a Released itself"
    # At the node, every local step's result goes into to_release, then the releaser.
    run = (SRC / "studies" / "local.py").read_text()
    tree = ast.parse(run)
    locals_called = [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "local"
    ]
    releases = [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and n.func.attr == "to_release"
    ]
    assert len(locals_called) == len(releases) == len(ANALYSES) + 1  # and federated_mean
    assert run.count("releaser.release(") == 1


def test_the_federations_imports_flow_one_way() -> None:
    """``common`` imports none of ``hub``, ``node``, ``client``; they never import each
    other; analyses, studies and privacy never import the federation (no transport)."""
    federation = SRC / "federation"
    for path in federation.rglob("*.py"):
        part = path.relative_to(federation).parts[0]
        found = {n for n in _imports(path) if n.startswith("medlab.federation.")}
        others = {f"medlab.federation.{p}" for p in ("hub", "node", "client") if p != part}
        if part == "common":
            others |= {"medlab.federation.hub", "medlab.federation.node"}
            others |= {"medlab.federation.client", "medlab.federation.launch"}
        bad = {n for n in found if any(n == o or n.startswith(o + ".") for o in others)}
        assert not bad, f"{path}: {bad}"
    for top in ("analyses", "studies", "privacy", "cdm", "cohorts", "ledger"):
        for path in (SRC / top).rglob("*.py"):
            bad = {
                n for n in _imports(path) if n.startswith(("medlab.federation", "httpx", "fastapi"))
            }
            assert not bad, f"{path}: {bad}"


def test_the_multi_round_combine_takes_released_payloads_only() -> None:
    import pytest

    from medlab.analyses import federated_mean
    from medlab.privacy.release import Release

    with pytest.raises(TypeError, match="only released"):
        federated_mean.combine({1: [Release("federated_mean", "site", ())]})  # type: ignore[list-item]
    with pytest.raises(TypeError, match="only released"):
        federated_mean.next_params(1, [Release("federated_mean", "site", ())])  # type: ignore[list-item]


def test_the_web_app_reads_the_hub_and_never_a_store() -> None:
    """The pages read what the hub holds: no module of ``medlab.web`` opens a node's store
    or speaks for a node or a client; only the hub's app mounts the web app."""
    for path in (SRC / "web").rglob("*.py"):
        bad = {
            n
            for n in _imports(path)
            if n.startswith(("medlab.cdm", "duckdb", "medlab.federation.node"))
            or n.startswith(("medlab.federation.client", "medlab.synth", "httpx"))
        }
        assert not bad, f"{path}: {bad}"
    for path in SRC.rglob("*.py"):
        if "web" in path.relative_to(SRC).parts or path == SRC / "federation/hub/app.py":
            continue
        assert not {n for n in _imports(path) if n.startswith("medlab.web")}, path
