"""The review app's pure parts: scopes, settings, list rows, evidence and decisions."""

from __future__ import annotations

from datetime import date
from zoneinfo import ZoneInfo

import httpx
import pytest

from fhir_match.config import FhirSettings
from fhir_match.errors import ConfigError
from fhir_match.evaluate.engine import translate_cql
from fhir_match.evaluate.study import load_study
from fhir_match.fhir import FhirClient
from fhir_match.records import Json
from fhir_match.review.config import ReviewSettings, load_review_settings
from fhir_match.review.decisions import (
    DECISIONS,
    EXT_DECISION,
    Coordinator,
    DecisionError,
    decision_history,
    decision_transaction,
    status_word,
)
from fhir_match.review.evidence import describe, grouped, missing
from fhir_match.review.grants import Grant, requested_scopes
from fhir_match.review.listing import (
    Snapshot,
    age_text,
    candidate_rows,
    dropped_since,
    filter_rows,
    patient_ages,
    patient_name,
    snapshot_of,
    sort_rows,
)
from fhir_match.review.reads import cited_resources, patients
from fhir_match.review.times import shown_time
from fhir_match.screen import load_normaliser
from fhir_match.writeback import EXT_CRITERION, EXT_MATCH, EXT_OUTCOME, RUN_SYSTEM

# -- scopes -------------------------------------------------------------------------------


def test_v2_and_v1_scopes_grant_what_they_say() -> None:
    grant = Grant.from_scope(
        "openid fhirUser user/ResearchSubject.rs user/ResearchSubject.u user/Provenance.c "
        "user/Observation.read patient/Condition.rs"
    )
    assert grant.can_read("ResearchSubject")
    assert grant.can_read("Observation")
    assert not grant.can_read("Condition")  # patient/ scopes are for the launch patient
    assert not grant.can_read("Provenance")  # create only
    assert grant.can_decide()


def test_wildcards_queries_and_missing_write() -> None:
    assert Grant.from_scope("user/*.rs").can_read("Procedure")
    assert not Grant.from_scope("user/*.rs").can_decide()
    assert not Grant.from_scope("user/Observation.rs?category=laboratory").can_read("Observation")
    assert Grant.from_scope("user/*.write user/*.read").can_decide()
    assert Grant(unrestricted=True).can_decide()


def test_requested_scopes_are_no_wider_than_needed() -> None:
    scopes = requested_scopes(frozenset({"Observation", "Condition"}), ehr_launch=True).split()
    assert "launch" in scopes
    assert "user/Observation.rs" in scopes
    assert "user/ResearchSubject.u" in scopes
    assert not [s for s in scopes if "*" in s or s.endswith((".cruds", ".write"))]
    assert "launch" not in requested_scopes(frozenset(), ehr_launch=False).split()


# -- settings -----------------------------------------------------------------------------


def test_without_sign_in_only_loopback() -> None:
    with pytest.raises(ConfigError, match="loopback"):
        ReviewSettings(host="0.0.0.0")
    assert ReviewSettings(host="0.0.0.0", client_id="app").smart
    assert ReviewSettings(host="::1").base == "http://[::1]:8765"


def test_settings_from_environment() -> None:
    settings = load_review_settings(
        {
            "FHIR_BASE_URL": "https://ehr.example.org/fhir/",
            "FHIR_MATCH_REVIEW_CLIENT_ID": "fhir-match-review",
            "FHIR_MATCH_REVIEW_URL": "https://review.example.org/",
            "FHIR_MATCH_REVIEW_AUTH_SERVER": "https://sso.example.org/realms/h/",
        },
        host="0.0.0.0",
    )
    assert settings.fhir_base_url == "https://ehr.example.org/fhir"
    assert settings.base == "https://review.example.org"
    assert settings.secure_cookies
    assert settings.auth_server == "https://sso.example.org/realms/h"
    with pytest.raises(ConfigError, match="FHIR_MATCH_REVIEW_PORT"):
        load_review_settings({"FHIR_MATCH_REVIEW_PORT": "http"})


