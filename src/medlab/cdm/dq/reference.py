"""Reference knowledge the plausibility checks compare data against.

Ranges and gender-specific concepts follow the spirit of OHDSI DataQualityDashboard's
concept-level thresholds (``OMOP_CDMv5.4_Concept_Level.csv``): a value outside them is very
unlikely to be a real measurement of a living person.
"""

from __future__ import annotations

# (measurement_concept_id, unit_concept_id) -> (lowest plausible, highest plausible).
PLAUSIBLE_MEASUREMENTS: dict[tuple[int, int], tuple[float, float]] = {
    (3025315, 9529): (0.3, 350.0),  # Body weight, kg
    (3036277, 8582): (20.0, 250.0),  # Body height, cm
    (3038553, 9531): (8.0, 100.0),  # Body mass index, kg/m2
    (3004249, 8876): (40.0, 300.0),  # Systolic blood pressure, mmHg
    (3012888, 8876): (20.0, 200.0),  # Diastolic blood pressure, mmHg
    (3027018, 8541): (20.0, 300.0),  # Heart rate, per minute
    (3004410, 8554): (2.0, 20.0),  # Hemoglobin A1c, %
    (3004501, 8840): (10.0, 1500.0),  # Glucose, mg/dL
    (3016723, 8840): (0.1, 30.0),  # Creatinine, mg/dL
    (3000963, 8713): (2.0, 25.0),  # Hemoglobin, g/dL
    (3006322, 586323): (30.0, 45.0),  # Oral temperature, degree Celsius
}

# Concepts recorded only for one sex (DQD plausibleGender). 8507 MALE, 8532 FEMALE.
MALE_ONLY_CONCEPTS: dict[int, str] = {
    4330583: "Vasectomy",
}
FEMALE_ONLY_CONCEPTS: dict[int, str] = {
    4117038: "Bilateral tubal ligation",
    4275113: "Insertion of intrauterine contraceptive device",
    4238715: "Removal of intrauterine device",
    4186930: "Replacement of intrauterine contraceptive device",
    45769019: "Female infertility due to cystic fibrosis",
}

# Field-level plausible value ranges (DQD plausibleValueLow / plausibleValueHigh).
PLAUSIBLE_FIELD_RANGES: dict[tuple[str, str], tuple[float | None, float | None]] = {
    ("person", "month_of_birth"): (1, 12),
    ("person", "day_of_birth"): (1, 31),
    ("drug_exposure", "days_supply"): (0, 365),
    ("drug_exposure", "refills"): (0, 24),
    ("drug_exposure", "quantity"): (0, 1095),
    ("procedure_occurrence", "quantity"): (0, None),
    ("device_exposure", "quantity"): (0, None),
    ("specimen", "quantity"): (0, None),
    ("drug_era", "drug_exposure_count"): (1, None),
    ("drug_era", "gap_days"): (0, None),
    ("condition_era", "condition_occurrence_count"): (1, None),
    ("dose_era", "dose_value"): (0, None),
}

# Start and end date columns of tables whose rows happen at a time.
EVENT_DATES: dict[str, tuple[str, str | None]] = {
    "observation_period": ("observation_period_start_date", "observation_period_end_date"),
    "visit_occurrence": ("visit_start_date", "visit_end_date"),
    "visit_detail": ("visit_detail_start_date", "visit_detail_end_date"),
    "condition_occurrence": ("condition_start_date", "condition_end_date"),
    "drug_exposure": ("drug_exposure_start_date", "drug_exposure_end_date"),
    "procedure_occurrence": ("procedure_date", "procedure_end_date"),
    "device_exposure": ("device_exposure_start_date", "device_exposure_end_date"),
    "measurement": ("measurement_date", None),
    "observation": ("observation_date", None),
    "specimen": ("specimen_date", None),
    "note": ("note_date", None),
    "death": ("death_date", None),
    "payer_plan_period": ("payer_plan_period_start_date", "payer_plan_period_end_date"),
    "drug_era": ("drug_era_start_date", "drug_era_end_date"),
    "dose_era": ("dose_era_start_date", "dose_era_end_date"),
    "condition_era": ("condition_era_start_date", "condition_era_end_date"),
}

# Clinical event tables: recorded during contact with care, so inside observation and visits.
CLINICAL_EVENTS = (
    "visit_occurrence",
    "visit_detail",
    "condition_occurrence",
    "drug_exposure",
    "procedure_occurrence",
    "device_exposure",
    "measurement",
    "observation",
    "specimen",
    "note",
)

# DQD measurePersonCompleteness thresholds (% of persons allowed without a record).
PERSON_COMPLETENESS_THRESHOLDS: dict[str, float] = {
    "observation_period": 0.0,
    "visit_occurrence": 95.0,
    "condition_occurrence": 95.0,
    "drug_exposure": 95.0,
    "procedure_occurrence": 95.0,
    "measurement": 95.0,
    "observation": 95.0,
}
