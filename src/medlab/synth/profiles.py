"""The synthetic world: site case mixes, disease model and the planted effects.

Every number a later analysis must recover lives here and is written to ``truth.json``.
Concept ids are real OMOP standard concepts from the shipped vocabulary subset.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

EPOCH = dt.date(1970, 1, 1)
STUDY_START = (dt.date(2008, 1, 1) - EPOCH).days
STUDY_END = (dt.date(2024, 12, 31) - EPOCH).days
DAYS_PER_YEAR = 365.25


@dataclass(frozen=True)
class Condition:
    """A chronic condition: baseline prevalence and incidence, both raised by its parents."""

    key: str
    concept_id: int
    name: str
    prevalence_logit: float
    age_per_decade: float
    frailty: float
    incidence_per_year: float
    parents: dict[str, float] = field(default_factory=dict)
    female: float = 0.0


# Ordered so that each condition's parents come before it (a small causal graph).
CONDITIONS: tuple[Condition, ...] = (
    Condition("obesity", 433736, "Obesity", -1.3, 0.10, 0.4, 0.010),
    Condition(
        "hypertension", 320128, "Essential hypertension", -1.7, 0.55, 0.3, 0.020, {"obesity": 0.7}
    ),
    Condition(
        "diabetes",
        201826,
        "Type 2 diabetes mellitus",
        -2.7,
        0.35,
        0.3,
        0.008,
        {"obesity": 1.0, "hypertension": 0.5},
    ),
    Condition(
        "hyperlipidemia", 432867, "Hyperlipidemia", -1.9, 0.40, 0.2, 0.015, {"diabetes": 0.7}
    ),
    Condition(
        "ckd",
        46271022,
        "Chronic kidney disease",
        -4.3,
        0.60,
        0.3,
        0.005,
        {"diabetes": 0.9, "hypertension": 0.8},
    ),
    Condition(
        "cad",
        317576,
        "Coronary arteriosclerosis",
        -4.6,
        0.60,
        0.3,
        0.004,
        {"hypertension": 0.6, "diabetes": 0.6, "hyperlipidemia": 0.5},
    ),
    Condition(
        "af",
        313217,
        "Atrial fibrillation",
        -5.3,
        0.80,
        0.2,
        0.005,
        {"hypertension": 0.5, "cad": 0.5},
    ),
    Condition(
        "heart_failure",
        316139,
        "Heart failure",
        -6.0,
        0.60,
        0.3,
        0.003,
        {"cad": 1.0, "af": 0.8, "hypertension": 0.5},
    ),
    Condition("copd", 255573, "Chronic obstructive lung disease", -4.0, 0.45, 0.5, 0.003),
    Condition("osteoarthritis", 80180, "Osteoarthritis", -2.6, 0.50, 0.1, 0.010, {"obesity": 0.6}),
    Condition("osteoporosis", 80502, "Osteoporosis", -4.6, 0.60, 0.0, 0.003, female=1.3),
    Condition("asthma", 317009, "Asthma", -2.9, -0.10, 0.2, 0.002, {"obesity": 0.3}),
    Condition("hypothyroidism", 140673, "Hypothyroidism", -3.2, 0.20, 0.0, 0.003, female=1.0),
)
CONDITION_INDEX = {c.key: i for i, c in enumerate(CONDITIONS)}


@dataclass(frozen=True)
class SiteProfile:
    """A hospital's case mix and practice style."""

    kind: str
    description: str
    weight: float
    mean_age: float
    age_sd: float
    pct_female: float
    race_mix: dict[int, float]
    hispanic: float
    visits_per_year: float
    follow_up_years: float
    prevalence_shift: dict[str, float]
    warfarin_preference: float
    lisinopril_preference: float
    gi_bleed_baseline: float
    mi_baseline: float


SITE_PROFILES: tuple[SiteProfile, ...] = (
    SiteProfile(
        "urban_teaching",
        "urban teaching hospital: younger, diverse, DOAC-first",
        0.40,
        44.0,
        19.0,
        0.52,
        {8527: 0.51, 8516: 0.29, 8515: 0.17, 0: 0.03},
        0.22,
        1.6,
        6.0,
        {"obesity": 0.1, "asthma": 0.2},
        -0.8,
        0.3,
        0.030,
        0.0050,
    ),
    SiteProfile(
        "community",
        "community hospital: middle-aged, average case mix",
        0.35,
        52.0,
        18.0,
        0.51,
        {8527: 0.74, 8516: 0.15, 8515: 0.08, 0: 0.03},
        0.12,
        1.4,
        7.0,
        {},
        0.0,
        0.0,
        0.035,
        0.0060,
    ),
    SiteProfile(
        "rural_elderly",
        "rural hospital: older, more kidney disease, warfarin-first",
        0.25,
        61.0,
        16.0,
        0.54,
        {8527: 0.89, 8516: 0.07, 8515: 0.02, 0: 0.02},
        0.05,
        1.2,
        8.0,
        {"ckd": 0.6, "copd": 0.4, "diabetes": 0.2},
        0.8,
        -0.3,
        0.045,
        0.0075,
    ),
)

