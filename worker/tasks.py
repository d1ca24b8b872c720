"""Thin Celery tasks: they take ids and settings names, never resources or patient data.

A discovery run is three kinds of task:
``discover`` takes the study's lock, finds the cohort and fans it out in batches;
``screen_patients`` fetches, evaluates and writes back one batch (patient ids in, counts
out); ``finish_discovery``, sent by the last batch to report, unlists whom a full run
no longer finds, writes the run's Group with the run's funnel and releases the lock.
``watch_runs``, sent by beat, takes up runs that stopped moving (worker/watchdog.py).
Every task is idempotent, so a redelivered task (``acks_late``) changes nothing the second time.
"""

from __future__ import annotations

import base64
import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any, cast

import redis
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_shutdown

from fhir_match.config import PROJECT_DIR, CohortSetting, Settings, load_settings
from fhir_match.discovery import (
    PATIENTS_PER_BATCH,
    BatchReport,
    ensure_study,
    finish_run,
    record_failed_run,
    screen_batch,
    screen_files,
)
from fhir_match.errors import FhirMatchError, TransientFhirError
from fhir_match.evaluate.engine import NodeCqlEngine
from fhir_match.fhir import FhirClient
from fhir_match.runtime import study_setup
from fhir_match.screen import study_engine
from fhir_match.server import describe_server, read_allows
from fhir_match.sources import Fetch, Found, always_full, choose_source, describe, find
from fhir_match.writeback import RunInfo
from worker import runs, watchdog
from worker.app import BATCH_SHARE, app
from worker.runs import Run, State

