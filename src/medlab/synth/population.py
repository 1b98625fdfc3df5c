"""Persons, observation, chronic disease, death and the planted studies, as numpy arrays.

Times are whole days since 1970-01-01 (int64). ``-1`` marks "never". Everything is drawn for
a chunk of persons at once; nothing loops over persons.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from medlab.synth import profiles as P

NEVER = -1


@dataclass
class StudyArm:
    """Members of one planted comparative study in this chunk."""

    effect: P.ComparativeEffect
    person: np.ndarray  # index into the chunk
    index_day: np.ndarray
    target: np.ndarray  # bool: True = target drug, False = comparator
    age: np.ndarray
    confounder: np.ndarray  # bool, at index
    outcome_day: np.ndarray  # NEVER when no outcome during follow-up
    control_days: list[np.ndarray] = field(default_factory=list)  # per negative control


@dataclass
class Population:
    """One chunk of simulated persons."""

    n: int
    female: np.ndarray
    birth_day: np.ndarray
    race: np.ndarray
    hispanic: np.ndarray
    obs_start: np.ndarray
    obs_end: np.ndarray
    death_day: np.ndarray
    dx_day: np.ndarray  # shape (n, conditions)
    studies: list[StudyArm]
    background: dict[int, np.ndarray]  # outcome concept -> first event day or NEVER
    appendicitis_day: np.ndarray

    def age_at(self, day: np.ndarray, who: np.ndarray | slice = slice(None)) -> np.ndarray:
        """Age in years (fractional) of persons ``who`` on ``day``."""
        return (day - self.birth_day[who]) / P.DAYS_PER_YEAR


def _logistic(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _exp_days(rng: np.random.Generator, rate_per_year: np.ndarray) -> np.ndarray:
    """Waiting times in days for exponential hazards given per year."""
    return rng.exponential(1.0, rate_per_year.shape) / rate_per_year * P.DAYS_PER_YEAR


def _first_event(
    rng: np.random.Generator, start: np.ndarray, end: np.ndarray, rate_per_year: np.ndarray
) -> np.ndarray:
    """First event day after ``start`` (from start+1) under a constant hazard, NEVER past end."""
    day = start + 1 + np.floor(_exp_days(rng, rate_per_year)).astype(np.int64)
    return np.where(day <= end, day, NEVER)


def simulate(rng: np.random.Generator, n: int, site: P.SiteProfile) -> Population:
    """Draw ``n`` persons of a site with their whole observed history of planted processes."""
    female = rng.random(n) < site.pct_female
    age0 = np.clip(rng.normal(site.mean_age, site.age_sd, n), 0.2, 98.0)
    obs_start = P.STUDY_START + rng.integers(0, 3650, n)
    birth = obs_start - np.floor(age0 * P.DAYS_PER_YEAR).astype(np.int64)
    length = 180 + rng.exponential(site.follow_up_years * P.DAYS_PER_YEAR - 180, n)
    admin_end = np.minimum(obs_start + length.astype(np.int64), P.STUDY_END)
    races = np.array(list(site.race_mix))
    race = races[rng.choice(len(races), n, p=np.array(list(site.race_mix.values())))]
    hispanic = rng.random(n) < site.hispanic
    frailty = rng.normal(0.0, 1.0, n)

    decades = (age0 - 50.0) / 10.0
    dx = np.full((n, len(P.CONDITIONS)), NEVER, dtype=np.int64)
    for k, cond in enumerate(P.CONDITIONS):
        lin = (
            cond.age_per_decade * decades
            + cond.frailty * frailty
            + cond.female * female
            + site.prevalence_shift.get(cond.key, 0.0)
        )
        for parent, weight in cond.parents.items():
            lin = lin + weight * (dx[:, P.CONDITION_INDEX[parent]] != NEVER)
        prevalent = rng.random(n) < _logistic(cond.prevalence_logit + lin)
        # A prevalent condition is first recorded at the first visit of observation.
        first_visit = obs_start + rng.integers(0, 60, n)
        incident = _first_event(rng, obs_start, admin_end, cond.incidence_per_year * np.exp(lin))
        dx[:, k] = np.where(prevalent, np.minimum(first_visit, admin_end), incident)

    death_rate = P.DEATH_BASE * np.exp(P.DEATH_AGE_SLOPE * (age0 - 50.0))
    for key, weight in P.DEATH_CONDITIONS.items():
        death_rate = death_rate * np.exp(weight * (dx[:, P.CONDITION_INDEX[key]] != NEVER))
    death = _first_event(rng, obs_start, admin_end, death_rate)
    obs_end = np.where(death != NEVER, death, admin_end)
    dx = np.where(dx > obs_end[:, None], NEVER, dx)

    pop = Population(
        n=n,
        female=female,
        birth_day=birth,
        race=race,
        hispanic=hispanic,
        obs_start=obs_start,
        obs_end=obs_end,
        death_day=death,
        dx_day=dx,
        studies=[],
        background={},
        appendicitis_day=NEVER * np.ones(n, dtype=np.int64),
    )
    for effect in P.EFFECTS:
        arm = _study(rng, pop, site, effect)
        pop.studies.append(arm)
        if effect.outcome_concept_id in P.BACKGROUND_HAZARD:
            rate = np.full(n, P.BACKGROUND_HAZARD[effect.outcome_concept_id])
            # Study members get background events only before their index date, so that
            # after index the planted model alone drives the outcome.
            limit = obs_end.copy()
            limit[arm.person] = arm.index_day
            background = _first_event(rng, obs_start, limit, rate)
            pop.background[effect.outcome_concept_id] = background
    pop.appendicitis_day = _first_event(
        rng, obs_start - 1, obs_end, np.full(n, P.APPENDICITIS_RATE_PER_1000_PY / 1000.0)
    )
    for arm in pop.studies:  # drawn last: the planted effects' draws stay as they were
        decades = (arm.age - arm.effect.reference_age) / 10.0
        for control in arm.effect.negative_controls:
            rate = (
                control.baseline_hazard_per_year
                * control.age_hr_per_decade**decades
                * control.confounder_hr**arm.confounder
            )
            arm.control_days.append(_first_event(rng, arm.index_day, obs_end[arm.person], rate))
    return pop


def _study(
    rng: np.random.Generator, pop: Population, site: P.SiteProfile, effect: P.ComparativeEffect
) -> StudyArm:
    """New users of target or comparator after diagnosis, with outcomes from the planted model."""
    dx = pop.dx_day[:, P.CONDITION_INDEX[effect.population]]
    index = dx + rng.integers(0, effect.index_delay_days + 1, pop.n)
    eligible = (dx != NEVER) & (index < pop.obs_end) & (rng.random(pop.n) < effect.treated_share)
    who = np.flatnonzero(eligible)
    index = index[who]
    age = pop.age_at(index, who)
    conf_dx = pop.dx_day[who, P.CONDITION_INDEX[effect.confounder]]
    confounder = (conf_dx != NEVER) & (conf_dx <= index)
    decades = (age - effect.reference_age) / 10.0
    preference = (
        site.warfarin_preference if effect.comparator == "warfarin" else -site.lisinopril_preference
    )
    comparator_logit = (
        preference
        + effect.comparator_age_log_odds_per_decade * decades
        + effect.comparator_confounder_log_odds * confounder
    )
    target = rng.random(len(who)) >= _logistic(comparator_logit)
    baseline = (
        site.gi_bleed_baseline if effect.outcome_concept_id == P.GI_BLEED else site.mi_baseline
    )
    rate = (
        baseline
        * np.exp(np.log(effect.hazard_ratio) * target)
        * effect.outcome_age_hr_per_decade**decades
        * effect.outcome_confounder_hr**confounder
    )
    outcome = _first_event(rng, index, pop.obs_end[who], rate)
    return StudyArm(effect, who, index, target, age, confounder, outcome)