GENDER_MALE, GENDER_FEMALE = 8507, 8532
HISPANIC, NOT_HISPANIC = 38003563, 38003564
VISIT_INPATIENT, VISIT_OUTPATIENT, VISIT_ER = 9201, 9202, 9203
TYPE_EHR, TYPE_PRESCRIPTION, TYPE_LAB, TYPE_DEATH_CERTIFICATE = 32817, 32838, 32856, 32815

# Drugs: ingredient -> the concept recorded in DRUG_EXPOSURE (a clinical drug where the shipped
# vocabulary has one under the ingredient, so cohorts must use descendants to find it).
DRUG_RECORDED: dict[str, tuple[int, int]] = {
    "apixaban": (43013024, 43013024),
    "warfarin": (1310149, 40163554),
    "lisinopril": (1308216, 1308216),
    "hydrochlorothiazide": (974166, 974166),
    "amlodipine": (1332418, 1332419),
    "metformin": (1503297, 1503297),
    "atorvastatin": (1545958, 1545959),
    "simvastatin": (1539403, 1539411),
    "clopidogrel": (1322184, 19075601),
    "aspirin": (1112807, 19059056),
    "levothyroxine": (1501700, 40174880),
    "alendronate": (1557272, 40173590),
    "albuterol": (1154343, 1154615),
    "celecoxib": (1118084, 1118084),
    "diclofenac": (1124300, 1124300),
    "naproxen": (1115008, 19019273),
    "ibuprofen": (1177480, 19078461),
    "amoxicillin": (1713332, 19073188),
    "acetaminophen": (1125315, 1127433),
}

# Maintenance therapy started at diagnosis: condition -> [(drug, share of patients)].
MAINTENANCE: dict[str, list[tuple[str, float]]] = {
    "diabetes": [("metformin", 0.80)],
    "hyperlipidemia": [("atorvastatin", 0.45), ("simvastatin", 0.30)],
    "cad": [("clopidogrel", 0.35), ("aspirin", 0.45)],
    "hypothyroidism": [("levothyroxine", 0.85)],
    "osteoporosis": [("alendronate", 0.55)],
}
# Short courses at visits: condition -> [(drug, share), ...], days supply.
EPISODIC: dict[str, tuple[list[tuple[str, float]], int]] = {
    "osteoarthritis": (
        [
            ("celecoxib", 0.15),
            ("diclofenac", 0.15),
            ("naproxen", 0.15),
            ("ibuprofen", 0.2),
            ("acetaminophen", 0.2),
        ],
        30,
    ),
    "asthma": ([("albuterol", 0.5)], 30),
    "copd": ([("albuterol", 0.6)], 30),
}

ACUTE_CONDITIONS: tuple[tuple[int, str, float], ...] = (
    (4112343, "Acute viral pharyngitis", 0.22),
    (260139, "Acute bronchitis", 0.16),
    (40481087, "Viral sinusitis", 0.20),
    (81151, "Sprain of ankle", 0.08),
    (195588, "Cystitis", 0.10),
    (372328, "Otitis media", 0.08),
    (255848, "Pneumonia", 0.08),
    (4084167, "Acute allergic reaction", 0.08),
)
PNEUMONIA = 255848
ALLERGIES = (4048169, 4240902, 4306014, 438614, 4169137, 433644, 442116, 4302207)

GI_BLEED = 192671
MYOCARDIAL_INFARCTION = 4329847
APPENDICITIS = 440448
ICD10_SOURCE: dict[int, tuple[str, int]] = {
    320128: ("I10", 45591453),
    192671: ("K92.2", 35208414),
}

PROCEDURE_ECG = 4163951
PROCEDURE_CHEST_XRAY = 4163872
PROCEDURE_PCI = 4216130
PROCEDURE_APPENDECTOMY = 4198190
PROCEDURE_BONE_DENSITY = 4195803
PROCEDURE_BLOOD_DRAW = 4218408
PROCEDURE_CARDIOVERSION = 4078793
DEVICE_VENTILATOR = 45768192

# (concept, unit, name) of measurements taken at visits.
VITALS = {
    "weight": (3025315, 9529),
    "height": (3036277, 8582),
    "bmi": (3038553, 9531),
    "systolic": (3004249, 8876),
    "diastolic": (3012888, 8876),
    "heart_rate": (3027018, 8541),
}
LABS = {
    "hba1c": (3004410, 8554),
    "glucose": (3004501, 8840),
    "creatinine": (3016723, 8840),
    "hemoglobin": (3000963, 8713),
}