# -- the list -----------------------------------------------------------------------------


def _subject(sid: str, patient: str, outcome: str, status: str, run: str, unknown: int) -> Json:
    criteria = [
        {
            "url": EXT_CRITERION,
            "extension": [
                {"url": "criterion", "valueCode": f"inc-{i}"},
                {"url": "result", "valueCode": "unknown" if i < unknown else "met"},
            ],
        }
        for i in range(4)
    ]
    match = {
        "url": EXT_MATCH,
        "extension": [
            {"url": "outcome", "valueCode": outcome},
            {"url": "asOf", "valueDate": "2026-06-01"},
            {"url": "run", "valueString": run},
            {"url": "status", "valueCode": outcome},
        ],
    }
    return {
        "resourceType": "ResearchSubject",
        "id": sid,
        "status": status,
        "individual": {"reference": patient},
        "extension": [match, *criteria],
    }


def _group(run: str, members: dict[str, str]) -> Json:
    return {
        "resourceType": "Group",
        "identifier": [{"system": RUN_SYSTEM, "value": run}],
        "member": [
            {"entity": {"reference": p}, "extension": [{"url": EXT_OUTCOME, "valueCode": o}]}
            for p, o in members.items()
        ],
    }


def test_rows_show_status_owner_unknowns_and_changes() -> None:
    previous = snapshot_of(
        _group("r1", {"Patient/a": "potential-candidate", "Patient/c": "candidate"})
    )
    latest = snapshot_of(_group("r2", {"Patient/a": "candidate", "Patient/b": "candidate"}))
    assert latest == Snapshot("r2", {"Patient/a": "candidate", "Patient/b": "candidate"})
    subjects = [
        _subject("1", "Patient/a", "candidate", "eligible", "r2", 0),
        _subject("2", "Patient/b", "candidate", "candidate", "r2", 2),
        _subject("3", "Patient/c", "ineligible", "ineligible", "r2", 0),
    ]
    people = {
        "Patient/a": {"name": [{"family": "Lee", "given": ["Ann"]}], "birthDate": "1980-07-01"}
    }
    rows = candidate_rows(subjects, people, latest, previous)
    assert [(r.patient, r.change, r.decided, r.unknown) for r in rows] == [
        ("Patient/a", "was potential-candidate", True, 0),
        ("Patient/b", "new", False, 2),
    ]
    assert rows[0].name == "Lee, Ann"
    assert rows[0].age == (45, 45)
    assert dropped_since(latest, previous) == ["Patient/c"]
    assert [r.change for r in candidate_rows(subjects, {}, latest, None)] == ["first run"] * 2


def test_sorting_and_filtering() -> None:
    latest = snapshot_of(
        _group("r2", {"Patient/a": "candidate", "Patient/b": "potential-candidate"})
    )
    subjects = [
        _subject("1", "Patient/a", "candidate", "candidate", "r1", 1),
        _subject("2", "Patient/b", "potential-candidate", "potential-candidate", "r2", 3),
    ]
    rows = candidate_rows(subjects, {}, latest, latest)
    assert [r.patient for r in sort_rows(rows, "unknown", descending=True)] == [
        "Patient/b",
        "Patient/a",
    ]
    assert [r.patient for r in sort_rows(rows, "")] == ["Patient/a", "Patient/b"]
    assert [r.patient for r in filter_rows(rows, outcome="potential-candidate")] == ["Patient/b"]
    assert [r.change for r in filter_rows(rows, change="changed")] == ["evidence updated"]


def test_names_and_ages() -> None:
    assert patient_name({"name": [{"text": "李娜"}]}) == "李娜"
    assert patient_name({"name": [{"family": "X"}, {"use": "official", "family": "Y"}]}) == "Y"
    assert patient_name(None) == ""
    assert patient_ages({"birthDate": "2000-06-02"}, date(2026, 6, 1)) == (25, 25)
    assert patient_ages({"birthDate": "not a date"}, date(2026, 6, 1)) is None
    assert age_text(None) == ""


