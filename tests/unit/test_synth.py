"""The synthetic population: reproducible, valid FHIR, self-contained, and meaning what it says."""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

import fhir_match.synth
from fhir_match.errors import ConfigError
from fhir_match.screen import MAPPINGS_DIR
from fhir_match.synth import codes, generate
from fhir_match.synth.edges import ANY_EDGES, ITP_EDGES, TAIL_EDGES
from fhir_match.synth.expected import CRITERIA, DEFERRED, expected_results
from fhir_match.synth.generate import DEFAULT_AS_OF, start_chart
from fhir_match.synth.people import AGE_EDGES, make_person
from fhir_match.synth.render import shared_resources
from fhir_match.synth.writers import SHARED_BUNDLE
from fhir_match.terminology import DRUG_NAME, Terminology, load_terminology
from fhir_match.units import UnitProblem, load_unit_map, normalise_quantity

VS = "https://fhir-match.org/fhir/ValueSet/"
RESULTS = {"met", "not-met", "unknown"}

# Codes terminology.yaml verifies (not MEMORY) that no value set of mappings/ holds, because no
# criterion reads them.
OUTSIDE_MAPPINGS = {
    (codes.ATC, "G03XA01"),  # danazol
    (codes.ATC, "P01BA02"),  # hydroxychloroquine
    (codes.RXNORM, "5521"),  # hydroxychloroquine
    (codes.ICD10CM, "D09.0"),  # carcinoma in situ of bladder
    (codes.ICD10, "D09.0"),
}
CONDITION_SETS = {
    codes.ITP, codes.ITP_HISTORY, codes.EVANS, codes.THROMBOCYTOPENIA_UNSPECIFIED,
    codes.SPLENOMEGALY, codes.ASPLENIA, codes.SECONDARY, codes.IMMUNODEFICIENCY,
    codes.HEART_FAILURE, codes.EPILEPSY, codes.CNS_OTHER, codes.HERPES_SEVERE, codes.HERPES,
    codes.MALIGNANCY, codes.BREAST_CERVIX, codes.PREGNANCY, codes.LACTATION,
    codes.OTHER_THROMBOCYTOPENIA, codes.EFFUSION, codes.SPLENECTOMY_SET, codes.INCIDENTAL_SET,
    codes.CHEMOTHERAPY, codes.ALLERGEN,
}  # fmt: skip
DRUG_SETS = {
    codes.CORTICOSTEROID, codes.IVIG, codes.THROMBOPOIETIC, codes.RITUXIMAB, codes.MONOCLONAL,
    codes.CHEMOTHERAPY, codes.IMMUNOSUPPRESSANT, codes.ANTIBACTERIAL, codes.ALLERGEN,
}  # fmt: skip
ITP_NAMES = ("原发免疫性血小板减少症", "免疫性血小板减少症", "特发性血小板减少性紫癜", "ITP")


# --- populations (generated once per module) -------------------------------------------------


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundles")
    generate(200, 3, out, "bundles", itp_share=0.1)
    return out