__all__ = [
    "SINCE_MARGIN",
    "check_fhir_server",
    "discover",
    "finish_discovery",
    "screen_patients",
    "watch_runs",
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


def _run_info(run: Run) -> RunInfo:
    """What a run's writes record; references to the EHR are absolute when the run's
    settings name a write store of another server."""
    ehr_base = _settings(run.base_url or None).ehr_base
    return RunInfo(run.id, run.as_of, run.started, run.tag, ehr_base)


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


def _error(exc: BaseException) -> str:
    """A failure as the run record shows it: our errors are written PHI-free; anything
    else is named by its type only, since its message may quote data."""
    if isinstance(exc, SoftTimeLimitExceeded):
        return "stopped at its time limit (FHIR_MATCH_TASK_TIME_LIMIT)"
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


def _full(settings: Settings, last: runs.LastRun | None, mode: str) -> bool:
    if mode != "auto":
        return mode == "full"
    if last is None or not last.full_started:
        return True
    age = datetime.now(UTC) - datetime.fromisoformat(last.full_started)
    return age > timedelta(days=settings.full_every_days)


def _start(run: Run, **changes: Any) -> Run | None:
    """A queued run starts (a redelivered discover finds it running and goes on)."""
    if run.state not in (State.QUEUED, State.RUNNING):
        return None
    return replace(run, state=State.RUNNING, touched=runs.now(), **changes)


def _end(
    state: State, reason: str = "", only: Sequence[State] = (), **changes: Any
) -> Callable[[Run], Run | None]:
    """A transition to a final state, from any state that is not final yet (or ``only``
    from those)."""

    def end(run: Run) -> Run | None:
        if run.state in runs.FINAL or (only and run.state not in only):
            return None
        return replace(run, state=state, reason=reason, finished=runs.now(), **changes)

    return end


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
    cohort: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Start a discovery run of one study: lock it, find the patients, fan out the batches.

    ``mode`` is full (every patient of the cohort), incremental (only those whose record
    changed since the last run) or auto (incremental, full when the last full run is older
    than FHIR_MATCH_FULL_EVERY_DAYS). With a run ``tag``, only patients found through
    resources carrying it are screened, and what is written carries it. ``cohort`` says how
    the cohort is found (config.CohortSetting's fields; default: this worker's settings);
    ``fetch`` bulk makes the search way fetch records by one Bulk Data export. A run whose
    records come from an export is screened here, batch by batch; the others' batches are
    fanned out. The run's id is this task's id.
    """
    run_id = str(self.request.id)
    settings = _settings(base_url)
    store = _redis(settings)
    queue = (self.request.delivery_info or {}).get("routing_key") or settings.queue
    run = runs.load_run(store, run_id) or runs.new_run(
        store, Run(run_id, study_id, State.QUEUED, queued=runs.now(), tag=tag)
    )
    if run.state in runs.FINAL or (run.study_ref and run.fetch != Fetch.FILES):
        # cancelled, or delivered again after its batches were sent: the batches, or the
        # watchdog if they were lost, take it from there (an export run screens again)
        return {"run": run_id, "state": run.state}
    if not runs.acquire_lock(store, run.scope, run_id):
        holder = runs.lock_holder(store, run.scope)
        runs.update_run(
            store, run_id, _end(State.SKIPPED, f"run {holder} of {study_id} is still in progress")
        )
        return {"run": run_id, "state": State.SKIPPED}
    study_ref = ""
    as_of = as_of or date.today().isoformat()
    started = run.started or runs.now()
    begun = runs.update_run(
        store,
        run_id,
        lambda r: _start(
            r,
            mode=mode,
            queue=queue,
            base_url=settings.fhir.base_url,
            as_of=as_of,
            started=started,
        ),
    )
    if begun is None:  # cancelled (or failed) meanwhile: the lock is not ours to keep
        runs.release_lock(store, run.scope, run_id)
        return {"run": run_id, "state": "ended before it started"}
    folder = PROJECT_DIR / "var" / "runs" / run_id
    try:
        setup = study_setup(study_id)
        setting = CohortSetting(**cohort) if cohort else settings.cohort(study_id)
        last = runs.last_run(store, run.scope)
        with FhirClient(settings.fhir) as client, FhirClient(settings.store) as fhir_store:
            source = choose_source(setting, read_allows(client), bulk=fetch == "bulk")
            full = always_full(source) or _full(settings, last, mode)
            since = None
            if not full and last is not None:
                since = (datetime.fromisoformat(last.started) - SINCE_MARGIN).isoformat()
            study_ref = ensure_study(
                fhir_store, setup.study, tag, settings.research_study(study_id)
            )
            found = find(client, setup, source, folder, tag=tag, since=since)
            cohort_requests = client.requests
        local = found.fetch is Fetch.FILES
        size = PATIENTS_PER_BATCH if local else _batch_size(len(found.patients))
        batches = [found.patients[i : i + size] for i in range(0, len(found.patients), size)]
        if full:
            runs.save_cohort(store, run_id, found.patients)
        runs.save_plan(store, run_id, [] if local else batches)
        fanned = runs.update_run(
            store,
            run_id,
            lambda r: _start(
                r,
                source=describe(source),
                fetch=found.fetch,
                full=full,
                since=since,
                full_started=started if full else (last.full_started if last else None),
                study_ref=study_ref,
                cohort=len(found.patients),
                cohort_requests=cohort_requests,
                batches_total=len(batches),
            ),
        )
        if fanned is None:  # cancelled (or failed) meanwhile
            runs.release_lock(store, run.scope, run_id)
            return {"run": run_id, "state": "ended while finding the cohort"}
        if local:
            _screen_files(store, fanned, found)
    except TransientFhirError:
        if self.request.retries < TASK_RETRIES:
            raise  # autoretry: the lock stays with this run meanwhile
        _fail(store, run_id, "the FHIR server stayed unavailable while finding the cohort")
        raise
    except Exception as exc:
        _fail(store, run_id, _error(exc), study_ref)
        raise _sanitised(exc) from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if local:
        return _finish(store, run_id)
    _fan_out(run_id, dict(enumerate(batches)), queue)
    return {
        "run": run_id,
        "state": "running",
        "cohort": len(found.patients),
        "batches": len(batches),
    }


def _fan_out(run_id: str, batches: dict[int, list[str]], queue: str) -> None:
    """Send batches; the batch that finds every planned batch reported finishes the run
    (a chord would finish it when the batches it sent are done: a re-sent few would
    finish it before the others)."""
    if not batches:
        finish_discovery.s([], run_id).apply_async(queue=queue)
    for n, patients in batches.items():
        screen_patients.s(run_id, n, patients).apply_async(queue=queue)


def _sanitised(exc: Exception) -> Exception:
    """What a task raises for Celery to log and store: our errors are PHI-free; anything
    else is replaced by its type, since its message may quote data."""
    return exc if isinstance(exc, FhirMatchError) else FhirMatchError(_error(exc))


def _fail(store: redis.Redis, run_id: str, reason: str, study_ref: str = "") -> None:
    """End a run as failed, with a PHI-free reason, and free its study (also when the run
    had ended meanwhile: a lock this run holds is never left behind). When the study is
    known, its Group says so too (best effort), so readers never take it for the list."""
    run = runs.update_run(store, run_id, _end(State.FAILED, reason))
    if run is None:
        if (current := runs.load_run(store, run_id)) is not None:
            runs.release_lock(store, current.scope, run_id)
        return
    runs.release_lock(store, run.scope, run_id)
    _record_failure(run, study_ref or run.study_ref)


def _record_failure(run: Run, study_ref: str) -> None:
    """The failed run's Group, with the funnel of what it did evaluate."""
    if not study_ref:
        return
    setup = study_setup(run.study)
    info = _run_info(run)
    funnel = runs.run_funnel(run, setup.study) if run.cohort else None
    fhir = _settings(run.base_url or None).store
    # best effort, once: a server that is gone must not hold up the task (the watchdog)
    quick = replace(fhir, max_retries=0, timeout_s=min(fhir.timeout_s, FAILURE_TIMEOUT_S))
    with FhirClient(quick) as client:
        record_failed_run(client, setup, study_ref, info, run.reason, funnel)


@app.task(bind=True, max_retries=TASK_RETRIES)  # type: ignore[untyped-decorator]
def screen_patients(self: Task, run_id: str, batch: int, patients: Sequence[str]) -> dict[str, Any]:
    """Fetch, evaluate and write back one batch. Transient FHIR failures are retried with
    backoff; a batch that still fails is recorded and the run goes on without it."""
    store = _redis(load_settings())
    run = runs.load_run(store, run_id)
    if run is None or run.state is not State.RUNNING:
        return {"batch": batch, "skipped": "the run is not running"}
    runs.mark_started(store, run_id, batch)
    settings = _settings(run.base_url)
    started = time.perf_counter()
    info = _run_info(run)
    try:
        setup = study_setup(run.study)
        engine = _engine(run.study, run.as_of)
        with FhirClient(settings.fhir) as client, FhirClient(settings.store) as fhir_store:
            screened = screen_batch(
                client,
                setup,
                engine,
                Fetch(run.fetch),
                patients,
                run.study_ref,
                info,
                run.since,
                store=fhir_store,
            )
        if run.full and screened.outside:
            runs.leave_cohort(store, run_id, screened.outside)
        report = screened.as_json()
    except TransientFhirError as exc:
        if self.request.retries < TASK_RETRIES:
            raise self.retry(exc=exc, countdown=min(300, 10 * 2**self.request.retries)) from exc
        report = {"patients": len(patients), "failed_batches": 1, "failures": [_error(exc)]}
    except Exception as exc:
        # the message of an exception that is not ours may quote data: its type only
        log.error("batch %s of run %s failed: %s", batch, run_id, _error(exc))
        report = {"patients": len(patients), "failed_batches": 1, "failures": [_error(exc)]}
    report["seconds"] = round(time.perf_counter() - started, 3)
    runs.record_batch(store, run_id, batch, report)
    if not _waiting_for(store, run_id):
        finish_discovery.s([], run_id).apply_async(queue=run.queue or settings.queue)
    return {"batch": batch, "failed": bool(report.get("failed_batches"))}


def _waiting_for(store: redis.Redis, run_id: str) -> set[int]:
    """The planned batches that have not reported."""
    return set(runs.batch_plan(store, run_id)) - runs.recorded_batches(store, run_id)


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


def _screen_files(store: redis.Redis, run: Run, found: Found) -> None:
    """Screen a run's patients from its export files, recording each batch."""
    info = _run_info(run)
    setup = study_setup(run.study)
    engine = _engine(run.study, run.as_of)
    batches = iter(range(len(found.patients) + 2))
    since = time.perf_counter()

    def record(report: BatchReport) -> None:
        nonlocal since
        done = time.perf_counter()
        seconds = {"seconds": round(done - since, 3)}  # reading and evaluating the batch
        runs.record_batch(store, run.id, next(batches), {**report.as_json(), **seconds})
        since = done

    settings = _settings(run.base_url)
    with FhirClient(settings.fhir) as client, FhirClient(settings.store) as fhir_store:
        screen_files(client, setup, engine, found, run.study_ref, info, record, fhir_store)


def _claim(run: Run) -> Run | None:
    """The finish takes the run: of two copies (two last batches', the watchdog's, or a task
    delivered twice), only one unlists and writes the Group."""
    if run.state is not State.RUNNING:
        return None
    return replace(run, state=State.FINISHING, touched=runs.now(), finishes=run.finishes + 1)


def _release(run: Run) -> Run | None:
    """A finish that will be retried gives the run back."""
    if run.state is not State.FINISHING:
        return None
    return replace(run, state=State.RUNNING, touched=runs.now())


def _finish(store: redis.Redis, run_id: str) -> dict[str, Any]:
    if waiting := _waiting_for(store, run_id):
        return {"run": run_id, "waiting_for": len(waiting)}  # the last batch finishes it
    run = runs.update_run(store, run_id, _claim)
    if run is None:
        current = runs.load_run(store, run_id)
        return {"run": run_id, "state": current.state if current else "no such run"}
    cohort = runs.load_cohort(store, run_id) if run.full else None
    if run.full and cohort is None:
        # never an empty cohort for a lost one: that would unlist everyone
        _fail(store, run_id, "its cohort was lost with Redis; the next run lists everyone again")
        return {"run": run_id, "state": State.FAILED}
    info = _run_info(run)
    try:
        setup = study_setup(run.study)
        funnel = runs.run_funnel(run, setup.study)
        with FhirClient(_settings(run.base_url).store) as client:
            report = finish_run(
                client,
                setup,
                run.study_ref,
                info,
                cohort,
                funnel,
                failures=run.batches.failures,
                failed_batches=run.batches.failed_batches,
            )
            finish_requests = client.requests
    except TransientFhirError:
        runs.update_run(store, run_id, _release)  # the task's retry (or the watchdog) finishes
        raise
    except Exception as exc:
        _fail(store, run_id, _error(exc))
        raise _sanitised(exc) from None
    clean = report.state.state == "complete"
    done = runs.update_run(
        store,
        run_id,
        _end(
            _ENDED[report.state.state],
            "; ".join(report.state.reasons),
            finish_requests=finish_requests,
            result=report.as_json(),
            funnel=funnel.as_json(),
        ),
    )
    if done is not None and clean:
        runs.remember_last_run(
            store, run.scope, runs.LastRun(done.id, done.started, done.full_started)
        )
    runs.drop_cohort(store, run_id)
    runs.release_lock(store, run.scope, run_id)
    return {"run": run_id, "state": done.state if done else run.state, **report.as_json()}


FAILURE_TIMEOUT_S = 10.0
"""The longest the failed Group of a run may take to write."""
WORKER_ANSWER_S = 2.0
"""How long the watchdog waits for the workers to say what they hold."""

_ENDED = {"complete": State.DONE, "partial": State.PARTIAL, "failed": State.FAILED}
"""The run's state in Redis for the state its Group records."""


def cancel(store: redis.Redis, run_id: str) -> Run | None:
    """Cancel a run that has not ended and is not finishing: its batches not yet begun do
    nothing, its study is free at once. What its batches wrote stays (it is correct, only
    not complete); a batch already running finishes its writes."""
    run = runs.update_run(
        store,
        run_id,
        _end(State.CANCELLED, "cancelled by an operator", only=(State.QUEUED, State.RUNNING)),
    )
    if run is not None:
        runs.release_lock(store, run.scope, run_id)
    return run


@app.task  # type: ignore[untyped-decorator]
def watch_runs() -> dict[str, list[str]]:
    """The watchdog: take up every run of this Redis with no progress for
    FHIR_MATCH_STALL_SECONDS: send its lost batches again, finish it, or fail it with the
    reason and free its study. Returns what it did, by run id."""
    settings = load_settings()
    store = _redis(settings)
    moment = datetime.now(UTC)
    done: dict[str, list[str]] = {"resent": [], "finished": [], "failed": []}
    stalled = [r for r in _unfinished(store) if _idle_s(r, moment) >= settings.stall_s]
    held = _batches_held() if stalled else set()
    for run in stalled:
        try:
            _watch(store, settings, run, held, moment, done)
        except Exception as exc:  # one run's trouble never stops the watch of the others
            log.error("watching run %s failed: %s", run.id, _error(exc))
    return done


def _watch(
    store: redis.Redis,
    settings: Settings,
    run: Run,
    held: set[tuple[str, int]],
    moment: datetime,
    done: dict[str, list[str]],
) -> None:
    """Decide about one stalled run and carry the decision out."""
    in_redis = runs.load_run(store, run.id) is not None
    queue = run.queue or settings.queue
    seen = watchdog.Seen(
        in_redis=in_redis,
        planned=set(runs.batch_plan(store, run.id)) if in_redis else set(),
        recorded=runs.recorded_batches(store, run.id) if in_redis else set(),
        started=runs.started_batches(store, run.id) if in_redis else {},
        held={batch for run_id, batch in held if run_id == run.id},
        queued=_queued_batches(store, queue, run.id) if in_redis else set(),
        queue_waiting=int(store.llen(queue)),
    )
    action = watchdog.verdict(
        run,
        seen,
        now=moment,
        stall_s=settings.stall_s,
        task_limit_s=settings.task_time_limit_s,
        batch_limit_s=settings.task_time_limit_s * BATCH_SHARE,
    )
    if isinstance(action, watchdog.Resend):
        if _taken_up(store, run, moment, resending=True):
            log.warning("run %s: sending %d lost batches again", run.id, len(action.batches))
            plan = runs.batch_plan(store, run.id)
            _fan_out(run.id, {n: plan[n] for n in action.batches}, queue)
            done["resent"].append(run.id)
    elif isinstance(action, watchdog.Finish):
        if _taken_up(store, run, moment, resending=False):
            finish_discovery.s([], run.id).apply_async(queue=queue)
            done["finished"].append(run.id)
    elif isinstance(action, watchdog.Fail):
        log.warning("run %s failed: %s", run.id, action.reason)
        if in_redis:
            _fail(store, run.id, action.reason)
        else:
            lost = runs.fail_lost(run, action.reason)
            runs.release_lock(store, run.scope, run.id)
            _record_failure(lost, run.study_ref)
        done["failed"].append(run.id)


def _queued_batches(store: redis.Redis, queue: str, run_id: str) -> set[int]:
    """The run's batches whose tasks wait in ``queue`` (Celery's messages in the Redis list:
    the task's name in the headers, its arguments, run id and batch first, in the body).
    A message that cannot be read is no batch of this run."""
    found: set[int] = set()
    for raw in cast(list[bytes], store.lrange(queue, 0, -1)):
        try:
            message = json.loads(raw)
            if message["headers"]["task"] != screen_patients.name:
                continue
            args = json.loads(base64.b64decode(message["body"]))[0]
        except (ValueError, KeyError, TypeError, IndexError):
            continue
        if isinstance(args, list) and len(args) > 1 and args[0] == run_id:
            found.add(int(args[1]))
    return found


def _idle_s(run: Run, moment: datetime) -> float:
    return (moment - datetime.fromisoformat(run.progress_at)).total_seconds()


def _batches_held() -> set[tuple[str, int]]:
    """(run, batch) of every batch task a live worker runs, holds or waits to retry: the
    workers answer for themselves, so a batch no living worker holds is not running."""
    inspect = app.control.inspect(timeout=WORKER_ANSWER_S)
    held: set[tuple[str, int]] = set()
    for answer in (inspect.active(), inspect.reserved(), inspect.scheduled()):
        for tasks in (answer or {}).values():
            for task in tasks:
                request = task.get("request", task)  # scheduled tasks wrap their request
                args = request.get("args")
                if request.get("name") == screen_patients.name and isinstance(args, list):
                    held.add((str(args[0]), int(args[1])))
    return held


def _unfinished(store: redis.Redis) -> list[Run]:
    """Runs of this Redis not ended, in Redis or (lost there) in the journal."""
    mine = runs.redis_identity(store)
    found = {r.id: r for r in runs.journal_runs() if r.state not in runs.FINAL and r.redis == mine}
    for run in runs.list_runs(store, limit=200):
        if run.state not in runs.FINAL:
            found[run.id] = run
        else:
            found.pop(run.id, None)
    return list(found.values())


def _taken_up(store: redis.Redis, run: Run, moment: datetime, *, resending: bool) -> bool:
    """Claim a stalled run for one watchdog action: its progress moves (so the next pass,
    or one beside this one, leaves it for another stall time), lost batches count, and a
    finish whose worker died gives the run back to be finished again."""
    seen = run.progress_at

    def claim(current: Run) -> Run | None:
        if current.state not in (State.RUNNING, State.FINISHING) or current.progress_at != seen:
            return None
        return replace(
            current,
            state=State.RUNNING,
            touched=moment.isoformat(),
            resent=current.resent + resending,
        )

    return runs.update_run(store, run.id, claim) is not None