def test_a_partial_birth_date_shows_the_ages_it_allows() -> None:
    """Defect: a year-only birthDate left the age cell empty."""
    on = date(2026, 6, 1)
    assert age_text(patient_ages({"birthDate": "1980"}, on)) == "45 or 46"
    assert age_text(patient_ages({"birthDate": "1980-06"}, on)) == "45 or 46"
    assert age_text(patient_ages({"birthDate": "1980-05"}, on)) == "46"
    assert age_text(patient_ages({"birthDate": "2000-02"}, date(2026, 2, 28))) == "25 or 26"


def test_unknown_ages_sort_last_in_either_order() -> None:
    """Defect: sorting by age put the blank ages first."""
    subjects = [
        _subject("1", "Patient/a", "candidate", "candidate", "r1", 0),
        _subject("2", "Patient/b", "candidate", "candidate", "r1", 0),
        _subject("3", "Patient/c", "candidate", "candidate", "r1", 0),
    ]
    people = {"Patient/a": {"birthDate": "1990-01-01"}, "Patient/c": {"birthDate": "1980"}}
    rows = candidate_rows(subjects, people, None, None)
    assert [r.patient for r in sort_rows(rows, "age")] == ["Patient/a", "Patient/c", "Patient/b"]
    assert [r.patient for r in sort_rows(rows, "age", descending=True)] == [
        "Patient/c",
        "Patient/a",
        "Patient/b",
    ]


def test_needs_attention_first_puts_decided_last_and_follows_the_order() -> None:
    """Defect: in the default sort the order control did nothing and decided patients stayed
    at the top."""
    subjects = [
        _subject("1", "Patient/a", "candidate", "eligible", "r1", 0),
        _subject("2", "Patient/b", "candidate", "candidate", "r1", 1),
        _subject("3", "Patient/c", "potential-candidate", "potential-candidate", "r1", 3),
    ]
    rows = candidate_rows(subjects, {}, None, None)
    assert [r.patient for r in sort_rows(rows, "")] == ["Patient/b", "Patient/c", "Patient/a"]
    assert [r.patient for r in sort_rows(rows, "", descending=True)] == [
        "Patient/a",
        "Patient/c",
        "Patient/b",
    ]


def test_contacted_reads_as_contacted_in_rows_and_filters() -> None:
    """Defect: "contacted" was stored as screening and shown as "screening" everywhere."""
    subjects = [_subject("1", "Patient/a", "candidate", "screening", "r1", 0)]
    rows = candidate_rows(subjects, {}, None, None)
    assert (rows[0].status, rows[0].decided) == ("contacted", True)
    assert filter_rows(rows, status="contacted") == rows
    assert status_word("screening") == "contacted"
    assert status_word("potential-candidate") == "potential-candidate"
    assert {status_word(status) for status, _ in DECISIONS.values()} == set(DECISIONS)


# -- evidence -----------------------------------------------------------------------------


def test_an_observation_reads_as_value_date_and_code() -> None:
    shown = describe(
        {
            "resourceType": "Observation",
            "id": "o1",
            "status": "final",
            "code": {
                "coding": [{"system": "http://loinc.org", "code": "777-3", "display": "Platelets"}]
            },
            "valueQuantity": {"value": 18, "unit": "10*9/L"},
            "effectiveDateTime": "2026-04-02",
        },
        {},
    )
    assert (shown.what, shown.value, shown.when, shown.status) == (
        "Platelets",
        "18 10*9/L",
        "2026-04-02",
        "final",
    )
    assert shown.codes == ("Platelets (LOINC 777-3)",)


