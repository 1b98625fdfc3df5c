"""Compile a cohort definition into SQLGlot trees: named steps, the cohort rows, attrition.

Every step is a SELECT over CDM tables and earlier steps. Run on DuckDB, each step becomes a
temporary table; rendered for a dialect, the steps become one WITH query. Semantics follow
OHDSI Circe (see ``medlab.cohorts.model``); the choices where Circe leaves room are written
down where they are made.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import cast

from sqlglot import exp

from medlab.cohorts import model as m
from medlab.cohorts.domains import CODESET_ITEM_COLUMNS, DOMAINS, qualify
from medlab.cohorts.sqltree import all_of, condition, in_range, is_in, sql

EVENT_COLUMNS = "event_id, person_id, start_date, end_date, visit_occurrence_id, op_start, op_end"


@dataclass(frozen=True)
class Step:
    """One named intermediate result."""

    name: str
    query: exp.Expression


@dataclass(frozen=True)
class CompiledCohort:
    """Everything needed to generate a cohort: codeset rows, steps, final rows, attrition."""

    codeset_items: list[tuple[int, int, bool, bool, bool]]
    steps: list[Step]
    cohort_rows: exp.Expression
    attrition: exp.Expression
    rule_names: list[str]
    flagged: str = ""  # the step holding each qualified event's rule flags
    flags: tuple[str, ...] = ()

    def with_steps(self, query: exp.Expression, cdm_schema: str | None = None) -> exp.Expression:
        """``query`` preceded by every step as a CTE (and the codeset rows as VALUES)."""
        items = self.codeset_items or [(-1, 0, False, False, False)]
        values = exp.values(
            items,
            alias="codeset_items",
            columns=[name for name, _ in CODESET_ITEM_COLUMNS],
        )
        tree = cast(exp.Select, query.copy())
        ctes: list[tuple[str, exp.Expression]] = [("codeset_items", exp.select("*").from_(values))]
        ctes += [(s.name, s.query) for s in self.steps]
        for name, cte in ctes:
            tree = tree.with_(name, as_=cte.copy())
        return qualify(tree, cdm_schema) if cdm_schema else tree


class _Compiler:
    def __init__(self, definition: m.CohortDefinition, cohort_id: int) -> None:
        self.definition = definition
        self.cohort_id = cohort_id
        self.steps: list[Step] = []
        self._ids = itertools.count()

    def add(self, prefix: str, query: exp.Expression) -> str:
        name = f"{prefix}_{next(self._ids)}"
        self.steps.append(Step(name, query))
        return name

    # -- concept sets -----------------------------------------------------------------
    def codesets(self) -> None:
        """Expand concept sets as Circe does: included concepts (and descendants, and the
        source concepts that map to them) minus the excluded ones, valid concepts only."""
        query = sql(
            """
            WITH expanded AS (
                SELECT i.codeset_id, i.is_excluded, c.concept_id, i.include_mapped
                FROM codeset_items i JOIN concept c ON c.concept_id = i.concept_id
                UNION
                SELECT i.codeset_id, i.is_excluded, ca.descendant_concept_id, i.include_mapped
                FROM codeset_items i
                JOIN concept_ancestor ca ON ca.ancestor_concept_id = i.concept_id
                JOIN concept c ON c.concept_id = ca.descendant_concept_id
                 AND c.invalid_reason IS NULL
                WHERE i.include_descendants),
            with_mapped AS (
                SELECT codeset_id, is_excluded, concept_id FROM expanded
                UNION
                SELECT e.codeset_id, e.is_excluded, cr.concept_id_1
                FROM expanded e JOIN concept_relationship cr
                  ON cr.concept_id_2 = e.concept_id AND cr.relationship_id = 'Maps to'
                 AND cr.invalid_reason IS NULL
                WHERE e.include_mapped)
            SELECT codeset_id, concept_id FROM with_mapped WHERE NOT is_excluded
            EXCEPT
            SELECT codeset_id, concept_id FROM with_mapped WHERE is_excluded
            """
        )
        self.steps.append(Step("codesets", query))

    # -- criteria -----------------------------------------------------------------------
    def criterion(self, c: m.Criterion) -> str:
        """A step with the criterion's events (``EVENT_COLUMNS`` plus concept_id, source_id)."""
        spec = DOMAINS[c.domain]
        start = f"d.{spec.start}"
        concept = f"d.{spec.concept}" if spec.concept else "CAST(NULL AS INTEGER)"
        codeset = (
            condition(
                f"{concept} IN (SELECT concept_id FROM codesets WHERE codeset_id = :cs)",
                cs=c.codeset_id,
            )
            if c.codeset_id is not None
            else exp.true()
        )
        filters: list[exp.Expression] = []
        if c.first_occurrence:
            filters.append(condition("d.medlab_ordinal = 1"))
        start_expr, end_expr = condition(start), condition(spec.end_sql)
        if c.age is not None:
            filters.append(in_range(condition(f"YEAR({start}) - p.year_of_birth"), c.age))
        if c.gender:
            filters.append(is_in(condition("p.gender_concept_id"), c.gender))
        if c.start_date is not None:
            filters.append(in_range(start_expr, c.start_date))
        if c.end_date is not None:
            filters.append(in_range(end_expr, c.end_date))
        if c.visit_type:
            filters.append(is_in(condition("v.visit_concept_id"), c.visit_type))
        if c.type_concepts:
            filters.append(
                is_in(condition(f"d.{spec.type_column}"), c.type_concepts, negate=c.type_exclude)
            )
        if c.days_supply is not None:
            filters.append(in_range(condition("d.days_supply"), c.days_supply))
        if c.value_as_number is not None:
            filters.append(in_range(condition("d.value_as_number"), c.value_as_number))
        if c.unit:
            filters.append(is_in(condition("d.unit_concept_id"), c.unit))
        if c.value_as_concept:
            filters.append(is_in(condition("d.value_as_concept_id"), c.value_as_concept))
        if c.refills is not None:
            filters.append(in_range(condition("d.refills"), c.refills))
        if c.quantity is not None:
            filters.append(in_range(condition("d.quantity"), c.quantity))
        if c.duration is not None:
            filters.append(
                in_range(condition(f"DAYS_BETWEEN({start}, {spec.end_sql})"), c.duration)
            )
        if c.occurrence_count is not None:
            filters.append(in_range(condition(f"d.{spec.count_column}"), c.occurrence_count))
        if c.age_at_end is not None:
            filters.append(
                in_range(condition(f"YEAR({spec.end_sql}) - p.year_of_birth"), c.age_at_end)
            )
        for ids, column in (
            (c.operator, "operator_concept_id"),
            (c.condition_status, "condition_status_concept_id"),
            (c.route, "route_concept_id"),
        ):
            if ids:
                filters.append(is_in(condition(f"d.{column}"), ids))
        for bound, column in ((c.range_low, "range_low"), (c.range_high, "range_high")):
            if bound is not None:
                filters.append(in_range(condition(f"d.{column}"), bound))
        if c.source_codeset_id is not None:
            filters.append(
                condition(
                    f"d.{spec.source_concept} IN (SELECT concept_id FROM codesets "
                    "WHERE codeset_id = :cs)",
                    cs=c.source_codeset_id,
                )
            )
        visit = f"d.{spec.visit}" if spec.visit else "CAST(NULL AS INTEGER)"
        # As in Circe, PERSON and VISIT_OCCURRENCE are joined only when an attribute needs
        # them, so events of persons missing from PERSON still count where nothing asks.
        joins = ""
        if c.age is not None or c.age_at_end is not None or c.gender:
            joins += " JOIN person p ON p.person_id = d.person_id"
        if c.visit_type:
            joins += f" JOIN visit_occurrence v ON v.visit_occurrence_id = {visit}"
        # First occurrence is decided over all of the person's events in the concept set,
        # before any other attribute narrows them (Circe's "First").
        query = sql(
            f"""
            SELECT d.person_id, {start} AS start_date, {spec.end_sql} AS end_date,
                   {visit} AS visit_occurrence_id, {concept} AS concept_id,
                   d.{spec.id_column} AS source_id
            FROM (SELECT d.*, ROW_NUMBER() OVER (PARTITION BY d.person_id
                          ORDER BY {start}, d.{spec.id_column}) AS medlab_ordinal
                  FROM {spec.table} d WHERE :codeset) d
            {joins}
            WHERE :filters
            """,
            codeset=codeset,
            filters=all_of(filters),
        )
        name = self.add(f"criterion_{c.domain}", query)
        return self._with_event_ids(name, c.correlated)

    def _with_event_ids(self, events: str, correlated: m.Group | None) -> str:
        """Number the events and attach the observation period holding each start."""
        numbered = self.add(
            "events",
            sql(
                f"""
                SELECT ROW_NUMBER() OVER (ORDER BY e.person_id, e.start_date, e.end_date,
                                          e.concept_id, e.source_id) AS event_id,
                       e.person_id, e.start_date, e.end_date, e.visit_occurrence_id,
                       e.concept_id, e.source_id,
                       op.observation_period_start_date AS op_start,
                       op.observation_period_end_date AS op_end
                FROM {events} e
                LEFT JOIN observation_period op ON op.person_id = e.person_id
                 AND e.start_date BETWEEN op.observation_period_start_date
                                      AND op.observation_period_end_date
                """
            ),
        )
        if correlated is None:
            return numbered
        passing = self.group(correlated, numbered)
        return self.add(
            "correlated",
            sql(
                f"SELECT e.* FROM {numbered} e WHERE e.event_id IN (SELECT event_id FROM {passing})"
            ),
        )

    # -- groups -------------------------------------------------------------------------
    def group(self, g: m.Group, index: str) -> str:
        """A step with the ``event_id`` of each index event that satisfies the group."""
        if g.children == 0:
            return self.add("group", sql(f"SELECT event_id FROM {index}"))
        members: list[str] = []
        for cc in g.criteria:
            members.append(self.correlated(cc, index))
        for demographic in g.demographics:
            members.append(self.demographic(demographic, index))
        for sub in g.groups:
            members.append(self.group(sub, index))
        union = " UNION ALL ".join(
            f"SELECT event_id, {i} AS member FROM {name}" for i, name in enumerate(members)
        )
        threshold = {
            "ALL": f"= {len(members)}",
            "ANY": ">= 1",
            "AT_LEAST": f">= {int(g.count or 0)}",
            "AT_MOST": f"<= {int(g.count or 0)}",
        }[g.type]
        return self.add(
            "group",
            sql(
                f"""
                SELECT i.event_id FROM {index} i
                LEFT JOIN ({union}) passed ON passed.event_id = i.event_id
                GROUP BY i.event_id HAVING COUNT(passed.member) {threshold}
                """
            ),
        )

    def correlated(self, cc: m.CorrelatedCriterion, index: str) -> str:
        """Index events for which the criterion occurs the required number of times."""
        events = self.criterion(cc.criterion)
        joins = [self._window(cc.start_window)]
        if cc.end_window is not None:
            joins.append(self._window(cc.end_window))
        if not cc.ignore_observation_period:
            joins.append(condition("d.start_date >= i.op_start AND d.start_date <= i.op_end"))
        if cc.restrict_visit:
            joins.append(condition("d.visit_occurrence_id = i.visit_occurrence_id"))
        counted = {
            None: "d.event_id",
            "concept": "DISTINCT d.concept_id",
            "start_date": "DISTINCT d.start_date",
            "visit": "DISTINCT d.visit_occurrence_id",
        }[cc.occurrence.distinct]
        compare = {"exactly": "=", "at_least": ">=", "at_most": "<="}[cc.occurrence.type]
        return self.add(
            "occurrences",
            sql(
                f"""
                SELECT event_id FROM (
                    SELECT i.event_id, COUNT({counted}) AS n FROM {index} i
                    LEFT JOIN {events} d ON d.person_id = i.person_id AND :joins
                    GROUP BY i.event_id) counts
                WHERE n {compare} :count
                """,
                joins=all_of(joins),
                count=cc.occurrence.count,
            ),
        )

    def _window(self, w: m.Window) -> exp.Expression:
        anchor = "i.end_date" if w.use_index_end else "i.start_date"
        date = "d.end_date" if w.use_event_end else "d.start_date"
        bounds: list[exp.Expression] = []
        if w.start.days is not None:
            bounds.append(
                condition(
                    f"{date} >= DATEADD_DAYS({anchor}, :days)", days=w.start.coeff * w.start.days
                )
            )
        if w.end.days is not None:
            bounds.append(
                condition(f"{date} <= DATEADD_DAYS({anchor}, :days)", days=w.end.coeff * w.end.days)
            )
        return all_of(bounds)

    def demographic(self, d: m.Demographic, index: str) -> str:
        """Index events whose person (at the index start) and dates meet the conditions."""
        tests: list[exp.Expression] = []
        if d.age is not None:
            tests.append(in_range(condition("YEAR(i.start_date) - p.year_of_birth"), d.age))
        for ids, column in ((d.gender, "gender"), (d.race, "race"), (d.ethnicity, "ethnicity")):
            if ids:
                tests.append(is_in(condition(f"p.{column}_concept_id"), ids))
        if d.start_date is not None:
            tests.append(in_range(condition("i.start_date"), d.start_date))
        if d.end_date is not None:
            tests.append(in_range(condition("i.end_date"), d.end_date))
        return self.add(
            "demographic",
            sql(
                f"SELECT i.event_id FROM {index} i JOIN person p ON p.person_id = i.person_id "
                "WHERE :tests",
                tests=all_of(tests),
            ),
        )

    def limit(self, source: str, how: m.Limit, prefix: str) -> str:
        """Keep the first, last or all events per person (by start date, then event id)."""
        if how == "all":
            return source
        order = "start_date, event_id" if how == "first" else "start_date DESC, event_id DESC"
        return self.add(
            prefix,
            sql(
                f"""
                SELECT {EVENT_COLUMNS} FROM (
                    SELECT {EVENT_COLUMNS}, ROW_NUMBER() OVER (PARTITION BY person_id
                           ORDER BY {order}) AS medlab_rank FROM {source}) ranked
                WHERE medlab_rank = 1
                """
            ),
        )

    # -- the cohort -----------------------------------------------------------------------
    def primary(self) -> str:
        """Entry events: any primary criterion, inside an observation period with the
        required days before and after (unless not required), then the primary limit."""
        p = self.definition.primary
        within = (
            "TRUE"
            if self.definition.observation_period == "not_required"
            else (
                "e.op_start IS NOT NULL AND DATEADD_DAYS(e.op_start, :prior) <= e.start_date "
                "AND DATEADD_DAYS(e.start_date, :post) <= e.op_end"
            )
        )
        parts = [self.criterion(c) for c in p.criteria]
        union = " UNION ALL ".join(
            f"SELECT {i} AS criterion, person_id, start_date, end_date, visit_occurrence_id, "
            f"concept_id, source_id, op_start, op_end FROM {name}"
            for i, name in enumerate(parts)
        )
        entries = self.add(
            "primary_events",
            sql(
                f"""
                SELECT ROW_NUMBER() OVER (ORDER BY e.person_id, e.start_date, e.end_date,
                                          e.criterion, e.concept_id, e.source_id) AS event_id,
                       e.person_id, e.start_date, e.end_date, e.visit_occurrence_id,
                       e.op_start, e.op_end
                FROM ({union}) e
                WHERE {within}
                """,
                prior=p.prior_days,
                post=p.post_days,
            ),
        )
        return self.limit(entries, p.limit, "primary_limited")

    def qualified(self, entries: str) -> str:
        """Entry events that pass the additional criteria, then the qualified limit."""
        if self.definition.additional is not None:
            passing = self.group(self.definition.additional, entries)
            entries = self.add(
                "additional",
                sql(
                    f"SELECT {EVENT_COLUMNS} FROM {entries} "
                    f"WHERE event_id IN (SELECT event_id FROM {passing})"
                ),
            )
        return self.limit(entries, self.definition.qualified_limit, "qualified_events")

    def rules(self, qualified: str) -> tuple[str, list[str]]:
        """Per-rule pass flags for every qualified event, as a step; and the flag names."""
        names = []
        joins = []
        flags = []
        for i, rule in enumerate(self.definition.inclusion_rules):
            passing = self.group(rule.expression, qualified)
            names.append(passing)
            joins.append(f"LEFT JOIN {passing} r{i} ON r{i}.event_id = q.event_id")
            flags.append(f"CASE WHEN r{i}.event_id IS NULL THEN 0 ELSE 1 END AS pass_{i}")
        columns = ", ".join([f"q.{c.strip()}" for c in EVENT_COLUMNS.split(",")] + flags)
        flagged = self.add(
            "rule_flags", sql(f"SELECT {columns} FROM {qualified} q {' '.join(joins)}")
        )
        return flagged, [f"pass_{i}" for i in range(len(names))]

    def included(self, flagged: str, flags: list[str]) -> str:
        """Qualified events passing every rule, then the expression limit."""
        every = " AND ".join(f"{f} = 1" for f in flags) or "TRUE"
        kept = self.add("included", sql(f"SELECT {EVENT_COLUMNS} FROM {flagged} WHERE {every}"))
        return self.limit(kept, self.definition.expression_limit, "included_limited")

    def ends(self, included: str) -> str:
        """Each entry's end: the end strategy's date, or an earlier censoring event (without
        the observation requirement, not capped by the period's end). As in Circe, an entry
        with no end (a drug-era strategy whose era does not cover the index date, and no
        censoring event) leaves the cohort."""
        strategy = self.definition.end_strategy
        free = self.definition.observation_period == "not_required"
        op_end, entry_op_end = ("DATE '9999-12-31'",) * 2 if free else ("op_end", "i.op_end")
        if isinstance(strategy, m.DateOffset):
            field = "start_date" if strategy.field == "start" else "end_date"
            ends = sql(
                f"SELECT event_id, LEAST(DATEADD_DAYS({field}, :offset), {op_end}) AS end_date "
                f"FROM {included}",
                offset=strategy.offset,
            )
        elif isinstance(strategy, m.DrugEra):
            ends = sql(
                f"""
                SELECT i.event_id,
                       LEAST(DATEADD_DAYS(e.era_end, :offset), {entry_op_end}) AS end_date
                FROM {included} i JOIN {self.drug_eras(strategy)} e
                  ON e.person_id = i.person_id
                 AND i.start_date BETWEEN e.era_start AND e.era_end
                """,
                offset=strategy.offset,
            )
        else:
            ends = sql(f"SELECT event_id, op_end AS end_date FROM {included}")
        candidates = [self.add("strategy_ends", ends)]
        for c in self.definition.censoring:
            censor = self.criterion(c)
            candidates.append(
                self.add(
                    "censor_ends",
                    sql(
                        f"""
                        SELECT i.event_id, d.start_date AS end_date
                        FROM {included} i JOIN {censor} d ON d.person_id = i.person_id
                         AND d.start_date >= i.start_date AND d.start_date <= {entry_op_end}
                        """
                    ),
                )
            )
        union = " UNION ALL ".join(f"SELECT event_id, end_date FROM {c}" for c in candidates)
        return self.add(
            "cohort_ends",
            sql(
                f"""
                SELECT i.person_id, i.start_date, MIN(e.end_date) AS end_date
                FROM {included} i JOIN ({union}) e ON e.event_id = i.event_id
                GROUP BY i.event_id, i.person_id, i.start_date
                """
            ),
        )

    def drug_eras(self, s: m.DrugEra) -> str:
        """Continuous exposure to the concept set: exposures at most gap_days apart."""
        end = (
            "DATEADD_DAYS(d.drug_exposure_start_date, :override)"
            if s.days_supply_override
            else "COALESCE(d.drug_exposure_end_date, DATEADD_DAYS(d.drug_exposure_start_date, "
            "d.days_supply), DATEADD_DAYS(d.drug_exposure_start_date, 1))"
        )
        exposures = self.add(
            "exposures",
            sql(
                f"""
                SELECT d.person_id, d.drug_exposure_start_date AS start_date, {end} AS end_date
                FROM drug_exposure d
                WHERE d.drug_concept_id IN (SELECT concept_id FROM codesets
                                            WHERE codeset_id = :cs)
                """,
                cs=s.codeset_id,
                override=s.days_supply_override,
            ),
        )
        return self.collapse(exposures, s.gap_days, "era", ("era_start", "era_end"))

    def collapse(self, source: str, pad: int, prefix: str, names: tuple[str, str]) -> str:
        """Merge each person's intervals that overlap or lie at most ``pad`` days apart."""
        marked = self.add(
            f"{prefix}_starts",
            sql(
                f"""
                SELECT person_id, start_date, end_date,
                       CASE WHEN start_date <= MAX(DATEADD_DAYS(end_date, :pad)) OVER (
                                PARTITION BY person_id ORDER BY start_date, end_date
                                ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
                            THEN 0 ELSE 1 END AS is_start
                FROM {source}
                """,
                pad=pad,
            ),
        )
        grouped = self.add(
            f"{prefix}_groups",
            sql(
                f"""
                SELECT person_id, start_date, end_date,
                       SUM(is_start) OVER (PARTITION BY person_id ORDER BY start_date, end_date
                                           ROWS UNBOUNDED PRECEDING) AS grp
                FROM {marked}
                """
            ),
        )
        return self.add(
            prefix,
            sql(
                f"SELECT person_id, MIN(start_date) AS {names[0]}, MAX(end_date) AS {names[1]} "
                f"FROM {grouped} GROUP BY person_id, grp"
            ),
        )

    def cohort_rows(self, ends: str) -> exp.Expression:
        """Eras of the entries (era_pad_days), clipped to the censor window."""
        eras = self.collapse(
            ends, self.definition.era_pad_days, "cohort_eras", ("start_date", "end_date")
        )
        window = self.definition.censor_window
        start = "GREATEST(start_date, :ws)" if window.start else "start_date"
        end = "LEAST(end_date, :we)" if window.end else "end_date"
        return sql(
            f"""
            SELECT CAST(:cohort_id AS INTEGER) AS cohort_definition_id, person_id AS subject_id,
                   {start} AS cohort_start_date, {end} AS cohort_end_date
            FROM {eras}
            WHERE {start} <= {end}
            """,
            cohort_id=self.cohort_id,
            ws=window.start,
            we=window.end,
        )

    def attrition(self, flagged: str, flags: list[str]) -> exp.Expression:
        """Persons and entries left after each rule in order, and each rule on its own."""
        rows = [
            "SELECT 0 AS rule_index, COUNT(DISTINCT person_id) AS persons, COUNT(*) AS entries, "
            f"COUNT(DISTINCT person_id) AS alone_persons, COUNT(*) AS alone_entries FROM {flagged}"
        ]
        for i, flag in enumerate(flags):
            cumulative = " AND ".join(f"{f} = 1" for f in flags[: i + 1])
            rows.append(
                f"SELECT {i + 1}, COUNT(DISTINCT CASE WHEN {cumulative} THEN person_id END), "
                f"SUM(CASE WHEN {cumulative} THEN 1 ELSE 0 END), "
                f"COUNT(DISTINCT CASE WHEN {flag} = 1 THEN person_id END), "
                f"SUM(CASE WHEN {flag} = 1 THEN 1 ELSE 0 END) FROM {flagged}"
            )
        return sql(f"SELECT * FROM ({' UNION ALL '.join(rows)}) a ORDER BY rule_index")


def _codeset_items(definition: m.CohortDefinition) -> list[tuple[int, int, bool, bool, bool]]:
    return [
        (cs.id, item.concept_id, item.include_descendants, item.include_mapped, item.is_excluded)
        for cs in definition.concept_sets
        for item in cs.items
    ]


def compile_cohort(definition: m.CohortDefinition, cohort_id: int = 1) -> CompiledCohort:
    """The SQLGlot trees that generate ``definition`` as cohort ``cohort_id``."""
    c = _Compiler(definition, cohort_id)
    c.codesets()
    qualified = c.qualified(c.primary())
    flagged, flags = c.rules(qualified)
    ends = c.ends(c.included(flagged, flags))
    return CompiledCohort(
        codeset_items=_codeset_items(definition),
        steps=c.steps,
        cohort_rows=c.cohort_rows(ends),
        attrition=c.attrition(flagged, flags),
        rule_names=[rule.name for rule in definition.inclusion_rules],
        flagged=flagged,
        flags=tuple(flags),
    )
