"""Drug exposures, measurements, procedures, devices and observations for a chunk."""

from __future__ import annotations

import numpy as np

from medlab.synth import profiles as P
from medlab.synth.events import ChunkBuilder, Visits, _cat, _choose
from medlab.synth.population import NEVER

_INFECTIONS = np.array([4112343, 260139, 40481087, 195588, 372328, 255848])


def _fills(
    b: ChunkBuilder,
    who: np.ndarray,
    start: np.ndarray,
    stop: np.ndarray,
    concept: np.ndarray,
    days_supply: np.ndarray,
    max_gap: int,
) -> None:
    """Dispensings of a course from ``start`` to ``stop``: fills of ``days_supply`` days,
    each followed by a gap of 0..max_gap days, as pharmacies record them."""
    if len(who) == 0:
        return
    gap = b.rng.integers(0, max_gap + 1, len(who))
    step = days_supply + gap
    n_fills = np.maximum(1, (stop - start) // step + 1)
    course = np.repeat(np.arange(len(who)), n_fills)
    first = np.cumsum(n_fills) - n_fills
    k = np.arange(len(course)) - np.repeat(first, n_fills)
    fill_start = start[course] + k * step[course]
    ds = days_supply[course]
    remaining = (n_fills[course] - 1 - k) % 12
    n = len(course)
    b.add(
        "drug_exposure",
        {
            "drug_exposure_id": b.ids.take("drug_exposure", n),
            "person_id": b.person_ids[who[course]],
            "drug_concept_id": concept[course],
            "drug_exposure_start_date": fill_start,
            "drug_exposure_start_datetime": fill_start,
            "drug_exposure_end_date": fill_start + ds - 1,
            "drug_exposure_end_datetime": fill_start + ds - 1,
            "drug_type_concept_id": np.full(n, P.TYPE_PRESCRIPTION),
            "refills": remaining,
            "quantity": ds.astype(np.float64),
            "days_supply": ds,
            "drug_source_value": b.source_values(concept[course]),
            "drug_source_concept_id": concept[course],
        },
    )


def _recorded(name: str) -> int:
    return P.DRUG_RECORDED[name][1]


def drugs(b: ChunkBuilder, visits: Visits, acute: np.ndarray) -> None:
    """Study drugs, maintenance therapy, episodic and acute prescriptions."""
    rng, pop = b.rng, b.pop
    for arm in pop.studies:
        concept = np.where(
            arm.target, _recorded(arm.effect.target), _recorded(arm.effect.comparator)
        )
        supply = np.where(rng.random(len(arm.person)) < 0.5, 30, 90)
        # Persistent users: treatment continues through follow-up, so on-treatment and
        # intention-to-treat time at risk coincide (the truth does not depend on the choice).
        _fills(b, arm.person, arm.index_day, pop.obs_end[arm.person], concept, supply, 7)
    for key, options in P.MAINTENANCE.items():
        dx = pop.dx_day[:, P.CONDITION_INDEX[key]]
        who = np.flatnonzero(dx != NEVER)
        pick = _choose(rng, len(who), options)
        who, pick = who[pick >= 0], pick[pick >= 0]
        start = dx[who] + rng.integers(0, 31, len(who))
        stop = np.minimum(
            pop.obs_end[who],
            start + rng.exponential(4.0 * P.DAYS_PER_YEAR, len(who)).astype(np.int64),
        )
        keep = start <= stop
        concept = np.array([_recorded(name) for name, _ in options])[pick]
        supply = np.where(rng.random(len(who)) < 0.6, 90, 30)
        _fills(b, who[keep], start[keep], stop[keep], concept[keep], supply[keep], 20)
    htn = pop.dx_day[:, P.CONDITION_INDEX["hypertension"]]
    who = np.flatnonzero((htn != NEVER) & (rng.random(pop.n) < 0.25))
    start = htn[who] + 180
    keep = start <= pop.obs_end[who]
    who, start = who[keep], start[keep]
    _fills(
        b,
        who,
        start,
        pop.obs_end[who],
        np.full(len(who), _recorded("amlodipine")),
        np.full(len(who), 90),
        20,
    )

    routine = np.flatnonzero(visits.routine)
    person, day = visits.person[routine], visits.start[routine]
    people, starts, concepts, supplies = [], [], [], []
    for key, (options, days) in P.EPISODIC.items():
        dx = pop.dx_day[person, P.CONDITION_INDEX[key]]
        active = (dx != NEVER) & (dx <= day) & (rng.random(len(routine)) < 0.3)
        pick = _choose(rng, int(active.sum()), options)
        chosen = pick >= 0
        names = np.array([_recorded(name) for name, _ in options])
        people.append(person[active][chosen])
        starts.append(day[active][chosen])
        concepts.append(names[pick[chosen]])
        supplies.append(np.full(int(chosen.sum()), days))
    infected = np.isin(acute, _INFECTIONS) & (rng.random(len(routine)) < 0.5)
    people.append(person[infected])
    starts.append(day[infected])
    concepts.append(np.full(int(infected.sum()), _recorded("amoxicillin")))
    supplies.append(np.full(int(infected.sum()), 10))
    sprain = (acute == 81151) & (rng.random(len(routine)) < 0.6)
    people.append(person[sprain])
    starts.append(day[sprain])
    concepts.append(np.full(int(sprain.sum()), _recorded("acetaminophen")))
    supplies.append(np.full(int(sprain.sum()), 7))
    start = _cat(starts)
    supply = _cat(supplies)
    _fills(b, _cat(people), start, start, _cat(concepts), supply, 0)


def measurements(b: ChunkBuilder, visits: Visits) -> np.ndarray:
    """Vital signs and a lab panel at routine outpatient visits; returns lab-visit indices."""
    rng, pop = b.rng, b.pop
    has = {
        key: pop.dx_day[:, P.CONDITION_INDEX[key]] != NEVER
        for key in ("obesity", "hypertension", "diabetes", "ckd", "af")
    }
    height = np.where(pop.female, 163.0, 176.0) + rng.normal(0, 7, pop.n)
    bmi = 25.5 + 6.0 * has["obesity"] + rng.normal(0, 2.5, pop.n)
    outpatient = np.flatnonzero(visits.routine & (visits.concept == P.VISIT_OUTPATIENT))
    rows_person: list[np.ndarray] = []
    rows_visit: list[np.ndarray] = []
    rows_concept: list[np.ndarray] = []
    rows_value: list[np.ndarray] = []
    rows_unit: list[np.ndarray] = []
    rows_low: list[np.ndarray] = []
    rows_high: list[np.ndarray] = []
    rows_type: list[np.ndarray] = []

    def emit(
        idx: np.ndarray,
        name: str,
        value: np.ndarray,
        lab: bool,
        ref: tuple[float, float] | None = None,
    ) -> None:
        concept, unit = (P.LABS if lab else P.VITALS)[name]
        n = len(idx)
        rows_person.append(visits.person[idx])
        rows_visit.append(idx)
        rows_concept.append(np.full(n, concept))
        rows_value.append(np.round(value, 1 if name != "creatinine" else 2))
        rows_unit.append(np.full(n, unit))
        rows_low.append(np.full(n, np.nan if ref is None else ref[0]))
        rows_high.append(np.full(n, np.nan if ref is None else ref[1]))
        rows_type.append(np.full(n, P.TYPE_LAB if lab else P.TYPE_EHR))

    vital = outpatient[rng.random(len(outpatient)) < 0.5]
    p = visits.person[vital]
    age = pop.age_at(visits.start[vital], p)
    m = len(vital)
    weight = (bmi[p] + rng.normal(0, 0.8, m)) * (height[p] / 100.0) ** 2
    emit(vital, "weight", weight, False)
    emit(vital, "bmi", weight / (height[p] / 100.0) ** 2, False)
    tall = rng.random(m) < 0.2
    emit(vital[tall], "height", height[p][tall] + rng.normal(0, 0.5, int(tall.sum())), False)
    emit(
        vital,
        "systolic",
        118 + 0.4 * np.clip(age - 40, 0, None) + 16 * has["hypertension"][p] + rng.normal(0, 10, m),
        False,
    )
    emit(vital, "diastolic", 75 + 8 * has["hypertension"][p] + rng.normal(0, 7, m), False)
    emit(vital, "heart_rate", 72 + 9 * has["af"][p] + rng.normal(0, 9, m), False)

    lab = outpatient[rng.random(len(outpatient)) < 0.3]
    p = visits.person[lab]
    m = len(lab)
    emit(lab, "hba1c", 5.4 + 2.1 * has["diabetes"][p] + rng.normal(0, 0.4, m), True, (4.0, 5.6))
    emit(lab, "glucose", 94 + 50 * has["diabetes"][p] + rng.normal(0, 14, m), True, (70, 99))
    emit(
        lab,
        "creatinine",
        np.clip(0.9 + 1.2 * has["ckd"][p] + rng.normal(0, 0.15, m), 0.3, None),
        True,
        (0.6, 1.2),
    )
    emit(
        lab,
        "hemoglobin",
        14.2 - 1.0 * pop.female[p] - 1.3 * has["ckd"][p] + rng.normal(0, 1.0, m),
        True,
        (12.0, 17.5),
    )

    visit_idx = _cat(rows_visit)
    n = len(visit_idx)
    day = visits.start[visit_idx]
    low, high = np.concatenate(rows_low), np.concatenate(rows_high)
    b.add(
        "measurement",
        {
            "measurement_id": b.ids.take("measurement", n),
            "person_id": b.person_ids[_cat(rows_person)],
            "measurement_concept_id": _cat(rows_concept),
            "measurement_date": day,
            "measurement_datetime": day,
            "measurement_type_concept_id": _cat(rows_type),
            "value_as_number": np.concatenate(rows_value),
            "unit_concept_id": _cat(rows_unit),
            "range_low": np.ma.masked_invalid(low),
            "range_high": np.ma.masked_invalid(high),
            "visit_occurrence_id": visits.ids[visit_idx],
            "measurement_source_concept_id": _cat(rows_concept),
            "measurement_source_value": b.source_values(_cat(rows_concept)),
        },
    )
    return lab


def procedures_devices_observations(
    b: ChunkBuilder, visits: Visits, acute: np.ndarray, lab_visits: np.ndarray
) -> None:
    """Procedures tied to diagnoses and outcomes, ventilators, and recorded allergies."""
    rng = b.rng
    people, days, concepts, vids = [], [], [], []

    def emit(
        idx_people: np.ndarray, idx_days: np.ndarray, concept: int, idx_visits: np.ndarray
    ) -> None:
        people.append(idx_people)
        days.append(idx_days)
        concepts.append(np.full(len(idx_people), concept))
        vids.append(idx_visits)

    for (who, day, what, event_concept), ids in zip(b.events, visits.event_ids):
        if what == "dx" and event_concept in (313217, 317576):
            emit(who, day, P.PROCEDURE_ECG, ids)
            if event_concept == 313217:
                cv = rng.random(len(who)) < 0.1
                emit(who[cv], day[cv], P.PROCEDURE_CARDIOVERSION, ids[cv])
        elif what == "dx" and event_concept == 80502:
            emit(who, day, P.PROCEDURE_BONE_DENSITY, ids)
        elif what == "outcome" and event_concept == P.MYOCARDIAL_INFARCTION:
            pci = rng.random(len(who)) < 0.4
            emit(who[pci], day[pci], P.PROCEDURE_PCI, ids[pci])
        elif what == "appendicitis":
            done = rng.random(len(who)) < 0.95
            emit(who[done], day[done], P.PROCEDURE_APPENDECTOMY, ids[done])
    routine = np.flatnonzero(visits.routine)
    pneumonia = routine[acute == P.PNEUMONIA]
    emit(
        visits.person[pneumonia],
        visits.start[pneumonia],
        P.PROCEDURE_CHEST_XRAY,
        visits.ids[pneumonia],
    )
    emit(
        visits.person[lab_visits],
        visits.start[lab_visits],
        P.PROCEDURE_BLOOD_DRAW,
        visits.ids[lab_visits],
    )
    day = _cat(days)
    n = len(day)
    concept = _cat(concepts)
    b.add(
        "procedure_occurrence",
        {
            "procedure_occurrence_id": b.ids.take("procedure_occurrence", n),
            "person_id": b.person_ids[_cat(people)],
            "procedure_concept_id": concept,
            "procedure_date": day,
            "procedure_datetime": day,
            "procedure_type_concept_id": np.full(n, P.TYPE_EHR),
            "quantity": np.ones(n, dtype=np.int64),
            "visit_occurrence_id": _cat(vids),
            "procedure_source_value": b.source_values(concept),
            "procedure_source_concept_id": concept,
        },
    )

    ventilated = pneumonia[
        (visits.concept[pneumonia] == P.VISIT_INPATIENT) & (rng.random(len(pneumonia)) < 0.3)
    ]
    n = len(ventilated)
    start = visits.start[ventilated]
    b.add(
        "device_exposure",
        {
            "device_exposure_id": b.ids.take("device_exposure", n),
            "person_id": b.person_ids[visits.person[ventilated]],
            "device_concept_id": np.full(n, P.DEVICE_VENTILATOR),
            "device_exposure_start_date": start,
            "device_exposure_start_datetime": start,
            "device_exposure_end_date": np.maximum(start, visits.end[ventilated]),
            "device_type_concept_id": np.full(n, P.TYPE_EHR),
            "quantity": np.ones(n, dtype=np.int64),
            "visit_occurrence_id": visits.ids[ventilated],
            "device_source_concept_id": np.full(n, P.DEVICE_VENTILATOR),
        },
    )

    first_visit = np.unique(visits.person[routine], return_index=True)[1]
    first = routine[first_visit]
    allergic = first[rng.random(len(first)) < 0.12]
    n = len(allergic)
    concept = np.array(P.ALLERGIES)[rng.integers(0, len(P.ALLERGIES), n)]
    b.add(
        "observation",
        {
            "observation_id": b.ids.take("observation", n),
            "person_id": b.person_ids[visits.person[allergic]],
            "observation_concept_id": concept,
            "observation_date": visits.start[allergic],
            "observation_datetime": visits.start[allergic],
            "observation_type_concept_id": np.full(n, P.TYPE_EHR),
            "visit_occurrence_id": visits.ids[allergic],
            "observation_source_value": b.source_values(concept),
            "observation_source_concept_id": concept,
        },
    )
