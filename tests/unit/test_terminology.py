"""Tests for the value sets and drug names in mappings/ and the lookups over them."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fhir.resources.R4B import get_fhir_model_class

from fhir_match import terminology
from fhir_match.errors import ConfigError
from fhir_match.terminology import (
    ATC,
    DRUG_NAME,
    ICD10,
    ICD10CM,
    ICD10PCS,
    Terminology,
    build_terminology,
    load_terminology,
)

REPO = Path(__file__).resolve().parents[2]
MAPPINGS = REPO / "mappings"
TRIAL = REPO / "studies" / "kn5501"
"""The contract's criteria and its verified codes, carried beside the study's configuration."""
VALUE_SET_FILES = sorted((MAPPINGS / "valuesets").glob("*.json"))
BASE = "https://fhir-match.org/fhir/ValueSet/"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
CPT = "http://www.ama-assn.org/go/cpt"


def vs(id_: str) -> str:
    return BASE + id_


@pytest.fixture(scope="module")
def terms() -> Terminology:
    return load_terminology(MAPPINGS)


def test_public_names() -> None:
    assert sorted(terminology.__all__) == sorted(
        [
            "ATC",
            "DRUG_NAME",
            "HIERARCHICAL_SYSTEMS",
            "ICD10",
            "ICD10CM",
            "ICD10PCS",
            "SNOMED",
            "Coding",
            "Terminology",
            "build_terminology",
            "canonical_system",
            "load_terminology",
            "system_spellings",
        ]
    )


@pytest.mark.parametrize("system", [terminology.ICD10CM, terminology.SNOMED, terminology.ATC])
def test_a_systems_spellings_for_searches_are_read_back_as_it(system: str) -> None:
    spellings = terminology.system_spellings(system)
    assert spellings[0] == system
    assert any(s.startswith("urn:oid:2.16.840.1.113883.6.") for s in spellings)
    assert {terminology.canonical_system(s) for s in spellings} == {system}


@pytest.mark.parametrize(
    ("written", "canonical"),
    [
        ("urn:oid:2.16.840.1.113883.6.90", "http://hl7.org/fhir/sid/icd-10-cm"),
        ("urn:oid:2.16.840.1.113883.6.3", "http://hl7.org/fhir/sid/icd-10"),
        ("urn:oid:2.16.840.1.113883.6.96", SNOMED),
        ("urn:oid:2.16.840.1.113883.6.1", LOINC),
        ("urn:oid:2.16.840.1.113883.6.88", "http://www.nlm.nih.gov/research/umls/rxnorm"),
        ("urn:oid:2.16.840.1.113883.6.12", CPT),
        ("urn:oid:2.16.840.1.113883.6.4", "http://www.cms.gov/Medicare/Coding/ICD10"),
        ("urn:oid:2.16.840.1.113883.6.73", "http://www.whocc.no/atc"),
        ("https://loinc.org/", LOINC),
        ("HTTP://SNOMED.INFO/SCT", SNOMED),
        ("http://snomed.info/sct/731000124108", SNOMED),
        ("http://terminology.hl7.org/CodeSystem/icd10CM", "http://hl7.org/fhir/sid/icd-10-cm"),
        # left as written: not one of the mappings' systems, or not an alias of one
        ("urn:oid:2.16.840.1.113883.6.999", "urn:oid:2.16.840.1.113883.6.999"),
        ("http://snomed.info/sct-local", "http://snomed.info/sct-local"),
        ("http://hospital.example/codes", "http://hospital.example/codes"),
    ],
)
def test_canonical_system(written: str, canonical: str) -> None:
    assert terminology.canonical_system(written) == canonical


# ------------------------------------------------------------------------ the files themselves


@pytest.mark.parametrize("path", VALUE_SET_FILES, ids=lambda path: path.stem)
def test_value_set_is_valid_r4_and_named_after_its_file(path: Path) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    get_fhir_model_class("ValueSet").model_validate(data)
    assert data["id"] == path.stem
    assert data["url"] == vs(path.stem)
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", path.stem)
    assert data["status"] == "active"
    assert data["name"]
    assert data["title"]
    assert data["description"]


def test_drug_name_code_system_is_valid_r4() -> None:
    data = json.loads((MAPPINGS / "codesystems" / "drug-name.json").read_text(encoding="utf-8"))
    get_fhir_model_class("CodeSystem").model_validate(data)
    assert data["url"] == DRUG_NAME
    assert data["content"] == "complete"
    assert data["count"] == len(data["concept"])
    for concept in data["concept"]:
        assert concept["code"] == concept["code"].lower()
        assert " " not in concept["code"]


def test_every_drug_name_concept_is_in_some_value_set(terms: Terminology) -> None:
    data = json.loads((MAPPINGS / "codesystems" / "drug-name.json").read_text(encoding="utf-8"))
    unused = [c["code"] for c in data["concept"] if not terms.value_sets_of(DRUG_NAME, c["code"])]
    assert unused == []


def _mapping_codes() -> set[str]:
    """Every code written in a value set (concepts, filter values, exclusions), drug names aside."""
    codes: set[str] = set()
    for path in VALUE_SET_FILES:
        compose = json.loads(path.read_text(encoding="utf-8"))["compose"]
        for element in compose["include"] + compose.get("exclude", []):
            if element.get("system") == DRUG_NAME:
                continue
            codes.update(concept["code"] for concept in element.get("concept", []))
            codes.update(filter_["value"] for filter_ in element.get("filter", []))
    return codes


_CODE_TOKEN = re.compile(r"[A-Za-z]{0,2}[0-9][0-9A-Za-z.\-]*")


def _tokens(text: object) -> set[str]:
    return {token.rstrip(".-") for token in _CODE_TOKEN.findall(str(text))}


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def test_no_code_tagged_memory_is_used_unless_criteria_md_names_it() -> None:
    tree = yaml.safe_load((TRIAL / "terminology.yaml").read_text(encoding="utf-8"))
    memory: set[str] = set()
    in_notes: set[str] = set()
    verified: set[str] = set()
    for node in _walk(tree):
        if node.get("v") == "MEMORY":
            for key in ("code", "codes", "candidate"):
                memory |= _tokens(node.get(key, ""))
            in_notes |= _tokens(node.get("note", ""))
        elif "code" in node:
            verified |= _tokens(node["code"])
    memory |= in_notes - verified  # a note may cite a code verified elsewhere
    criteria = _tokens((TRIAL / "criteria.md").read_text(encoding="utf-8"))
    used = _mapping_codes() & memory
    assert used - criteria == set()
    # criteria.md names the ATC monoclonal-antibody classes terminology.yaml leaves unverified
    assert used == {"L01FA", "L01FX", "L04AC", "L04AG"}


# ------------------------------------------------------------------------ membership


@pytest.mark.parametrize(
    ("system", "code", "inside", "outside"),
    [
        (ICD10, "D69.300x001", "itp", "evans-syndrome"),
        (ICD10CM, "D69.3", "itp", "thrombocytopenia-other"),
        (ICD10CM, "d693", "itp", "secondary-cause"),
        (ICD10CM, "D69.41", "evans-syndrome", "itp"),
        (ICD10CM, "D69.6", "thrombocytopenia-unspecified", "thrombocytopenia-other"),
        (ICD10CM, "C44.9", "malignancy-skin-non-melanoma", "malignancy"),
        (ICD10CM, "C50.911", "malignancy", "secondary-cause"),
        (ICD10CM, "C50.911", "malignancy-breast-cervix", "hematologic-malignancy"),
        (ICD10, "C91.1", "malignancy", "malignancy-breast-cervix"),
        (ICD10, "C91.1", "secondary-cause", "malignancy-skin-non-melanoma"),
        (SNOMED, "109989006", "malignancy", "lymphoid-neoplasm-uncertain"),
        (ICD10CM, "D47.2", "secondary-cause", "malignancy"),
        (ICD10CM, "D46.9", "mds", "malignancy"),
        (ICD10CM, "M31.19", "thrombocytopenia-other", "itp"),
        (ICD10CM, "M31.19", "secondary-cause", "autoimmune-systemic"),
        (SNOMED, "78129009", "thrombocytopenia-other", "itp"),
        (SNOMED, "78129009", "secondary-cause", "immunodeficiency"),
        (ICD10, "B20", "immunodeficiency", "herpes-infection"),
        (ICD10, "B20", "secondary-cause", "thrombocytopenia-other"),
        (SNOMED, "86406008", "immunodeficiency", "pregnancy"),
        (SNOMED, "86406008", "secondary-cause", "malignancy"),
        (ICD10CM, "M32.10", "secondary-cause", "thrombocytopenia-other"),
        (ICD10CM, "Z33.1", "pregnancy", "secondary-cause"),
        (SNOMED, "77386006", "pregnancy", "secondary-cause"),
        (ICD10CM, "O99.111", "pregnancy", "thrombocytopenia-other"),
        (ICD10CM, "O99.111", "secondary-cause", "immunodeficiency"),
        (ICD10CM, "D73.1", "splenomegaly-hypersplenism", "splenectomy"),
        (ICD10CM, "D73.1", "secondary-cause", "thrombocytopenia-other"),
        (SNOMED, "60194009", "splenectomy-incidental", "splenectomy"),
        (SNOMED, "33479006", "splenectomy-incidental", "splenectomy"),
        (CPT, "38115", "splenectomy-incidental", "splenectomy"),
        (ICD10PCS, "07BP0ZX", "nothing", "splenectomy"),
        (ICD10PCS, "07BP3ZZ", "splenectomy", "splenectomy-incidental"),
        (ICD10PCS, "07TP4ZG", "splenectomy", "splenectomy-incidental"),
        (ICD10CM, "Z90.81", "acquired-absence-of-spleen", "splenectomy"),
        (ICD10, "G40.909", "epilepsy", "cns-disease-other"),
        (ICD10, "I63.9", "cns-disease-other", "epilepsy"),
        (ICD10CM, "B00.4", "herpes-severe", "cns-disease-other"),
        (ICD10CM, "B10.01", "herpes-infection", "cns-disease-other"),
        (ICD10CM, "B02.9", "herpes-infection", "herpes-severe"),
        (ATC, "L01FA01", "rituximab", "chemotherapy"),
        (ATC, "L01XC02", "monoclonal-antibody", "chemotherapy"),
        (ATC, "L01AA01", "chemotherapy", "monoclonal-antibody"),
        (ATC, "L04AC07", "monoclonal-antibody", "immunosuppressant-oral"),
        (ATC, "L04AD01", "immunosuppressant-oral", "monoclonal-antibody"),
        (ATC, "H02AB07", "corticosteroid-systemic", "ivig"),
        (ATC, "H02AB07", "itp-first-line", "thrombopoietic-agent"),
        (ATC, "J06BA02", "itp-first-line", "corticosteroid-systemic"),
        (ATC, "B02BX05", "thrombopoietic-agent", "itp-first-line"),
        (ATC, "J01DD04", "antibacterial", "chemotherapy"),
        (LOINC, "777-3", "platelet-count", "lvef"),
        (DRUG_NAME, "hetrombopag", "thrombopoietic-agent", "rituximab"),
    ],
)
def test_membership(terms: Terminology, system: str, code: str, inside: str, outside: str) -> None:
    found = terms.value_sets_of(system, code)
    if inside != "nothing":
        assert vs(inside) in found
    assert vs(outside) not in found


def test_unlisted_codes_belong_nowhere(terms: Terminology) -> None:
    assert terms.value_sets_of(ICD10CM, "I10") == frozenset()
    assert terms.value_sets_of(SNOMED, "D69.3") == frozenset()  # the system matters
    assert terms.value_sets_of(ATC, "B02BX09") == frozenset()  # fostamatinib is not a TPO-RA


def test_every_value_set_is_nonempty_and_its_expansion_is_its_own(terms: Terminology) -> None:
    assert len(terms.expansions) == len(VALUE_SET_FILES)
    for url, codings in terms.expansions.items():
        assert codings, url
        for system, code in codings:
            assert url in terms.value_sets_of(system, code)


def test_expansion_keeps_codes_as_written_and_drops_exclusions(terms: Terminology) -> None:
    malignancy = terms.expansions[vs("malignancy")]
    assert (ICD10CM, "C50") in malignancy
    assert (ICD10, "C91") in malignancy  # through hematologic-malignancy
    assert (ICD10CM, "C44") not in malignancy
    assert (DRUG_NAME, "rituximab") in terms.expansions[vs("rituximab")]
    secondary = set(terms.expansions[vs("secondary-cause")])
    assert set(terms.expansions[vs("thrombocytopenia-other")]) <= secondary
    assert set(terms.expansions[vs("immunodeficiency")]) <= secondary


def test_hierarchy_additions_are_the_data_codes_missing_from_the_expansion(
    terms: Terminology,
) -> None:
    seen = [
        (ICD10, "D69.300x001"),
        (ICD10CM, "D69.3"),  # already in the expansion as written
        (ATC, "J01DD04"),
        (ICD10PCS, "07BP0ZX"),  # excluded
        (SNOMED, "404684003"),  # in no value set
    ]
    additions = terms.hierarchy_additions(seen)
    assert additions[vs("itp")] == [(ICD10, "D69.300x001")]
    assert additions[vs("antibacterial")] == [(ATC, "J01DD04")]
    assert vs("splenectomy") not in additions
    assert all((ICD10CM, "D69.3") not in codings for codings in additions.values())


# ------------------------------------------------------------------------ drug names


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Rituximab 500 mg/50 mL", {"rituximab", "monoclonal-antibody"}),
        ("利妥昔单抗注射液", {"rituximab", "monoclonal-antibody"}),
        ("海曲泊帕乙醇胺片", {"hetrombopag"}),
        ("tocilizumab", {"tocilizumab", "monoclonal-antibody"}),
        ("Infliximab 100 mg", {"monoclonal-antibody"}),
        ("注射用英夫利西单抗", {"monoclonal-antibody"}),
        ("PREDNISONE 5 MG TAB", {"prednisone"}),
        ("methylprednisolone sodium succinate", {"methylprednisolone"}),
        ("醋酸泼尼松龙片", {"prednisolone"}),
        ("重组人血小板生成素注射液 (特比澳)", {"rhtpo"}),
        ("rhTPO 15000 U", {"rhtpo"}),
        ("Piperacillin-Tazobactam 4.5 g IV", {"piperacillin-tazobactam"}),
        ("注射用哌拉西林钠他唑巴坦钠", {"piperacillin", "tazobactam"}),
        ("左氧氟沙星氯化钠注射液", {"levofloxacin"}),
        ("注射用去甲万古霉素", {"norvancomycin"}),
        ("MabThera", {"rituximab"}),
        ("sodium chloride 0.9%", set()),
    ],
)
def test_drug_names_in(terms: Terminology, text: str, expected: set[str]) -> None:
    assert terms.drug_names_in(text) == expected


def test_english_names_match_whole_words_only(terms: Terminology) -> None:
    assert "prednisone" not in terms.drug_names_in("methylprednisolone")
    assert "prednisone" not in terms.drug_names_in("xprednisone")
    assert "prednisone" in terms.drug_names_in("(prednisone)")


def test_drug_names_lead_to_drug_value_sets(terms: Terminology) -> None:
    urls = {
        url
        for code in terms.drug_names_in("海曲泊帕")
        for url in terms.value_sets_of(DRUG_NAME, code)
    }
    assert urls == {vs("thrombopoietic-agent")}


# ------------------------------------------------------------------------ refusing to misread


def _code_system(*concepts: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "CodeSystem", "url": DRUG_NAME, "concept": list(concepts)}


def _value_set(
    id_: str, *include: dict[str, Any], exclude: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    compose: dict[str, Any] = {"include": list(include)}
    if exclude:
        compose["exclude"] = exclude
    return {"resourceType": "ValueSet", "url": vs(id_), "compose": compose}


def _isa(system: str, code: str) -> dict[str, Any]:
    return {"system": system, "filter": [{"property": "concept", "op": "is-a", "value": code}]}


def test_nested_exclusions_apply_in_order() -> None:
    built = build_terminology(
        [
            _value_set("outer", {"valueSet": [vs("inner")]}, _isa(ICD10, "C44")),
            _value_set("inner", _isa(ICD10, "C"), exclude=[_isa(ICD10, "C44")]),
        ],
        _code_system(),
    )
    assert built.value_sets_of(ICD10, "C44.9") == {vs("outer")}
    assert built.value_sets_of(ICD10, "C50") == {vs("outer"), vs("inner")}


@pytest.mark.parametrize(
    "value_sets",
    [
        [_value_set("a", {"valueSet": [vs("b"), vs("c")]})],
        [_value_set("a", {"valueSet": [vs("missing")]})],
        [_value_set("a", {"valueSet": [vs("b")]}), _value_set("b", {"valueSet": [vs("a")]})],
        [_value_set("a", _isa(SNOMED, "123"))],
        [
            _value_set(
                "a",
                {
                    "system": ICD10,
                    "filter": [{"property": "concept", "op": "regex", "value": "D.*"}],
                },
            )
        ],
        [_value_set("a", {"system": ICD10})],
        [_value_set("a", {"system": DRUG_NAME, "concept": [{"code": "unknown-drug"}]})],
        [_value_set("a", {"system": ICD10, "concept": [{"display": "no code"}]})],
        [_value_set("a", _isa(ICD10, "D69")), _value_set("a", _isa(ICD10, "D69"))],
    ],
    ids=[
        "intersection",
        "unknown-value-set",
        "cycle",
        "is-a-on-flat-system",
        "other-filter",
        "whole-system",
        "unknown-drug",
        "concept-without-code",
        "duplicate-url",
    ],
)
def test_build_refuses(value_sets: list[dict[str, Any]]) -> None:
    with pytest.raises(ConfigError):
        build_terminology(value_sets, _code_system())


def test_load_refuses_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_terminology(tmp_path)