def test_a_medication_reference_is_resolved() -> None:
    medication = {
        "resourceType": "Medication",
        "id": "m1",
        "code": {
            "coding": [
                {
                    "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                    "code": "121191",
                    "display": "rituximab",
                }
            ]
        },
    }
    shown = describe(
        {
            "resourceType": "MedicationAdministration",
            "id": "a1",
            "status": "completed",
            "medicationReference": {"reference": "Medication/m1"},
            "effectivePeriod": {"start": "2025-01-01", "end": "2025-01-22"},
        },
        {"Medication/m1": medication},
    )
    assert (shown.kind, shown.what, shown.when) == (
        "Medication given",
        "rituximab",
        "2025-01-01 to 2025-01-22",
    )
    assert shown.codes == ("rituximab (RxNorm 121191)",)
    assert "access" in missing("Procedure/p1", allowed=False).what


def _platelets(**when: object) -> Json:
    return {"resourceType": "Observation", "id": "o", "status": "final", **when}


def test_evidence_dates_follow_the_rules_and_the_site_time_zone() -> None:
    """Defects: an Observation dated by effectiveInstant showed no date; times were shown
    raw with the record's offset (+08:00) beside history in UTC."""
    shanghai = ZoneInfo("Asia/Shanghai")
    assert describe(_platelets(effectiveInstant="2026-04-02T01:30:00Z"), {}).when == (
        "2026-04-02 01:30 UTC"
    )
    assert describe(_platelets(issued="2026-04-02T09:30:00+08:00"), {}).when == (
        "2026-04-02 01:30 UTC"
    )
    both = _platelets(effectiveDateTime="2026-04-01T23:30:00Z", issued="2026-04-03T00:00:00Z")
    assert describe(both, {}, shanghai).when == "2026-04-02 07:30 CST"
    period = _platelets(effectivePeriod={"start": "2026-04-02T01:30:00Z"})
    assert describe(period, {}, shanghai).when == "2026-04-02 09:30 CST"
    assert describe(_platelets(effectiveDateTime="2026-04-02"), {}, shanghai).when == "2026-04-02"
    assert shown_time("2026-04-02T09:30:00", shanghai) == "2026-04-02T09:30:00"


def test_platelet_counts_read_in_the_studys_unit_beside_the_records() -> None:
    """Defect: summaries in 10^9/L, evidence in the record's "/mm3" or "10*3/uL"."""
    translate_cql()  # the normaliser reads the value sets the translated CQL uses
    normaliser = load_normaliser(load_study("kn5501"))
    loinc = {"coding": [{"system": "http://loinc.org", "code": "777-3"}]}

    def shown(quantity: Json, code: Json = loinc) -> str:
        observation = {**_platelets(), "code": code, "valueQuantity": quantity}
        return describe(observation, {}, normaliser=normaliser).value

    assert shown({"value": 52000, "unit": "/mm3"}) == "52 x10^9/L (recorded as 52000 /mm3)"
    assert (
        shown(
            {"value": 85, "unit": "K/uL", "system": "http://unitsofmeasure.org", "code": "10*3/uL"}
        )
        == "85 x10^9/L (recorded as 85 K/uL)"
    )
    assert shown({"value": 18, "unit": "10*9/L"}) == "18 x10^9/L"
    assert shown({"value": 9, "comparator": "<", "unit": "10*9/L"}) == "<9 x10^9/L"
    assert shown({"value": 52000, "unit": "furlongs"}) == "52000 furlongs"  # as recorded
    hemoglobin = {"coding": [{"system": "http://loinc.org", "code": "718-7"}]}
    assert shown({"value": 120, "unit": "g/L"}, hemoglobin) == "120 g/L"


def test_a_bad_time_zone_is_refused_naming_the_setting() -> None:
    with pytest.raises(ConfigError, match="FHIR_MATCH_TIME_ZONE"):
        load_review_settings({"FHIR_MATCH_TIME_ZONE": "Mars/Olympus"})
    assert load_review_settings({"FHIR_MATCH_TIME_ZONE": "Asia/Shanghai"}).zone == ZoneInfo(
        "Asia/Shanghai"
    )


