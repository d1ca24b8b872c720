"""A separate write store: its settings (FHIR_WRITE_*, read by the FHIR_ code under a
prefix), and the references written there to the EHR's resources (absolute when the store
is another server, exactly as before when it is the same)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from fhir_match.config import (
    DEFAULT_BACKEND_SCOPE,
    DEFAULT_READ_SCOPE,
    DEFAULT_WRITE_SCOPE,
    load_settings,
)
from fhir_match.errors import ConfigError
from fhir_match.evaluate.study import load_study
from fhir_match.records import CriterionResult, PatientEvaluation
from fhir_match.review.config import load_review_settings
from fhir_match.review.grants import Grant, requested_scopes
from fhir_match.review.listing import candidate_rows, snapshot_of
from fhir_match.writeback import (
    RunInfo,
    RunState,
    criteria_of,
    ehr_local,
    ehr_reference,
    our_subjects,
    patient_of,
    plan_change,
    snapshot_group,
)

from .keys import key_file

STUDY = load_study("kn5501")
EHR = "https://ehr.example/fhir/r4"
STORE = "https://store.example/fhir"
PATIENT = "Patient/p1"
ONE_SERVER = RunInfo("run-1", "2026-06-01", "2026-06-01T02:00:00+00:00")
TWO_SERVERS = RunInfo("run-1", "2026-06-01", "2026-06-01T02:00:00+00:00", ehr_base=EHR)


def evaluation() -> PatientEvaluation:
    criteria = (
        CriterionResult("inc-1", "inclusion", "met", "age 44", (PATIENT,)),
        CriterionResult("inc-3", "inclusion", "met", "platelets 23", ("Observation/o1",)),
        CriterionResult("exc-9", "exclusion", "not-met", "no pregnancy on record", ()),
    )
    return PatientEvaluation(PATIENT, "kn5501", "2026-06-01", "candidate", criteria)


def everything_written(run: RunInfo) -> dict[str, Any]:
    change = plan_change(STUDY, "ResearchStudy/1", PATIENT, evaluation(), None, run)
    assert change is not None
    assert change.provenance is not None
    group = snapshot_group(
        STUDY, "ResearchStudy/1", run, [(PATIENT, "candidate")], None, RunState("complete")
    )
    return {"subject": change.subject, "provenance": change.provenance, "group": group}


# -- settings -------------------------------------------------------------------------------


def test_without_a_write_url_the_store_is_the_read_server_with_its_settings() -> None:
    settings = load_settings({"FHIR_BASE_URL": EHR, "FHIR_TOKEN": "t"})
    assert settings.write_store is None
    assert settings.store == settings.fhir
    assert settings.ehr_base == ""


def test_the_write_store_has_settings_of_its_own_under_the_prefix() -> None:
    settings = load_settings(
        {
            "FHIR_BASE_URL": EHR,
            "FHIR_TOKEN": "ehr-token",
            "FHIR_WRITE_URL": STORE,
            "FHIR_WRITE_USERNAME": "fm",
            "FHIR_WRITE_PASSWORD": "pw",
            "FHIR_WRITE_TIMEOUT": "7",
        }
    )
    assert settings.fhir.base_url == EHR
    assert settings.fhir.auth == "bearer"
    store = settings.store
    assert (store.base_url, store.auth, store.username, store.timeout_s) == (
        STORE,
        "basic",
        "fm",
        7,
    )
    assert settings.ehr_base == EHR


def test_a_flag_moving_the_read_server_moves_a_store_that_is_the_read_server() -> None:
    settings = load_settings({})
    moved = settings.fhir.with_base_url(EHR)
    assert replace(settings, fhir=moved).store.base_url == EHR


def test_the_same_server_named_twice_is_one_server() -> None:
    settings = load_settings({"FHIR_BASE_URL": EHR, "FHIR_WRITE_URL": EHR + "/"})
    assert settings.write_store is not None
    assert settings.ehr_base == ""


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"FHIR_WRITE_URL": "ftp://x"}, "FHIR_WRITE_URL"),
        ({"FHIR_WRITE_URL": STORE, "FHIR_WRITE_AUTH": "kerberos"}, "FHIR_WRITE_AUTH"),
        ({"FHIR_WRITE_URL": STORE, "FHIR_WRITE_AUTH": "bearer"}, "FHIR_WRITE_TOKEN"),
        ({"FHIR_WRITE_URL": STORE, "FHIR_WRITE_USERNAME": "u"}, "FHIR_WRITE_PASSWORD"),
        ({"FHIR_WRITE_URL": STORE, "FHIR_WRITE_CLIENT_ID": "c"}, "FHIR_WRITE_PRIVATE_KEY_FILE"),
        ({"FHIR_WRITE_URL": STORE, "FHIR_WRITE_TIMEOUT": "0"}, "FHIR_WRITE_TIMEOUT"),
    ],
)
def test_bad_write_store_settings_name_their_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        load_settings(env)


def test_write_settings_without_a_write_url_are_not_read() -> None:
    assert load_settings({"FHIR_WRITE_AUTH": "kerberos"}).write_store is None


def test_both_servers_secrets_are_masked_when_recorded(tmp_path: Path) -> None:
    key = key_file(tmp_path, "ec")
    settings = load_settings(
        {
            "FHIR_TOKEN": "ehr-s3cret",
            "FHIR_WRITE_URL": STORE,
            "FHIR_WRITE_CLIENT_ID": "fhir-match",
            "FHIR_WRITE_PRIVATE_KEY_FILE": str(key),
        }
    )
    recorded = str(settings.as_json())
    assert "ehr-s3cret" not in recorded
    assert "PRIVATE KEY" not in recorded
    assert settings.store.backend is not None
    assert "PRIVATE KEY" not in repr(settings)


def test_backend_scopes_split_reading_from_writing_when_the_store_is_separate(
    tmp_path: Path,
) -> None:
    key = str(key_file(tmp_path, "ec"))
    backend = {"FHIR_CLIENT_ID": "c", "FHIR_PRIVATE_KEY_FILE": key}
    one = load_settings(backend)
    assert one.fhir.backend is not None
    assert one.fhir.backend.scope == DEFAULT_BACKEND_SCOPE
    two = load_settings(
        {
            **backend,
            "FHIR_WRITE_URL": STORE,
            "FHIR_WRITE_CLIENT_ID": "w",
            "FHIR_WRITE_PRIVATE_KEY_FILE": key,
        }
    )
    assert two.fhir.backend is not None
    assert two.store.backend is not None
    assert two.fhir.backend.scope == DEFAULT_READ_SCOPE
    assert all(s.endswith(".rs") for s in DEFAULT_READ_SCOPE.split())
    assert "system/ResearchSubject.rs" in DEFAULT_READ_SCOPE.split()
    assert two.store.backend.scope == DEFAULT_WRITE_SCOPE
    assert "system/ResearchSubject.crus" in DEFAULT_WRITE_SCOPE


# -- references -----------------------------------------------------------------------------


def test_on_one_server_what_is_written_is_unchanged() -> None:
    written = everything_written(ONE_SERVER)
    assert written["subject"]["individual"] == {"reference": PATIENT}
    assert criteria_of(written["subject"])[1].evidence == ("Observation/o1",)
    assert {e["what"]["reference"] for e in written["provenance"]["entity"]} == {
        PATIENT,
        "Observation/o1",
    }
    assert written["group"]["member"][0]["entity"] == {"reference": PATIENT}


def test_in_a_store_of_its_own_every_reference_to_the_ehr_is_absolute() -> None:
    written = everything_written(TWO_SERVERS)
    subject = written["subject"]
    assert subject["individual"] == {"reference": f"{EHR}/Patient/p1"}
    assert subject["study"] == {"reference": "ResearchStudy/1"}  # in the store itself
    assert criteria_of(subject)[1].evidence == (f"{EHR}/Observation/o1",)
    assert {e["what"]["reference"] for e in written["provenance"]["entity"]} == {
        f"{EHR}/Patient/p1",
        f"{EHR}/Observation/o1",
    }
    assert written["group"]["member"][0]["entity"] == {"reference": f"{EHR}/Patient/p1"}


def test_a_rerun_in_a_store_of_its_own_writes_nothing_new() -> None:
    first = everything_written(TWO_SERVERS)["subject"]
    held = {**first, "id": "s1", "meta": {"versionId": "1"}}
    assert plan_change(STUDY, "ResearchStudy/1", PATIENT, evaluation(), held, TWO_SERVERS) is None


def test_references_read_back_from_the_store_are_the_ehrs_own() -> None:
    assert ehr_reference("Condition/c1", EHR + "/") == f"{EHR}/Condition/c1"
    assert ehr_reference(f"{EHR}/Condition/c1", EHR) == f"{EHR}/Condition/c1"
    assert ehr_reference("urn:uuid:1", EHR) == "urn:uuid:1"
    assert ehr_reference("", EHR) == ""  # a local user has no fhirUser to cite
    assert ehr_local(f"{EHR}/Condition/c1", EHR) == "Condition/c1"
    assert ehr_local("https://elsewhere.example/fhir/Condition/c1", EHR).startswith("https://")
    assert ehr_local("Condition/c1", "") == "Condition/c1"
    subject = everything_written(TWO_SERVERS)["subject"]
    assert patient_of(subject, EHR) == PATIENT
    assert list(our_subjects([subject], STUDY, EHR)) == [PATIENT]


# -- the review app -------------------------------------------------------------------------


def test_the_review_app_reads_the_lists_from_the_store_and_names_patients_in_the_ehr() -> None:
    settings = load_review_settings({"FHIR_BASE_URL": EHR, "FHIR_WRITE_URL": STORE})
    assert settings.store is not None
    assert settings.store.base_url == STORE
    assert settings.ehr_base == EHR
    assert load_review_settings({"FHIR_BASE_URL": EHR}).ehr_base == ""
    written = everything_written(TWO_SERVERS)
    subject = {**written["subject"], "id": "s1"}
    snapshot = snapshot_of(written["group"], EHR)
    assert dict(snapshot.members) == {PATIENT: "candidate"}
    rows = candidate_rows([subject], {}, snapshot, None, EHR)
    assert [r.patient for r in rows] == [PATIENT]


def test_with_a_store_the_app_asks_the_ehr_for_patients_and_evidence_only() -> None:
    scopes = requested_scopes(frozenset({"Condition"}), ehr_launch=True, store=True).split()
    assert "user/Condition.rs" in scopes
    assert "user/Patient.rs" in scopes
    assert not [s for s in scopes if "Research" in s or "Provenance" in s or "Group" in s]
    grant = Grant.from_scope(" ".join(scopes)).with_store()
    assert grant.can_decide()
    assert grant.can_read("ResearchSubject")
    assert not Grant.from_scope(" ".join(scopes)).can_decide()
