"""Build the vocabulary subset shipped with ``medlab synth`` (src/medlab/synth/vocabulary/).

The subset is Eunomia GiBleed's vocabulary (OHDSI, Apache-2.0; a real extract of the OHDSI
standardized vocabularies), restricted to a closed set of concepts, plus the concepts the
synthetic hospitals need that Eunomia lacks (listed in ADDITIONS with their OMOP ids). Run from
the repository root with the shared data beside it:

    python scripts/build_synth_vocabulary.py ../shared/data/eunomia-gibleed
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

OUT = Path("src/medlab/synth/vocabulary")
VALID = ("1970-01-01", "2099-12-31")

# concept_id, concept_name, domain_id, vocabulary_id, concept_class_id, standard, concept_code
ADDITIONS: list[tuple[int, str, str, str, str, str, str]] = [
    (320128, "Essential hypertension", "Condition", "SNOMED", "Clinical Finding", "S", "59621000"),
    (316866, "Hypertensive disorder", "Condition", "SNOMED", "Clinical Finding", "S", "38341003"),
    (
        201826,
        "Type 2 diabetes mellitus",
        "Condition",
        "SNOMED",
        "Clinical Finding",
        "S",
        "44054006",
    ),
    (201820, "Diabetes mellitus", "Condition", "SNOMED", "Clinical Finding", "S", "73211009"),
    (
        46271022,
        "Chronic kidney disease",
        "Condition",
        "SNOMED",
        "Clinical Finding",
        "S",
        "709044004",
    ),
    (316139, "Heart failure", "Condition", "SNOMED", "Clinical Finding", "S", "84114007"),
    (432867, "Hyperlipidemia", "Condition", "SNOMED", "Clinical Finding", "S", "55822004"),
    (433736, "Obesity", "Condition", "SNOMED", "Clinical Finding", "S", "414916001"),
    (
        255573,
        "Chronic obstructive lung disease",
        "Condition",
        "SNOMED",
        "Clinical Finding",
        "S",
        "13645005",
    ),
    (
        45591453,
        "Essential (primary) hypertension",
        "Condition",
        "ICD10CM",
        "3-char billing code",
        "",
        "I10",
    ),
    (43013024, "apixaban", "Drug", "RxNorm", "Ingredient", "S", "1364430"),
    (1308216, "Lisinopril", "Drug", "RxNorm", "Ingredient", "S", "29046"),
    (974166, "Hydrochlorothiazide", "Drug", "RxNorm", "Ingredient", "S", "5487"),
    (1503297, "Metformin", "Drug", "RxNorm", "Ingredient", "S", "6809"),
    (3025315, "Body weight", "Measurement", "LOINC", "Clinical Observation", "S", "29463-7"),
    (3036277, "Body height", "Measurement", "LOINC", "Clinical Observation", "S", "8302-2"),
    (
        3038553,
        "Body mass index (BMI) [Ratio]",
        "Measurement",
        "LOINC",
        "Clinical Observation",
        "S",
        "39156-5",
    ),
    (
        3004249,
        "Systolic blood pressure",
        "Measurement",
        "LOINC",
        "Clinical Observation",
        "S",
        "8480-6",
    ),
    (
        3012888,
        "Diastolic blood pressure",
        "Measurement",
        "LOINC",
        "Clinical Observation",
        "S",
        "8462-4",
    ),
    (3027018, "Heart rate", "Measurement", "LOINC", "Clinical Observation", "S", "8867-4"),
    (
        3004410,
        "Hemoglobin A1c/Hemoglobin.total in Blood",
        "Measurement",
        "LOINC",
        "Lab Test",
        "S",
        "4548-4",
    ),
    (9529, "kilogram", "Unit", "UCUM", "Unit", "S", "kg"),
    (8582, "centimeter", "Unit", "UCUM", "Unit", "S", "cm"),
    (9531, "kilogram per square meter", "Unit", "UCUM", "Unit", "S", "kg/m2"),
    (8876, "millimeter mercury column", "Unit", "UCUM", "Unit", "S", "mm[Hg]"),
    (8541, "per minute", "Unit", "UCUM", "Unit", "S", "/min"),
    (8554, "percent", "Unit", "UCUM", "Unit", "S", "%"),
    (8840, "milligram per deciliter", "Unit", "UCUM", "Unit", "S", "mg/dL"),
    (8713, "gram per deciliter", "Unit", "UCUM", "Unit", "S", "g/dL"),
    (586323, "degree Celsius", "Unit", "UCUM", "Unit", "S", "Cel"),
    (8527, "White", "Race", "Race", "Race", "S", "5"),
    (8516, "Black or African American", "Race", "Race", "Race", "S", "3"),
    (8515, "Asian", "Race", "Race", "Race", "S", "2"),
    (38003563, "Hispanic or Latino", "Ethnicity", "Ethnicity", "Ethnicity", "S", "Hispanic"),
    (
        38003564,
        "Not Hispanic or Latino",
        "Ethnicity",
        "Ethnicity",
        "Ethnicity",
        "S",
        "Not Hispanic",
    ),
    (32817, "EHR", "Type Concept", "Type Concept", "Type Concept", "S", "OMOP generated"),
    (
        32838,
        "EHR prescription",
        "Type Concept",
        "Type Concept",
        "Type Concept",
        "S",
        "OMOP generated",
    ),
    (32856, "Lab", "Type Concept", "Type Concept", "Type Concept", "S", "OMOP generated"),
    (
        32815,
        "Death Certificate",
        "Type Concept",
        "Type Concept",
        "Type Concept",
        "S",
        "OMOP generated",
    ),
    (45768192, "Ventilator", "Device", "SNOMED", "Physical Object", "S", "706172005"),
]

# ancestor, descendant, min levels, max levels: the SNOMED parents of the added conditions.
ANCESTRY = [(316866, 320128, 1, 1), (201820, 201826, 1, 1)]
MAPS_TO = [(45591453, 320128)]


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return [{k.lower(): v for k, v in row.items()} for row in csv.DictReader(handle)]


def _write(name: str, header: list[str], rows: list[list[object]]) -> None:
    with (OUT / name).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def main(eunomia: Path) -> None:
    concept_cols = [
        "concept_id",
        "concept_name",
        "domain_id",
        "vocabulary_id",
        "concept_class_id",
        "standard_concept",
        "concept_code",
        "valid_start_date",
        "valid_end_date",
        "invalid_reason",
    ]
    concepts = {
        int(r["concept_id"]): [r[c] for c in concept_cols] for r in _read(eunomia / "CONCEPT.csv")
    }
    for cid, name, domain, vocab, cls, std, code in ADDITIONS:
        concepts[cid] = [str(cid), name, domain, vocab, cls, std, code, *VALID, ""]
    ids = set(concepts)
    ancestors = {
        (int(r["ancestor_concept_id"]), int(r["descendant_concept_id"])): r
        for r in _read(eunomia / "CONCEPT_ANCESTOR.csv")
    }
    rows = [
        [a, d, r["min_levels_of_separation"], r["max_levels_of_separation"]]
        for (a, d), r in ancestors.items()
        if a in ids and d in ids
    ]
    present = {(a, d) for a, d, *_ in rows}
    for cid, *_rest in ADDITIONS:
        if concepts[cid][5] == "S" and (cid, cid) not in present:
            rows.append([cid, cid, 0, 0])
    rows.extend([a, d, lo, hi] for a, d, lo, hi in ANCESTRY)
    relationships = [
        [
            r["concept_id_1"],
            r["concept_id_2"],
            r["relationship_id"],
            r["valid_start_date"],
            r["valid_end_date"],
            r["invalid_reason"],
        ]
        for r in _read(eunomia / "CONCEPT_RELATIONSHIP.csv")
        if int(r["concept_id_1"]) in ids and int(r["concept_id_2"]) in ids
    ]
    for source, target in MAPS_TO:
        relationships.append([source, target, "Maps to", *VALID, ""])
        relationships.append([target, source, "Mapped from", *VALID, ""])
    for a, d, *_ in ANCESTRY:
        relationships.append([d, a, "Is a", *VALID, ""])
        relationships.append([a, d, "Subsumes", *VALID, ""])
    used_vocabs = {c[3] for c in concepts.values()}
    vocab_cols = [
        "vocabulary_id",
        "vocabulary_name",
        "vocabulary_reference",
        "vocabulary_version",
        "vocabulary_concept_id",
    ]
    vocabularies = [
        [r[c] for c in vocab_cols]
        for r in _read(eunomia / "VOCABULARY.csv")
        if r["vocabulary_id"] in used_vocabs
    ]
    if "Type Concept" not in {v[0] for v in vocabularies}:
        # Eunomia's vocabulary predates the "Type Concept" vocabulary (OHDSI, 2020).
        vocabularies.append(["Type Concept", "OMOP Type Concept", "OMOP generated", "", 0])
    relationship_cols = [
        "relationship_id",
        "relationship_name",
        "is_hierarchical",
        "defines_ancestry",
        "reverse_relationship_id",
        "relationship_concept_id",
    ]
    used_rel = {r[2] for r in relationships}
    rel_rows = [
        [r[c] for c in relationship_cols]
        for r in _read(eunomia / "RELATIONSHIP.csv")
        if r["relationship_id"] in used_rel
    ]
    domains = [
        [r["domain_id"], r["domain_name"], r["domain_concept_id"]]
        for r in _read(eunomia / "DOMAIN.csv")
    ]
    classes = sorted({c[4] for c in concepts.values()})
    OUT.mkdir(parents=True, exist_ok=True)
    _write("concept.csv", concept_cols, sorted(concepts.values(), key=lambda r: int(r[0])))
    _write(
        "concept_ancestor.csv",
        [
            "ancestor_concept_id",
            "descendant_concept_id",
            "min_levels_of_separation",
            "max_levels_of_separation",
        ],
        sorted(rows, key=lambda r: (int(r[0]), int(r[1]))),
    )
    _write(
        "concept_relationship.csv",
        [
            "concept_id_1",
            "concept_id_2",
            "relationship_id",
            "valid_start_date",
            "valid_end_date",
            "invalid_reason",
        ],
        sorted(relationships, key=lambda r: (int(r[0]), int(r[1]), r[2])),
    )
    _write("vocabulary.csv", vocab_cols, sorted(vocabularies))
    _write("relationship.csv", relationship_cols, sorted(rel_rows))
    _write("domain.csv", ["domain_id", "domain_name", "domain_concept_id"], sorted(domains))
    _write(
        "concept_class.csv",
        ["concept_class_id", "concept_class_name", "concept_class_concept_id"],
        [[c, c, 0] for c in classes],
    )
    print(
        f"{len(concepts)} concepts, {len(rows)} ancestor rows, {len(relationships)} relationships"
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
