"""Per-covariate balance: the SMD as CohortMethod computes it, the spec's covariate list, and
the release gate's rule for it, tried in two worlds that differ by one person."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pytest
from pydantic import ValidationError
from scipy import sparse

from medlab.analyses import balance as bal
from medlab.analyses.comparative import ComparativeSettings
from medlab.privacy import gate
from medlab.privacy.audit import Auditor
from medlab.privacy.persons import PersonKeys
from medlab.privacy.policy import DifferentialPrivacy, ReleasePolicy
from medlab.privacy.release import Balance, Contributions, Population, Release

SECRET = b"k" * 32


def _cohortmethod_smd(x: np.ndarray, t: np.ndarray) -> float:
    """CohortMethod's ``computeMeansPerGroup`` without weighting, written out: per arm the
    mean ``sum / n`` and ``sd = sqrt((sumSqr - sum^2 / n) / n)``, then
    ``stdDiff = (meanTarget - meanComparator) / sqrt((sdTarget^2 + sdComparator^2) / 2)``."""
    stats = []
    for arm in (1, 0):
        v = x[t == arm]
        n, total, squares = len(v), v.sum(), (v**2).sum()
        stats.append((total / n, np.sqrt((squares - total**2 / n) / n)))
    (mt, st), (mc, sc) = stats
    return float((mt - mc) / np.sqrt((st**2 + sc**2) / 2))


def test_unweighted_smd_is_cohortmethods() -> None:
    rng = np.random.default_rng(3)
    n = 400
    t = (rng.random(n) < 0.4).astype(int)
    binary = (rng.random(n) < np.where(t == 1, 0.5, 0.3)).astype(float)
    age = rng.integers(40, 90, n) / 90
    x = sparse.csr_matrix(np.c_[binary, age])
    cells = bal.cells(
        x, ["condition:1", "age"], ["condition:1", "age"], t, np.arange(n), np.ones(n)
    )
    assert cells["condition:1"].smd == pytest.approx(_cohortmethod_smd(binary, t), rel=1e-12)
    assert cells["age"].smd == pytest.approx(_cohortmethod_smd(age, t), rel=1e-12)


def test_weighted_smd_uses_the_balance_weights() -> None:
    # Weighted means and variances sum(w x) / sum(w), sum(w (x - m)^2) / sum(w) per arm, the
    # weights the released maximum |SMD| uses (matching 1/k, strata, IPTW).
    rng = np.random.default_rng(5)
    n = 300
    t = (rng.random(n) < 0.5).astype(int)
    v = (rng.random(n) < 0.3).astype(float)
    w = rng.uniform(0.2, 3.0, n)
    moments = []
    for arm in (1, 0):
        wa, va = w[t == arm], v[t == arm]
        m = (wa * va).sum() / wa.sum()
        moments.append((m, (wa * (va - m) ** 2).sum() / wa.sum()))
    (mt, vt), (mc, vc) = moments
    cells = bal.cells(sparse.csr_matrix(v[:, None]), ["drug:7"], ["drug:7"], t, np.arange(n), w)
    assert cells["drug:7"].smd == pytest.approx((mt - mc) / np.sqrt((vt + vc) / 2), rel=1e-12)


def test_holders_and_lackers_are_counted_in_persons_per_arm() -> None:
    # Person 1 has two entries holding the covariate: one holder, not two.
    x = sparse.csr_matrix(np.array([[1.0], [1.0], [0.0], [1.0], [0.0], [0.0]]))
    t = np.array([1, 1, 1, 0, 0, 0])
    people = np.array([1, 1, 2, 3, 4, 5])
    cell = bal.cells(x, ["gender:8532"], ["gender:8532"], t, people, np.ones(6))["gender:8532"]
    assert cell.counts == (1, 1, 1, 2)  # target held, lacked; comparator held, lacked


def test_a_covariate_nobody_has_is_there_with_nobody_holding_it() -> None:
    x = sparse.csr_matrix(np.ones((4, 1)))
    t = np.array([1, 1, 0, 0])
    cells = bal.cells(x, ["age"], ["age", "drug:9"], t, np.arange(4), np.ones(4))
    assert set(cells) == {"age", "drug:9"}
    assert cells["drug:9"].counts == (0, 2, 0, 2) and cells["drug:9"].smd == 0.0


def test_the_spec_names_the_covariates() -> None:
    assert ComparativeSettings().balance_covariates == list(bal.DEFAULT)
    named = ComparativeSettings(balance_covariates=["age", "condition_any_time_prior:201826"])
    assert named.balance_covariates == ["age", "condition_any_time_prior:201826"]
    with pytest.raises(ValidationError) as bad:
        ComparativeSettings(balance_covariates=["age", "condition:12; DROP TABLE"])
    assert bad.value.errors()[0]["loc"] == ("balance_covariates", 1)
    with pytest.raises(ValidationError, match="each balance covariate once"):
        ComparativeSettings(balance_covariates=["age", "age"])


# -- the gate's rule, in two worlds ---------------------------------------------------------


def _arms(n_target: int = 50, n_comparator: int = 60) -> dict[str, Population]:
    return {
        "target": Population("t", frozenset(range(n_target))),
        "comparator": Population("c", frozenset(range(1000, 1000 + n_comparator))),
    }


def _element(
    counts: tuple[int, ...] = (20, 30, 25, 35),
    weights: tuple[Contributions, ...] | None = None,
    smd: float = 0.123456,
    arms: dict[str, Population] | None = None,
) -> Balance:
    parts = weights if weights is not None else (Contributions((1.0,) * 10, 20.0, 20),)
    return Balance(
        "covariate_balance",
        {"condition:5": {"before": smd}},
        {"before": arms or _arms()},
        {"condition:5": {"before": counts}},
        {"condition:5": {"before": parts}},
    )


def _shown(element: Balance, policy: ReleasePolicy | None = None, **node: object) -> object:
    side = gate.NodeSide(**node)  # type: ignore[arg-type]
    out = gate.apply(policy or ReleasePolicy(), Release("comparative", "s", (element,)), side)
    return out.values["covariate_balance"]["condition:5"]["before"]


def test_an_smd_leaves_rounded_when_every_rule_holds() -> None:
    assert _shown(_element()) == 0.12  # two significant digits (precision.smd)


@pytest.mark.parametrize("arm", [0, 1, 2, 3])
def test_one_person_more_holding_or_lacking_is_the_threshold_in_both_worlds(arm: int) -> None:
    # World A: a count of 9 (one person short of the minimum) in one place; world B: 10 —
    # 10 rounds (midpoint-6) to 9 and is withheld too; 13 is the first shown.
    for small, shown in ((9, False), (10, False), (13, True)):
        counts = [20, 30, 25, 35]
        counts[arm] = small
        value = _shown(_element(tuple(counts)))
        assert (value is not None) is shown, (arm, small)


def test_a_covariate_one_person_holds_is_withheld_whether_she_holds_it_or_not() -> None:
    # The attacker names a covariate only the target person can hold: with her (1 holder)
    # and without her (0), the view is the same.
    assert _shown(_element((1, 49, 0, 60))) is None
    assert _shown(_element((0, 50, 0, 60))) is None
    # Zeros allowed: 0 holders may show, one holder never does.
    zeros = ReleasePolicy(allow_zeros=True)
    assert _shown(_element((1, 49, 0, 60)), zeros) is None


def test_a_small_arm_withholds_every_covariate_of_its_population() -> None:
    assert _shown(_element(arms=_arms(n_target=9))) is None


def test_one_heavy_weight_among_the_holders_withholds_it() -> None:
    # IPTW: 20 holders, one of weight 10 and the rest 0.05 — the mean is hers.
    heavy = (Contributions((10.0, *(0.05,) * 9), 10.95, 20),)
    assert _shown(_element(weights=heavy)) is None
    even = (Contributions((1.0,) * 10, 20.0, 20),)
    assert _shown(_element(weights=even)) == 0.12


def test_contributions_not_kept_count_as_large_as_the_smallest_kept() -> None:
    # A rule over the 15 largest, of which 10 were kept: the other 5 are taken at the 10th.
    kept = Contributions(tuple(float(v) for v in range(20, 10, -1)), 400.0, 40)
    assert kept.padded(15) == (*range(20, 10, -1), 11, 11, 11, 11, 11)
    assert kept.padded(2) == (20.0, 19.0)
    assert Contributions((3.0, 2.0), 5.0, 2).padded(15) == (3.0, 2.0)
    # Under a policy whose rule reaches past the kept ten, the bound withholds, never shows.
    policy = ReleasePolicy.model_validate({"dominance": {"n": 30, "k": 0.9}})
    lots = (Contributions((1.0,) * 10, 31.0, 31),)
    assert _shown(_element(weights=lots), policy) is None  # 30 of 31 exceed 90%
    assert _shown(_element(weights=(Contributions((1.0,) * 10, 40.0, 40),)), policy) == 0.12


def test_under_differential_privacy_only_with_exact_models() -> None:
    dp = DifferentialPrivacy(enabled=True)
    noisy = ReleasePolicy(count_protection="differential_privacy", differential_privacy=dp)
    assert _shown(_element(), noisy, loss=1.0) is None
    exact = noisy.model_copy(
        update={"differential_privacy": dp.model_copy(update={"exact_models": True})}
    )
    assert _shown(_element(), exact, loss=1.0) == 0.12


def test_a_population_the_audit_flags_withholds_its_balance(tmp_path: Path) -> None:
    # A second study whose comparator arm is the first's plus one person: the audit flags it
    # and the balance of that population is withheld, as its counts are.
    con = duckdb.connect(str(tmp_path / "audit.duckdb"))
    con.execute("CREATE SCHEMA medlab")
    audit = Auditor(con, PersonKeys(SECRET), 10)
    first = {
        "target": Population("t", frozenset(range(50)), "comparative", ("a",)),
        "comparator": Population("c", frozenset(range(1000, 1060)), "comparative", ("a",)),
    }
    audit.begin("r1")
    assert _shown(_element(arms=first), auditor=audit) == 0.12
    audit.save()
    plus_one = dict(first)
    plus_one["comparator"] = Population(
        "c+1", frozenset([*range(1000, 1060), 5000]), "comparative", ("b",)
    )
    audit.begin("r2")
    assert _shown(_element(arms=plus_one), auditor=audit) is None


def test_the_keys_are_the_specs_whatever_the_data() -> None:
    # A site that computed nothing (no arms) releases the same keys, every value withheld.
    empty = Balance("covariate_balance", {"condition:5": {"before": None, "iptw": None}})
    out = gate.apply(ReleasePolicy(), Release("comparative", "s", (empty,)), gate.NodeSide())
    assert out.values["covariate_balance"] == {"condition:5": {"before": None, "iptw": None}}
    assert out.values["covariate_balance"].keys() == {"condition:5"}


def test_a_whole_domain_is_every_standard_concept_of_the_vocabulary(tmp_path: Path) -> None:
    con = duckdb.connect(str(tmp_path / "v.duckdb"))
    con.execute(
        "CREATE TABLE concept (concept_id INTEGER, concept_name VARCHAR, domain_id VARCHAR,"
        " standard_concept VARCHAR)"
    )
    con.execute(
        "INSERT INTO concept VALUES (0, 'No matching concept', 'Condition', 'S'),"
        " (30, 'Bleed', 'Condition', 'S'), (20, 'Ulcer', 'Condition', 'S'),"
        " (25, 'Source code', 'Condition', NULL), (40, 'Aspirin', 'Drug', 'S')"
    )
    named, words = bal.expand(
        con, ["age", "condition_any_time_prior:*", "condition_any_time_prior:30"]
    )
    assert named == ["age", "condition_any_time_prior:20", "condition_any_time_prior:30"]
    assert words == {"condition_any_time_prior:20": "Ulcer", "condition_any_time_prior:30": "Bleed"}
    assert bal.expand(con, ["drug:*", "drug:99"]) == (
        ["drug:40", "drug:99"],
        {"drug:40": "Aspirin"},
    )
    assert ComparativeSettings(balance_covariates=["procedure:*"]).balance_covariates == [
        "procedure:*"
    ]


def test_counts_and_contributions_agree_with_a_plain_count_per_covariate() -> None:
    # Entries repeat persons (first_exposure_only off): count persons, not rows.
    rng = np.random.default_rng(11)
    rows, m = 500, 40
    people = rng.integers(0, 300, rows)
    t = (people % 3 == 0).astype(int)  # a person stays in one arm
    dense = (rng.random((rows, m)) < rng.uniform(0.01, 0.5, m)).astype(float)
    w = rng.uniform(0.1, 4.0, rows)
    names = [f"drug:{j}" for j in range(m)]
    cells = bal.cells(sparse.csr_matrix(dense), names, names, t, people, w)
    for j, name in enumerate(names):
        expected = []
        for arm in (1, 0):
            mine = t == arm
            expected += [
                len(set(people[mine & (dense[:, j] == 1)])),
                len(set(people[mine & (dense[:, j] == 0)])),
            ]
        assert cells[name].counts == tuple(expected), name
        held_t = cells[name].contributions[0]
        weights = np.sort(w[(t == 1) & (dense[:, j] == 1)])[::-1]
        assert held_t.n == len(weights) and held_t.total == pytest.approx(weights.sum())
        assert held_t.largest == pytest.approx(tuple(weights[: bal.LARGEST]))


@pytest.mark.parametrize(("left_out", "shown"), [(0, True), (1, False), (9, False), (10, True)])
def test_a_matched_arm_a_few_persons_short_of_the_arm_before_withholds_its_balance(
    left_out: int, shown: bool
) -> None:
    # Before and after matching, one SMD each per covariate: were one person left out of
    # the matched comparator arm, the two would give her covariates away.
    before = _arms(50, 60)
    kept = frozenset(sorted(before["comparator"].persons)[left_out:])
    after = {"target": before["target"], "comparator": Population("m", kept)}
    element = Balance(
        "covariate_balance",
        {"condition:5": {"before": 0.2, "matching": 0.05}},
        {"before": before, "matching": after},
        {"condition:5": {"before": (20, 30, 25, 35), "matching": (20, 30, 25, 25)}},
        {"condition:5": {"before": (), "matching": ()}},
        "before",
    )
    out = gate.apply(ReleasePolicy(), Release("comparative", "s", (element,)), gate.NodeSide())
    row = out.values["covariate_balance"]["condition:5"]
    assert row["before"] == 0.2
    assert (row["matching"] is not None) is shown


def test_the_steward_reads_one_journal_entry_per_population_and_rule() -> None:
    many = Balance(
        "covariate_balance",
        {f"drug:{i}": {"before": 0.1} for i in range(300)},
        {"before": _arms()},
        {f"drug:{i}": {"before": (1, 49, 30, 30)} for i in range(300)},
    )
    node = gate.NodeSide()
    gate.apply(ReleasePolicy(), Release("comparative", "s", (many,)), node)
    rows = [d for d in node.journal if d.element == "covariate_balance"]
    assert [(d.item, d.rule) for d in rows] == [
        ("before: 300 covariates", "a holding or lacking count: count below 10")
    ]