# -- decisions ----------------------------------------------------------------------------

_SUBJECT = {
    "resourceType": "ResearchSubject",
    "id": "s1",
    "meta": {"versionId": "3", "tag": [{"system": "t", "code": "x"}]},
    "status": "candidate",
    "extension": [{"url": EXT_MATCH, "extension": []}],
}


def test_a_decision_is_a_guarded_update_and_a_provenance() -> None:
    bundle = decision_transaction(
        _SUBJECT,
        "contacted",
        "",
        Coordinator("Practitioner/p1", "Casey"),
        "2026-11-25T10:00:00+00:00",
    )
    put, post = bundle["entry"]
    assert put["request"] == {"method": "PUT", "url": "ResearchSubject/s1", "ifMatch": 'W/"3"'}
    assert put["resource"]["status"] == "screening"
    assert put["resource"]["meta"] == {"tag": [{"system": "t", "code": "x"}]}
    assert [e["url"] for e in put["resource"]["extension"]] == [EXT_MATCH, EXT_DECISION]
    provenance = post["resource"]
    assert provenance["target"] == [{"reference": "ResearchSubject/s1"}]
    assert provenance["agent"][0]["who"] == {"reference": "Practitioner/p1", "display": "Casey"}
    assert decision_history([provenance, {"resourceType": "Provenance"}])[0].decision == "contacted"


def test_ineligible_needs_a_reason_and_decisions_are_known() -> None:
    who = Coordinator("", "local user")
    with pytest.raises(DecisionError, match="why"):
        decision_transaction(_SUBJECT, "ineligible", "  ", who, "2026-11-25")
    with pytest.raises(DecisionError, match="choose") as unknown:
        decision_transaction(_SUBJECT, "enrolled", "", who, "2026-11-25")
    assert unknown.value.field == "decision"
    bundle = decision_transaction(
        _SUBJECT, "ineligible", "moved away", who, "2026-11-25", tag="demo"
    )
    provenance = bundle["entry"][1]["resource"]
    assert provenance["agent"][0]["who"] == {"display": "local user"}
    assert provenance["meta"]["tag"][0]["code"] == "demo"
    history = decision_history([provenance])
    assert (history[0].decision, history[0].reason, history[0].by) == (
        "ineligible",
        "moved away",
        "local user",
    )


def test_evidence_that_reads_the_same_is_one_line() -> None:
    def order(i: int, when: str, drug: str = "Eltrombopag 50 mg tablet") -> Json:
        return {
            "resourceType": "MedicationRequest",
            "id": f"m{i}",
            "status": "completed",
            "medicationCodeableConcept": {"text": drug},
            "authoredOn": when,
        }

    lines = grouped(
        [
            describe(order(1, "2019-03-01"), {}),
            describe(order(2, "2018-07-09T08:00:00+08:00"), {}),
            describe(order(3, "2020-01-01", "rituximab"), {}),
        ]
    )
    assert [(g.first.what, g.span, g.references) for g in lines] == [
        (
            "Eltrombopag 50 mg tablet",
            "2 times, 2018-07-09 to 2019-03-01",
            ("MedicationRequest/m1", "MedicationRequest/m2"),
        ),
        ("rituximab", "2020-01-01", ("MedicationRequest/m3",)),
    ]


def test_only_granted_types_are_asked_for() -> None:
    asked: list[str] = []

    def server(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path.rsplit("/", 1)[1])
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset"})

    grant = Grant.from_scope("user/Condition.rs user/MedicationRequest.rs")
    base = "http://fhir.invalid/fhir"
    with FhirClient(FhirSettings(base_url=base), transport=httpx.MockTransport(server)) as client:
        found = cited_resources(
            client, ["Observation/o1", "Condition/c1", "MedicationRequest/m1"], grant
        )
        assert patients(client, ["Patient/p1"], grant) == {}
    assert found == {}
    assert asked == ["Condition", "MedicationRequest"]