@dataclass(frozen=True)
class NegativeControl:
    """An outcome neither drug causes (true HR 1), with its own hazard: a baseline, an age
    effect and a hazard ratio for the pair's confounder (1: not confounded)."""

    concept_id: int
    name: str
    baseline_hazard_per_year: float
    age_hr_per_decade: float
    confounder_hr: float


def _controls(
    rows: tuple[tuple[int, str, float, float, float], ...],
) -> tuple[NegativeControl, ...]:
    return tuple(NegativeControl(*row) for row in rows)


@dataclass(frozen=True)
class ComparativeEffect:
    """A planted target-vs-comparator effect on an outcome, confounded by design."""

    id: str
    population: str
    target: str
    comparator: str
    outcome_concept_id: int
    outcome_name: str
    hazard_ratio: float
    treated_share: float
    index_delay_days: int
    reference_age: float
    outcome_age_hr_per_decade: float
    outcome_confounder_hr: float
    confounder: str
    comparator_age_log_odds_per_decade: float
    comparator_confounder_log_odds: float
    negative_controls: tuple[NegativeControl, ...] = ()


EFFECTS: tuple[ComparativeEffect, ...] = (
    ComparativeEffect(
        id="apixaban_vs_warfarin_gi_bleed",
        population="af",
        target="apixaban",
        comparator="warfarin",
        outcome_concept_id=GI_BLEED,
        outcome_name="Gastrointestinal hemorrhage",
        hazard_ratio=0.60,
        treated_share=0.85,
        index_delay_days=14,
        reference_age=70.0,
        outcome_age_hr_per_decade=1.6,
        outcome_confounder_hr=2.2,
        confounder="ckd",
        comparator_age_log_odds_per_decade=0.45,
        comparator_confounder_log_odds=1.3,
        # Injuries; most share the confounder (kidney disease) with the outcome, so the
        # crude estimates of the controls are biased as the crude estimate of the effect is.
        negative_controls=_controls(
            (
                (378001, "Concussion with no loss of consciousness", 0.020, 1.0, 1.0),
                (4218389, "Whiplash injury to neck", 0.020, 1.3, 1.5),
                (78272, "Sprain of wrist", 0.025, 1.2, 2.0),
                (4278672, "Fracture of forearm", 0.020, 1.5, 2.5),
                (4113008, "Laceration of hand", 0.030, 1.0, 1.2),
                (4156265, "Facial laceration", 0.020, 1.4, 3.0),
                (4155034, "Laceration of forearm", 0.025, 1.1, 1.8),
                (4152936, "Laceration of thigh", 0.015, 1.6, 2.2),
                (4237458, "Fracture of clavicle", 0.020, 1.3, 1.0),
                (4109685, "Laceration of foot", 0.025, 1.2, 2.5),
            )
        ),
    ),
    ComparativeEffect(
        id="lisinopril_vs_hydrochlorothiazide_mi",
        population="hypertension",
        target="lisinopril",
        comparator="hydrochlorothiazide",
        outcome_concept_id=MYOCARDIAL_INFARCTION,
        outcome_name="Myocardial infarction",
        hazard_ratio=1.0,
        treated_share=0.75,
        index_delay_days=30,
        reference_age=60.0,
        outcome_age_hr_per_decade=1.5,
        outcome_confounder_hr=2.5,
        confounder="diabetes",
        comparator_age_log_odds_per_decade=-0.2,
        comparator_confounder_log_odds=-1.4,
        negative_controls=_controls(
            (
                (4134304, "Fracture subluxation of wrist", 0.010, 1.2, 1.0),
                (4059173, "Fracture of ankle", 0.012, 1.3, 1.8),
                (4116491, "Escherichia coli urinary tract infection", 0.015, 1.4, 2.5),
                (4296204, "First degree burn", 0.012, 1.0, 1.5),
                (4146173, "Injury of tendon of the rotator cuff of shoulder", 0.010, 1.5, 2.0),
                (4142905, "Fracture of rib", 0.010, 1.6, 3.0),
                (4296205, "Second degree burn", 0.008, 1.0, 1.2),
                (4230399, "Closed fracture of hip", 0.008, 1.8, 2.2),
                (134438, "Contact dermatitis", 0.015, 1.0, 1.0),
                (40479422, "Injury of medial collateral ligament of knee", 0.010, 1.1, 2.5),
            )
        ),
    ),
)

# Background first-occurrence hazards (per person-year) outside the planted studies.
BACKGROUND_HAZARD = {GI_BLEED: 0.0015, MYOCARDIAL_INFARCTION: 0.0020}
APPENDICITIS_RATE_PER_1000_PY = 1.2

# Death: hazard per year = base * exp(age_slope * (age - 50)) * exp(sum of condition effects).
DEATH_BASE = 0.0012
DEATH_AGE_SLOPE = 0.085
DEATH_CONDITIONS = {"heart_failure": 0.8, "ckd": 0.5, "copd": 0.6, "diabetes": 0.3, "cad": 0.3}