@pytest.fixture(scope="module")
def ndjson(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ndjson")
    generate(200, 3, out, "ndjson", itp_share=0.1)
    return out


@pytest.fixture(scope="module")
def thousand(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("thousand")
    generate(1000, 20260601, out, "ndjson")
    return [json.loads(line) for line in (out / "expected.ndjson").open(encoding="utf-8")]


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _resources(folder: Path) -> Iterator[dict[str, Any]]:
    for path in sorted((folder / "fhir").glob("*.ndjson")):
        with path.open(encoding="utf-8") as stream:
            yield from (json.loads(line) for line in stream)


def test_public_names() -> None:
    assert fhir_match.synth.__all__ == [
        "DEFAULT_AS_OF",
        "DEFAULT_ITP_SHARE",
        "Format",
        "GenerationSummary",
        "generate",
    ]


@pytest.mark.parametrize("fmt", ["bundles", "ndjson"])
def test_same_seed_same_bytes(fmt: str, bundles: Path, ndjson: Path, tmp_path: Path) -> None:
    generate(200, 3, tmp_path, fmt, itp_share=0.1)  # type: ignore[arg-type]
    first = _files(bundles if fmt == "bundles" else ndjson)
    assert _files(tmp_path) == first
    assert {"manifest.json", "expected.ndjson"} <= set(first)


def test_another_seed_another_population(ndjson: Path, tmp_path: Path) -> None:
    generate(20, 4, tmp_path, "ndjson", itp_share=0.1)
    other = (tmp_path / "expected.ndjson").read_text(encoding="utf-8").splitlines()
    mine = (ndjson / "expected.ndjson").read_text(encoding="utf-8").splitlines()[:20]
    assert not set(other) & set(mine)


def test_manifest_records_the_run(ndjson: Path) -> None:
    manifest = json.loads((ndjson / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["seed"] == 3
    assert manifest["patients"] == 200
    assert manifest["as_of"] == "2026-06-01"
    assert manifest["format"] == "ndjson"
    assert manifest["version"]
    assert sum(manifest["outcomes"].values()) == 200


def test_refuses_a_folder_that_holds_a_population(ndjson: Path) -> None:
    with pytest.raises(ConfigError):
        generate(1, 3, ndjson, "ndjson")


def test_every_resource_validates(ndjson: Path) -> None:
    kinds: Counter[str] = Counter()
    for resource in _resources(ndjson):
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
        kinds[resource["resourceType"]] += 1
    for kind in ("Patient", "Condition", "Observation", "MedicationRequest", "MedicationStatement",
                 "MedicationAdministration", "Medication", "Procedure", "AllergyIntolerance",
                 "ResearchSubject", "ResearchStudy"):  # fmt: skip
        assert kinds[kind], kind


def _references(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "reference" and isinstance(item, str):
                yield item
            else:
                yield from _references(item)
    elif isinstance(value, list):
        for item in value:
            yield from _references(item)


def test_bundles_are_transactions_whose_references_resolve(bundles: Path) -> None:
    shared = json.loads((bundles / "fhir" / SHARED_BUNDLE).read_text(encoding="utf-8"))
    shared_paths = {e["request"]["url"] for e in shared["entry"]}
    patients = sorted(p for p in (bundles / "fhir").rglob("*.json") if p.name != SHARED_BUNDLE)
    assert len(patients) == 200
    assert {p.parent.name for p in patients} == {"0000"}
    get_fhir_model_class("Bundle").model_validate(shared)
    for n, path in enumerate(patients):
        bundle = json.loads(path.read_text(encoding="utf-8"))
        if n < 3:  # the resources themselves are validated from the NDJSON population
            get_fhir_model_class("Bundle").model_validate(bundle)
        assert bundle["type"] == "transaction"
        entries = bundle["entry"]
        own = {e["request"]["url"] for e in entries}
        for entry in entries:
            resource = entry["resource"]
            assert entry["request"] == {
                "method": "PUT",
                "url": f"{resource['resourceType']}/{resource['id']}",
            }
            for reference in _references(resource):
                assert reference in own or reference in shared_paths, (path.name, reference)
        assert entries[0]["resource"]["resourceType"] == "Patient"
        assert path.stem == entries[0]["resource"]["id"]


def test_ndjson_references_resolve(ndjson: Path) -> None:
    paths: set[str] = set()
    references: set[str] = set()
    for resource in _resources(ndjson):
        paths.add(f"{resource['resourceType']}/{resource['id']}")
        references.update(_references(resource))
    assert references <= paths


def _outcome(criteria: dict[str, str]) -> str:
    if any(
        (cid.startswith("inc-") and r == "not-met") or (cid.startswith("exc-") and r == "met")
        for cid, r in criteria.items()
    ):
        return "ineligible"
    if any(r == "unknown" and cid not in DEFERRED for cid, r in criteria.items()):
        return "potential-candidate"
    return "candidate"


def test_expected_lists_every_criterion_and_follows_the_outcome_rule(
    thousand: list[dict[str, Any]],
) -> None:
    assert len(thousand) == 1000
    assert len(CRITERIA) == 23
    for line in thousand:
        assert list(line["criteria"]) == list(CRITERIA)
        assert set(line["criteria"].values()) <= RESULTS
        for always_unknown in ("inc-5", "inc-12", "exc-12"):
            assert line["criteria"][always_unknown] == "unknown"
        assert line["outcome"] == _outcome(line["criteria"])
        assert line["patient"].startswith("Patient/syn20260601-")


def test_a_thousand_patients_have_the_itp_share_and_every_outcome(
    thousand: list[dict[str, Any]],
) -> None:
    cohorts = Counter(line["cohort"] for line in thousand)
    itp = sum(n for cohort, n in cohorts.items() if cohort.startswith("itp-"))
    assert 20 <= itp <= 65
    outcomes = Counter(line["outcome"] for line in thousand)
    assert outcomes["candidate"] >= 2
    assert outcomes["potential-candidate"] >= 2
    assert outcomes["ineligible"] > 900
    assert all(line["outcome"] == "ineligible" for line in thousand if line["cohort"] == "general")


# --- edges mean what their names say ---------------------------------------------------------

DECIDES = {
    "inc1-18th-birthday-on-D": {"inc-1": "met"},
    "inc1-day-before-18th-birthday": {"inc-1": "not-met"},
    "inc1-65-day-before-66th-birthday": {"inc-1": "met"},
    "inc1-66th-birthday-on-D": {"inc-1": "not-met"},
    "inc1-birth-year-only-decides": {"inc-1": "met"},
    "inc1-birth-year-only-undecided": {"inc-1": "unknown"},
    "inc1-birth-month-decides": {"inc-1": "met"},
    "inc1-no-birth-date": {"inc-1": "unknown"},
    "inc3-previous-exactly-180d": {"inc-3": "met"},
    "inc3-previous-181d": {"inc-3": "unknown"},
    "inc3-latest-exactly-100": {"inc-3": "not-met"},
    "inc3-both-99": {"inc-3": "met"},
    "inc3-same-day-rise": {"inc-3": "not-met"},
    "inc3-same-day-drop": {"inc-3": "met"},
    "inc3-latest-cancelled": {"inc-3": "met"},
    "inc3-latest-entered-in-error": {"inc-3": "met"},
    "inc3-latest-without-unit": {"inc-3": "met"},
    "inc3-count-after-D": {"inc-3": "met"},
    "inc3-latest-low-previous-high": {"inc-3": "unknown"},
    "inc11-rituximab-last-dose-27d": {"inc-11": "not-met"},
    "inc11-rituximab-ongoing-order": {"inc-11": "not-met"},
    "inc11-vincristine-recent": {"inc-11": "not-met"},
    "inc7-splenectomy-by-name": {"inc-7": "met", "inc-4": "met"},
    "inc7-asplenia-condition-only": {"inc-7": "met", "inc-4": "met"},
    "exc2-iv-antibiotic-7d": {"exc-2": "met"},
    "exc2-iv-antibiotic-on-D": {"exc-2": "met"},
    "exc8-zoster-84d": {"exc-8": "met"},
    "exc11-other-study-ended-90d": {"exc-11": "met"},
    "inc9-ecog-90d": {"inc-9": "met"},
    "inc9-ecog-91d": {"inc-9": "unknown"},
    "inc9-ecog-3-latest": {"inc-9": "not-met"},
    "inc9-ecog-cancelled": {"inc-9": "met"},
    "inc10-lvef-49": {"inc-10": "not-met"},
    "exc4-nyha-iii-then-ii": {"exc-4": "not-met"},
    "exc4-heart-failure-no-class": {"exc-4": "unknown"},
    "inc10-lvef-181d": {"inc-10": "unknown"},
    "exc6-severe-herpes-long-ago": {"exc-6": "met"},
}
"""Edges whose criterion result no other record can change."""

CHANGES_NOTHING = {
    "inc11-rituximab-last-dose-28d": ("inc-11",),
    "inc7-rituximab-order-cancelled": ("inc-7", "inc-11", "inc-2"),
    "inc7-rituximab-order-draft": ("inc-7", "inc-11"),
    "inc7-rituximab-not-taken": ("inc-7", "inc-11"),
    "inc7-rituximab-not-done": ("inc-7", "inc-11"),
    "inc7-rituximab-after-D": ("inc-7", "inc-11"),
    "inc7-splenectomy-not-done": ("inc-7", "inc-4"),
    "inc7-splenectomy-entered-in-error": ("inc-7", "inc-4"),
    "inc7-incidental-splenectomy": ("inc-7", "inc-4"),
    "inc2-itp-entered-in-error": ("inc-2",),
    "exc2-iv-antibiotic-8d": ("exc-2",),
    "exc2-oral-antibiotic-2d": ("exc-2",),
    "exc2-iv-antibiotic-order-cancelled": ("exc-2",),
    "exc8-zoster-85d": ("exc-8",),
    "exc8-zoster-after-D": ("exc-8",),
    "exc8-zoster-refuted": ("exc-8",),
    "exc8-onset-85d-recorded-80d": ("exc-8",),
    "exc9-hcg-positive-31d": ("exc-9",),
    "exc9-hcg-4.9": ("exc-9",),
    "exc9-pregnancy-ended": ("exc-9",),
    "exc9-pregnancy-entered-in-error": ("exc-9",),
    "exc11-other-study-ended-91d": ("exc-11",),
    "exc11-kn5501-itself": ("exc-11",),
    "exc11-off-study": ("exc-11",),
    "exc7-skin-cancer-active": ("exc-7",),
    "exc7-breast-or-cervix-resolved": ("exc-7",),
    "exc1-allergy-refuted": ("exc-1",),
    "exc1-allergy-inactive": ("exc-1",),
    "exc5-epilepsy-resolved": ("exc-5",),
    "exc3-hiv-refuted": ("exc-3", "inc-6"),
    "exc10-hit-resolved": ("exc-10", "inc-6"),
}
"""Edges made of records that must not count (or count on the safe side of a window)."""

ONE_OF = {
    "exc7-other-cancer-resolved": ("exc-7", {"unknown", "met"}),
    "exc5-stroke": ("exc-5", {"unknown", "met"}),
    "inc10-lvef-exactly-50": ("inc-10", {"met", "unknown"}),
    "exc8-onset-month-across-window": ("exc-8", {"unknown", "met"}),
    "inc4-splenomegaly": ("inc-4", {"not-met", "met"}),
    "exc9-hcg-positive-30d": ("exc-9", {"met"}),
    "exc9-hcg-exactly-5": ("exc-9", {"met"}),
}
"""Edges that add a finding other records can only outweigh (a splenectomy, an active
malignancy, ...); a positive hCG excludes anyone but a man."""

ALL_EDGES = {**TAIL_EDGES, **ITP_EDGES, **ANY_EDGES}


def test_every_edge_has_a_check() -> None:
    checked = set(DECIDES) | set(CHANGES_NOTHING) | set(ONE_OF)
    assert checked == set(ALL_EDGES) | set(AGE_EDGES)


@pytest.mark.parametrize("name", sorted(ALL_EDGES))
def test_edge_gives_its_answer(name: str) -> None:
    for index in range(3):
        chart, rng, ctx = start_chart(99, index, DEFAULT_AS_OF, itp_share=1.0)
        before = expected_results(chart.freeze(), DEFAULT_AS_OF)
        ALL_EDGES[name](chart, rng, ctx)
        after = expected_results(chart.freeze(), DEFAULT_AS_OF)
        for criterion, result in DECIDES.get(name, {}).items():
            assert after[criterion] == result, (index, criterion)
        for criterion in CHANGES_NOTHING.get(name, ()):
            assert after[criterion] == before[criterion], (index, criterion)
        if name in ONE_OF:
            criterion, allowed = ONE_OF[name]
            if name.startswith("exc9") and chart.person.gender == "male":
                allowed = {"not-met"}
            assert after[criterion] in allowed, (index, criterion)


@pytest.mark.parametrize("edge", AGE_EDGES)
def test_age_edge_gives_its_answer(edge: str) -> None:
    for seed in range(3):
        person = make_person(random.Random(seed), 1, 1, date(2026, 6, 1), True, edge)
        chart, _, _ = start_chart(1, seed, DEFAULT_AS_OF, itp_share=0.0)
        chart.person = person
        result = expected_results(chart.freeze(), DEFAULT_AS_OF)["inc-1"]
        assert result == DECIDES[edge]["inc-1"]


# --- the catalog holds only the codes of mappings/, with the sets they are in ---------------


@pytest.fixture(scope="module")
def terminology() -> Terminology:
    return load_terminology(MAPPINGS_DIR)


def _sets(
    terminology: Terminology, codings: tuple[codes.Coding, ...], text: str | None, names: bool
) -> set[str]:
    """The value sets a record with these codings is in; with ``names``, also by the drug names
    in its text and in the codings' displays, as the normaliser reads a drug."""
    urls: set[str] = set()
    for coding in codings:
        found = terminology.value_sets_of(coding.system, coding.code)
        assert found or (coding.system, coding.code) in OUTSIDE_MAPPINGS, coding
        urls |= found
    for words in (text, *(c.display for c in codings)) if names else ():
        for name in terminology.drug_names_in(words or ""):
            urls |= terminology.value_sets_of(DRUG_NAME, name)
    return {url.removeprefix(VS) for url in urls}


def test_condition_codes_are_in_the_sets_they_claim(terminology: Terminology) -> None:
    concepts = [*codes.CONDITIONS.values(), codes.SPLENECTOMY, codes.INCIDENTAL_SPLENECTOMY,
                codes.CHEMO_PROCEDURE]  # fmt: skip
    for concept in concepts:
        for variant in concept.variants:
            if variant.codings:
                found = _sets(terminology, variant.codings, None, names=False) & CONDITION_SETS
                assert found == concept.sets, (concept.key, variant)
            elif concept is codes.SPLENECTOMY:
                assert "脾切除" in (variant.text or "")
            elif concept.key == "itp-text":
                assert variant.text in ITP_NAMES
            else:
                assert not concept.sets, concept.key


def test_allergy_substances_are_trial_drugs_when_they_claim(terminology: Terminology) -> None:
    for substance in codes.ALLERGENS.values():
        for variant in substance.variants:
            found = _sets(terminology, variant.codings, variant.text, names=True) & {codes.ALLERGEN}
            assert found == substance.sets, (substance.key, variant)


def test_ordinary_condition_texts_name_no_itp() -> None:
    for concept in codes.CONDITIONS.values():
        for variant in concept.variants:
            if concept.key != "itp-text" and not variant.codings:
                folded = (variant.text or "").casefold()
                assert not any(name.casefold() in folded for name in ITP_NAMES), variant


def test_drug_styles_name_their_drug(terminology: Terminology) -> None:
    for drug in codes.DRUGS.values():
        for style in drug.styles:
            found = _sets(terminology, style.codings, style.text, names=True) & DRUG_SETS
            assert found == set(drug.classes), (drug.key, style.key)


def test_routes_say_what_they_are() -> None:
    for route in (*codes.IV_ROUTES, *codes.ORAL_ROUTES, *codes.SC_ROUTES):
        text = route.text.casefold()
        named_iv = "iv" in text.split() or "intravenous" in text or "静脉" in text
        coded_iv = route.coding is not None and route.coding.code in (
            "47625008", "418114005", "419993007",
        )  # fmt: skip
        assert (route.kind == "iv") == (named_iv or coded_iv), route


def test_platelet_units_convert_as_intended() -> None:
    units = load_unit_map(MAPPINGS_DIR / "units" / "platelet-count.json")
    for variant in codes.PLATELET_UNITS:
        value = normalise_quantity(units, 45 * variant.scale, variant.unit, variant.ucum,
                                   codes.UCUM if variant.ucum else None)  # fmt: skip
        if variant.unit is None:
            assert isinstance(value, UnitProblem)
        else:
            assert value == Decimal(45), variant


def test_shared_resources_cover_every_referenced_medication() -> None:
    ids = {r["id"] for r in shared_resources() if r["resourceType"] == "Medication"}
    for drug in codes.DRUGS.values():
        for style in drug.styles:
            if style.place != "inline":
                assert drug.medication_id(style) in ids
