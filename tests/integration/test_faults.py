"""The faults suite, network and FHIR server side: discovery runs on the real HAPI server,
Redis and a Celery worker process, through a proxy (faults.py) that fails requests, takes
the server away, or answers badly.

One tagged population; a run without faults gives the list every faulty run is compared
with, criterion by criterion. Before each faulty run the subjects fhir-match wrote and their
Provenance are deleted, so the faulty run writes the whole list again and a lost batch
cannot hide behind what an earlier run wrote.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import redis

from fhir_match.candidates import current_candidates
from fhir_match.config import Settings
from fhir_match.evaluate.study import load_study
from fhir_match.fhir import FhirClient, Search
from fhir_match.tagging import tag_token
from fhir_match.writeback import SUBJECT_SYSTEM
from worker.process import WorkerProcess
from worker.runs import Run, State

from .faults import FaultProxy, Rewrite, RewriteRule, SeenRequest
from .populations import STUDY, Population, loaded_population, run_discovery

Listing = dict[str, tuple[str, tuple[tuple[str, str, str, tuple[str, ...]], ...]]]
"""Patient -> outcome and, per criterion, its result, summary and evidence."""

OUTAGE_S = 60
FAULT_RATE = 0.2


@pytest.fixture(scope="module")
def population(fhir: FhirClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Population]:
    folder = tmp_path_factory.mktemp("population")
    with loaded_population(fhir, folder, 60, 1414, 0.6, "faults") as population:
        yield population


def listing(fhir: FhirClient, population: Population) -> Listing:
    """The population's patients on the study's list, as a reviewer sees them."""
    return {
        c.patient: (
            c.outcome,
            tuple((r.id, r.result, r.summary, tuple(r.evidence)) for r in c.criteria),
        )
        for c in current_candidates(fhir, load_study(STUDY), population.tag)[0]
        if c.patient in population.expected
    }


def unlist(fhir: FhirClient, population: Population) -> None:
    """Delete the subjects runs wrote about the population, with their Provenance (not the
    population's own ResearchSubjects, of other studies): the next run writes its list anew."""
    ours = Search("ResearchSubject").where("identifier", f"{SUBJECT_SYSTEM}|")
    fhir.delete_matching(ours.where("_tag", tag_token(population.tag)), cascade=True)
    assert listing(fhir, population) == {}


@pytest.fixture(scope="module")
def without_faults(
    fhir: FhirClient,
    redis_client: redis.Redis,
    celery_worker: WorkerProcess,
    population: Population,
) -> Listing:
    run = run_discovery(redis_client, celery_worker, population)
    assert run.state == State.DONE, run
    assert run.failures == ()
    found = listing(fhir, population)
    assert {p: outcome for p, (outcome, _) in found.items()} == population.listed
    return found


def faulty_run(
    fhir: FhirClient,
    store: redis.Redis,
    worker: WorkerProcess,
    population: Population,
    proxy: FaultProxy,
) -> Run:
    unlist(fhir, population)
    return run_discovery(store, worker, population, base_url=proxy.base_url)


def test_a_fifth_of_requests_failing_gives_the_same_list(
    fhir: FhirClient,
    settings: Settings,
    redis_client: redis.Redis,
    celery_worker: WorkerProcess,
    population: Population,
    without_faults: Listing,
) -> None:
    with FaultProxy(settings.fhir.base_url, fault_rate=FAULT_RATE, seed=14) as proxy:
        run = faulty_run(fhir, redis_client, celery_worker, population, proxy)

    print(f"\n{proxy.requests} requests, faults: {dict(proxy.faults_injected)}")
    assert sum(proxy.faults_injected.values()) >= proxy.requests * FAULT_RATE / 2
    assert run.state == State.DONE, run
    assert run.failures == ()
    assert listing(fhir, population) == without_faults


def test_the_server_gone_for_a_minute_mid_run_gives_the_same_list(
    fhir: FhirClient,
    settings: Settings,
    redis_client: redis.Redis,
    celery_worker: WorkerProcess,
    population: Population,
    without_faults: Listing,
) -> None:
    """The FHIR server refuses every connection for 60 s from the moment the first batch
    has read its first page of Observations, then serves again. Simulated by the proxy
    (listening socket closed, open connections dropped), not by restarting HAPI: see
    test_restart.py for a real restart."""
    with FaultProxy(settings.fhir.base_url) as proxy:
        proxy.after(first_batch_read, lambda: proxy.go_down(OUTAGE_S))
        run = faulty_run(fhir, redis_client, celery_worker, population, proxy)

    (went, came) = proxy.outages[0]
    finished = time.monotonic()
    print(f"\noutage {came - went:.0f} s; run done {finished - came:.0f} s after it ended")
    assert came - went >= OUTAGE_S
    assert run.state == State.DONE, run
    assert run.failures == ()
    assert listing(fhir, population) == without_faults


def first_batch_read(request: SeenRequest) -> bool:
    """A batch's search for Observations: the run is under way, its cohort found."""
    return request.path.endswith("/Observation") and bool(request.param("patient"))


def _condition_search_of(patient: str) -> Callable[[SeenRequest], bool]:
    """The Condition search of the batch ``patient`` is in (one request names them all)."""

    def matches(request: SeenRequest) -> bool:
        return request.path.endswith("/Condition") and patient in request.param("patient").split(
            ","
        )

    return matches


BAD_ANSWERS = {
    Rewrite.NOT_JSON: "response is not FHIR JSON",
    Rewrite.TRUNCATED: "response is not FHIR JSON",
    Rewrite.OUTCOME: "an OperationOutcome where a Bundle was expected",
    Rewrite.NEXT_LOOP: "next link goes back to a page already read",
    Rewrite.WRONG_TYPE: "page holds Observation entries, not asked for (Condition)",
}
"""Each bad answer, and what the failure it causes says."""


@pytest.mark.parametrize("rewrite", list(BAD_ANSWERS), ids=lambda rewrite: rewrite.name.lower())
def test_a_bad_answer_costs_its_batch_only(
    fhir: FhirClient,
    settings: Settings,
    redis_client: redis.Redis,
    celery_worker: WorkerProcess,
    population: Population,
    without_faults: Listing,
    rewrite: Rewrite,
) -> None:
    chosen = min(without_faults)
    with FaultProxy(settings.fhir.base_url) as proxy:
        rule = proxy.rewrite(RewriteRule(rewrite, _condition_search_of(chosen), times=None))
        run = faulty_run(fhir, redis_client, celery_worker, population, proxy)

    assert run.state == State.PARTIAL, run
    assert run.batches.failed_batches == 1
    (failure,) = run.failures
    assert failure.startswith(f"GET {proxy.base_url}/Condition?patient=...&_count=500 failed")
    assert BAD_ANSWERS[rewrite] in failure
    assert "Patient/" not in failure
    assert not any(p.removeprefix("Patient/") in failure for p in population.expected)
    lost = set(rule.applied[0].param("patient").split(","))
    assert chosen in lost
    others = {p: listed for p, listed in without_faults.items() if p not in lost}
    assert listing(fhir, population) == others
    assert run.funnel["not_evaluated"] == len(lost)


def test_a_total_that_lies_changes_nothing(
    fhir: FhirClient,
    settings: Settings,
    redis_client: redis.Redis,
    celery_worker: WorkerProcess,
    population: Population,
    without_faults: Listing,
) -> None:
    with FaultProxy(settings.fhir.base_url) as proxy:
        rule = proxy.rewrite(RewriteRule(Rewrite.TOTAL_LIES, lambda r: r.method == "GET", None))
        run = faulty_run(fhir, redis_client, celery_worker, population, proxy)

    assert len(rule.applied) > 10
    assert run.state == State.DONE, run
    assert run.failures == ()
    assert listing(fhir, population) == without_faults
