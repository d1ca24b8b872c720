"""Thin Celery tasks: they take ids and settings names, never resources or patient data.

A discovery run is three kinds of task:
``discover`` takes the study's lock, finds the cohort and fans it out in batches;
``screen_patients`` fetches, evaluates and writes back one batch (patient ids in, counts
out); ``finish_discovery``, the chord's callback, unlists whom a full run no longer finds,
writes the run's Group with the run's funnel and releases the lock. Every task is
idempotent, so a redelivered task (``acks_late``) changes nothing the second time.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import redis
from celery import Task, chord
from celery.signals import worker_process_shutdown

from fhir_match.config import PROJECT_DIR, Settings, load_settings
from fhir_match.discovery import (
    PATIENTS_PER_BATCH,
    BatchReport,
    bulk_screen,
    ensure_study,
    find_patients,
    finish_run,
    record_failed_run,
    screen_batch,
    study_setup,
)
from fhir_match.errors import FhirMatchError, TransientFhirError
from fhir_match.evaluate.engine import NodeCqlEngine
from fhir_match.fhir import FhirClient
from fhir_match.screen import study_engine
from fhir_match.server import describe_server
from fhir_match.writeback import RunInfo
from worker import runs
from worker.app import app

__all__ = [
    "SINCE_MARGIN",
    "check_fhir_server",
    "discover",
    "finish_discovery",
    "run_scope",
    "screen_patients",
]

log = logging.getLogger(__name__)

TASK_RETRIES = 5
SINCE_MARGIN = timedelta(minutes=5)
"""An incremental run looks back this much before the last run's start: writes that were
in flight while it read are not missed."""

_engines: dict[tuple[str, str], NodeCqlEngine] = {}


def _settings(base_url: str | None) -> Settings:
    settings = load_settings()
    return replace(settings, fhir=settings.fhir.with_base_url(base_url)) if base_url else settings


def _redis(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url, socket_timeout=30)


def _engine(study_id: str, as_of: str) -> NodeCqlEngine:
    """One engine per worker process and study, reloaded when the screening date changes."""
    key = (study_id, as_of)
    if key not in _engines:
        for other in [k for k in _engines if k[0] == study_id]:
            _engines.pop(other).close()
        setup = study_setup(study_id)
        _engines[key] = study_engine(setup.study, setup.normaliser, date.fromisoformat(as_of))
    return _engines[key]


@worker_process_shutdown.connect  # type: ignore[untyped-decorator]
def _close_engines(**_: object) -> None:
    while _engines:
        _engines.popitem()[1].close()


def run_scope(study_id: str, tag: str) -> str:
    """What a run locks, and whose last run an incremental run continues: the study, or
    the study's tagged population (test data; tagged runs touch nothing else)."""
    return f"{study_id}:{tag}" if tag else study_id


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _error(exc: BaseException) -> str:
    """A failure as the run record shows it: our errors are written PHI-free; anything
    else is named by its type only, since its message may quote data."""
    return str(exc) if isinstance(exc, FhirMatchError) else f"unexpected {type(exc).__name__}"


@app.task  # type: ignore[untyped-decorator]
def check_fhir_server(base_url: str | None = None) -> dict[str, Any]:
    """Read the server's CapabilityStatement from the worker: proves the worker can reach it.

    No task-level retries: the FHIR client already retries transient failures.
    """
    with FhirClient(_settings(base_url).fhir) as client:
        return describe_server(client)


MIN_BATCHES = 4
"""A small cohort is still split this many ways, so the workers' processes fetch and
evaluate side by side instead of one of them doing it all."""


