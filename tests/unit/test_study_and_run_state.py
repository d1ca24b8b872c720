"""Which ResearchStudy a study's runs use, and how a run's Group records its end (pure)."""

from __future__ import annotations

import pytest

from fhir_match.config import load_settings, research_study_setting
from fhir_match.errors import ConfigError
from fhir_match.evaluate.study import load_study
from fhir_match.fhir.models import parse_resource, to_json
from fhir_match.funnel import Funnel
from fhir_match.records import Json
from fhir_match.tagging import TAG_SYSTEM, tagged
from fhir_match.writeback import (
    RunInfo,
    RunState,
    choose_study,
    failure_reasons,
    last_complete,
    run_of,
    run_state,
    run_state_of,
    snapshot_group,
    study_resource,
)

STUDY = load_study("kn5501")
REGISTRY = {"system": "https://clinicaltrials.gov", "value": "NCT06337474"}


def ours(resource_id: str, tag: str = "") -> Json:
    return {**study_resource(STUDY, tag), "id": resource_id}


def foreign(resource_id: str, tag: str = "") -> Json:
    """A hospital's own record of the trial: the registry identifier and nothing of ours."""
    resource = {"resourceType": "ResearchStudy", "id": resource_id, "identifier": [REGISTRY]}
    return tagged(resource, tag)


def test_ours_wins_over_a_hospitals_record_of_the_same_trial() -> None:
    assert choose_study(STUDY, "", [foreign("7"), ours("3"), foreign("9")]) == "ResearchStudy/3"


def test_a_single_foreign_study_is_adopted_and_none_means_create() -> None:
    assert choose_study(STUDY, "", [foreign("7")]) == "ResearchStudy/7"
    assert choose_study(STUDY, "", []) is None


def test_several_foreign_studies_name_the_setting_and_the_candidates() -> None:
    with pytest.raises(ConfigError) as failure:
        choose_study(STUDY, "", [foreign("9"), foreign("7")])

    message = str(failure.value)
    assert "FHIR_MATCH_RESEARCH_STUDY_KN5501" in message
    assert "ResearchStudy/7, ResearchStudy/9" in message


def test_a_tagged_run_sees_only_its_tagged_studies_and_an_untagged_run_none_of_them() -> None:
    found = [ours("1"), ours("2", "test-a"), foreign("3", "test-a"), foreign("4", "test-b")]

    assert choose_study(STUDY, "test-a", found) == "ResearchStudy/2"
    assert choose_study(STUDY, "test-b", found) == "ResearchStudy/4"
    assert choose_study(STUDY, "", found) == "ResearchStudy/1"
    # ours of another scope does not count as ours: a tagged study is not the demo's
    assert choose_study(STUDY, "", [ours("2", "test-a")]) is None
    # a seeded population's own ResearchStudy, loaded by several tagged populations
    tags = [{"system": TAG_SYSTEM, "code": c} for c in ("test-c", "test-d")]
    shared = {**foreign("5"), "meta": {"tag": tags}}
    assert choose_study(STUDY, "test-c", [shared]) == "ResearchStudy/5"
    assert choose_study(STUDY, "", [shared]) is None


def test_the_setting_is_read_per_study_as_an_id_or_a_reference() -> None:
    name = research_study_setting("kn5501")
    assert name == "FHIR_MATCH_RESEARCH_STUDY_KN5501"
    assert load_settings({name: "ResearchStudy/abc-1"}).research_study("kn5501") == "abc-1"
    assert load_settings({}).research_study("kn5501") == ""
    with pytest.raises(ConfigError, match=name):
        load_settings({name: "two words"})


def funnel(candidates: int, not_evaluated: int) -> Funnel:
    return Funnel.of(STUDY, {"inc-1": 2}, {"candidate": candidates}, not_evaluated)


def test_a_run_is_complete_partial_or_failed_by_what_it_evaluated() -> None:
    assert run_state(funnel(3, 0), [], 0) == RunState("complete")
    partial = run_state(funnel(3, 4), ["batch timed out"], 1)
    assert partial == RunState("partial", ("batch timed out",), 1)
    failed = run_state(Funnel.of(STUDY, {}, {}, not_evaluated=166), [], 4)
    assert failed.state == "failed"
    assert failed.reasons == ("no patient could be evaluated",)


def test_failure_reasons_leave_out_the_patient_and_count_repeats() -> None:
    failures = [
        "Patient/p1: engine failed",
        "Patient/p2: engine failed",
        "FHIR server 503 on GET Condition",
    ]
    assert failure_reasons(failures) == ("2 x engine failed", "FHIR server 503 on GET Condition")


RUN = RunInfo("run-2", "2026-06-01", "2026-06-01T02:00:00+00:00", "test-x")


def test_the_state_extension_reads_back_and_the_group_stays_valid_fhir() -> None:
    state = RunState("partial", ("2 x engine failed",), 1)
    group = snapshot_group(STUDY, "ResearchStudy/1", RUN, [], funnel(1, 2), state)

    assert run_state_of(to_json(parse_resource(group))) == state
    assert run_of(group) == "run-2"
    assert run_state_of({"resourceType": "Group"}) == RunState("complete")  # before states


def group(run: str, state: RunState) -> Json:
    info = RunInfo(run, "2026-06-01", "2026-06-01T02:00:00+00:00")
    return snapshot_group(STUDY, "ResearchStudy/1", info, [], funnel(1, 0), state)


def test_the_list_is_the_last_complete_run_and_later_ones_are_flagged() -> None:
    newest_first = [
        group("r4", RunState("failed", ("cohort search failed",))),
        group("r3", RunState("partial", ("engine failed",), 1)),
        group("r2", RunState("complete")),
        group("r1", RunState("complete")),
    ]

    complete, later = last_complete(newest_first)

    assert complete is not None
    assert run_of(complete) == "r2"
    assert [run_of(g) for g in later] == ["r4", "r3"]
    assert last_complete(newest_first[:2]) == (None, newest_first[:2])