def _batch_size(cohort: int) -> int:
    return max(1, min(PATIENTS_PER_BATCH, -(-cohort // MIN_BATCHES)))


def _full(settings: Settings, last: dict[str, Any] | None, mode: str) -> bool:
    if mode != "auto":
        return mode == "full"
    if last is None or not last.get("full_started"):
        return True
    age = datetime.now(UTC) - datetime.fromisoformat(last["full_started"])
    return age > timedelta(days=settings.full_every_days)


@app.task(  # type: ignore[untyped-decorator]
    bind=True,
    autoretry_for=(TransientFhirError,),
    retry_backoff=True,
    max_retries=TASK_RETRIES,
)
def discover(
    self: Task,
    study_id: str,
    base_url: str | None = None,
    as_of: str | None = None,
    mode: str = "auto",
    tag: str = "",
    fetch: str = "search",
) -> dict[str, Any]:
    """Start a discovery run of one study: lock it, find the cohort, fan out the batches.

    ``mode`` is full (every patient of the cohort), incremental (only those whose record
    changed since the last run) or auto (incremental, full when the last full run is older
    than FHIR_MATCH_FULL_EVERY_DAYS). With a run ``tag``, only patients found through
    resources carrying it are screened, and what is written carries it. ``fetch`` is
    search (batches fanned out to evaluation tasks) or bulk (one Bulk Data export, screened
    here, batch by batch; always a full run). The run's id is this task's id.
    """
    run_id = str(self.request.id)
    settings = _settings(base_url)
    store = _redis(settings)
    scope = run_scope(study_id, tag)
    if not runs.acquire_lock(store, scope, run_id):
        holder = runs.lock_holder(store, scope)
        runs.save_run(
            store,
            run_id,
            study=study_id,
            tag=tag,
            state="skipped",
            finished=_now(),
            reason=f"run {holder} of {study_id} is still in progress",
        )
        return {"run": run_id, "state": "skipped"}
    study_ref = ""
    try:
        started = _now()
        as_of = as_of or date.today().isoformat()
        last = runs.last_run(store, scope)
        full = fetch == "bulk" or _full(settings, last, mode)
        since = None
        if not full and last is not None:
            since = (datetime.fromisoformat(last["started"]) - SINCE_MARGIN).isoformat()
        setup = study_setup(study_id)
        with FhirClient(settings.fhir) as client:
            study_ref = ensure_study(client, setup.study, tag, settings.research_study(study_id))
            cohort = find_patients(client, setup, tag)
            cohort_requests = client.requests
        size = _batch_size(len(cohort))
        batches = [cohort[i : i + size] for i in range(0, len(cohort), size)]
        runs.save_run(
            store,
            run_id,
            study=study_id,
            state="running",
            base_url=settings.fhir.base_url,
            as_of=as_of,
            tag=tag,
            full=full,
            since=since,
            started=started,
            study_ref=study_ref,
            cohort=len(cohort),
            cohort_requests=cohort_requests,
            fetch=fetch,
            batches_total=len(batches),
            full_started=started if full else (last or {}).get("full_started"),
        )
        if full:
            store.delete(f"{runs.PREFIX}:run:{run_id}:cohort")
            if cohort:
                store.sadd(f"{runs.PREFIX}:run:{run_id}:cohort", *cohort)
                store.expire(f"{runs.PREFIX}:run:{run_id}:cohort", runs.RUN_TTL_S)
        if fetch == "bulk":
            _bulk(store, run_id, cohort)
    except Exception as exc:
        runs.save_run(
            store, run_id, study=study_id, state="failed", finished=_now(), error=_error(exc)
        )
        runs.release_lock(store, scope, run_id)
        retried = isinstance(exc, TransientFhirError) and self.request.retries < TASK_RETRIES
        if study_ref and not retried:
            with FhirClient(settings.fhir) as client:
                info = RunInfo(run_id, str(as_of), started, tag)
                record_failed_run(client, study_setup(study_id), study_ref, info, _error(exc))
        raise
    if fetch == "bulk":
        return _finish(store, run_id)
    queue = (self.request.delivery_info or {}).get("routing_key")
    header = [
        screen_patients.s(run_id, n, batch).set(queue=queue) for n, batch in enumerate(batches)
    ]
    callback = finish_discovery.s(run_id).set(queue=queue)
    if header:
        chord(header)(callback)
    else:
        callback.apply_async(args=([],))
    return {"run": run_id, "state": "running", "cohort": len(cohort), "batches": len(batches)}


@app.task(bind=True, max_retries=TASK_RETRIES)  # type: ignore[untyped-decorator]
def screen_patients(self: Task, run_id: str, batch: int, patients: Sequence[str]) -> dict[str, Any]:
    """Fetch, evaluate and write back one batch. Transient FHIR failures are retried with
    backoff; a batch that still fails is recorded and the run goes on without it."""
    store = _redis(load_settings())
    run = runs.load_run(store, run_id)
    if run is None:
        return {"batch": batch, "error": "no such run"}
    settings = _settings(run["base_url"])
    started = time.perf_counter()
    info = RunInfo(run_id, run["as_of"], run["started"], run["tag"])
    try:
        setup = study_setup(run["study"])
        engine = _engine(run["study"], run["as_of"])
        with FhirClient(settings.fhir) as client:
            report = screen_batch(
                client, setup, engine, patients, run["study_ref"], info, since=run.get("since")
            ).as_json()
    except TransientFhirError as exc:
        if self.request.retries < TASK_RETRIES:
            raise self.retry(exc=exc, countdown=min(300, 10 * 2**self.request.retries)) from exc
        report = {"patients": len(patients), "failed_batches": 1, "failures": [_error(exc)]}
    except Exception as exc:
        log.exception("batch %s of run %s failed", batch, run_id)
        report = {"patients": len(patients), "failed_batches": 1, "failures": [_error(exc)]}
    report["seconds"] = round(time.perf_counter() - started, 3)
    runs.record_batch(store, run_id, batch, report)
    return {"batch": batch, "failed": bool(report.get("failed_batches"))}


@app.task(  # type: ignore[untyped-decorator]
    bind=True,
    autoretry_for=(TransientFhirError,),
    retry_backoff=True,
    max_retries=TASK_RETRIES,
)
def finish_discovery(self: Task, results: list[dict[str, Any]], run_id: str) -> dict[str, Any]:
    """Unlist whom a full run no longer finds, write the run's Group (with its funnel),
    release the lock."""
    return _finish(_redis(load_settings()), run_id)


def _bulk(store: redis.Redis, run_id: str, cohort: list[str]) -> None:
    """Screen the whole cohort from one Bulk Data export, recording each batch."""
    run = runs.load_run(store, run_id)
    assert run is not None
    info = RunInfo(run_id, run["as_of"], run["started"], run["tag"])
    setup = study_setup(run["study"])
    engine = _engine(run["study"], run["as_of"])
    folder = PROJECT_DIR / "var" / "runs" / run_id
    batches = iter(range(len(cohort) + 1))
    batch_requests = 0

    def record(report: BatchReport) -> None:
        nonlocal batch_requests
        batch_requests += report.requests
        runs.record_batch(store, run_id, next(batches), report.as_json())

    try:
        with FhirClient(_settings(run["base_url"]).fhir) as client:
            total = bulk_screen(
                client,
                setup,
                engine,
                cohort,
                run["study_ref"],
                info,
                folder,
                record,
            )
        # the export's own requests; the batches' are in their reports
        runs.save_run(store, run_id, bulk_requests=total.requests - batch_requests)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _finish(store: redis.Redis, run_id: str) -> dict[str, Any]:
    run = runs.load_run(store, run_id)
    if run is None:
        return {"run": run_id, "error": "no such run"}
    if run.get("state") in ("done", "failed"):
        return {"run": run_id, "state": run["state"]}  # delivered twice: done already
    settings = _settings(run["base_url"])
    info = RunInfo(run_id, run["as_of"], run["started"], run["tag"])
    cohort = None
    if run["full"]:
        members = store.smembers(f"{runs.PREFIX}:run:{run_id}:cohort")
        cohort = {m.decode() for m in members}  # type: ignore[union-attr]
    try:
        setup = study_setup(run["study"])
        funnel = runs.run_funnel(run, setup.study)
        with FhirClient(settings.fhir) as client:
            report = finish_run(
                client,
                setup,
                run["study_ref"],
                info,
                cohort,
                funnel,
                failures=run["batches"]["failures"],
                failed_batches=run["batches"].get("failed_batches", 0),
            )
            finish_requests = client.requests
    except TransientFhirError:
        raise
    except Exception as exc:
        runs.save_run(store, run_id, state="failed", finished=_now(), error=_error(exc))
        runs.release_lock(store, run_scope(run["study"], run["tag"]), run_id)
        raise
    batches = run["batches"]
    clean = not batches["failures"] and not batches.get("failed_batches")
    runs.save_run(
        store,
        run_id,
        state="done",
        finished=_now(),
        finish_requests=finish_requests,
        result=report.as_json(),
        funnel=funnel.as_json(),
    )
    if clean and not report.left_cohort.failed:
        runs.remember_last_run(
            store,
            run_scope(run["study"], run["tag"]),
            {"run": run_id, "started": run["started"], "full_started": run["full_started"]},
        )
    store.delete(f"{runs.PREFIX}:run:{run_id}:cohort")
    runs.release_lock(store, run_scope(run["study"], run["tag"]), run_id)
    return {"run": run_id, "state": "done", **report.as_json()}
