"""Run records and the per-study lock: what a run is doing, readable while it runs, and
kept after Redis is gone.

A run is one typed value (:class:`Run`) with one owner, this module: tasks, the watchdog
and the command line read it and change it only through the functions here. It holds
settings, counts, timings and error texts, never patient data: a failure names at most
the reference of the patient it concerns (``Patient/<id>``), for the operator who must
look at that record. Each batch stores
its own report under its number, so a batch that runs twice counts once. Every change is
also written to a journal file per run (``var/history/<run>.json``), so that losing Redis
loses no history and a run it lost is still found (and failed) by the watchdog.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, cast

import redis

from fhir_match.config import PROJECT_DIR
from fhir_match.evaluate.study import Study
from fhir_match.funnel import Funnel

__all__ = [
    "FINAL",
    "HISTORY_DIR",
    "LOCK_TTL_S",
    "RUN_ID",
    "BatchTotals",
    "LastRun",
    "Run",
    "State",
    "acquire_lock",
    "batch_plan",
    "batch_totals",
    "drop_cohort",
    "fail_lost",
    "journal_run",
    "journal_runs",
    "last_run",
    "leave_cohort",
    "list_runs",
    "load_cohort",
    "load_run",
    "lock_holder",
    "mark_started",
    "new_run",
    "now",
    "record_batch",
    "recorded_batches",
    "redis_identity",
    "release_lock",
    "remember_last_run",
    "run_funnel",
    "run_scope",
    "save_cohort",
    "save_plan",
    "started_batches",
    "update_run",
]

PREFIX = "fhir-match"
LOCK_TTL_S = 6 * 3600
"""A run that never finishes and that the watchdog cannot see frees its study after this."""
RUN_TTL_S = 90 * 24 * 3600
HISTORY_DIR = PROJECT_DIR / "var" / "history"
"""One JSON file per run: the durable copy of its record (workers must share it)."""
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
"""What a run id looks like (Celery task ids are uuids): it names the run's journal file."""
_BY_NAME = ("outcomes", "removed")
"""Batch report fields that count by name (outcome, criterion): summed name by name."""

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class State(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    FINISHING = "finishing"
    """One finish task holds it: unlisting, the Group (so a second copy does nothing)."""
    DONE = "done"
    """Every batch evaluated, nothing failed: this run's list is the list."""
    PARTIAL = "partial"
    """Finished, but some batches or patients failed: what it evaluated is written."""
    FAILED = "failed"
    SKIPPED = "skipped"
    """Another run of the study held the lock."""
    CANCELLED = "cancelled"


FINAL = frozenset({State.DONE, State.PARTIAL, State.FAILED, State.SKIPPED, State.CANCELLED})


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class BatchTotals:
    """The batches' reports summed: every batch counts other patients, so counts add."""

    batches_done: int = 0
    patients: int = 0
    requests: int = 0
    unchanged: int = 0
    evaluated: int = 0
    created: int = 0
    updated: int = 0
    unused: int = 0
    """Values read but not used (a unit that cannot be converted)."""
    skipped: int = 0
    """Resources left out, of a shape the rules cannot read."""
    outside: int = 0
    """Patients read one at a time whose own record put them outside the cohort: never in
    the funnel, which starts at the cohort."""
    failed_batches: int = 0
    seconds: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)
    removed: dict[str, int] = field(default_factory=dict)
    failures: tuple[str, ...] = ()
    last_at: str = ""
    """When the latest batch was recorded: the run's progress."""

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "failures": list(self.failures)}


@dataclass(frozen=True)
class Run:
    """One discovery run: what it was asked to do, where it is, and what it did."""

    id: str
    study: str
    state: State
    queued: str
    tag: str = ""
    mode: str = "auto"
    source: str = ""
    """How the cohort is found, in a few words (sources.describe)."""
    fetch: str = "search"
    """How batches fetch their records (sources.Fetch)."""
    queue: str = ""
    """The Celery queue its tasks go to: where the watchdog sends lost batches again."""
    base_url: str = ""
    as_of: str = ""
    full: bool = False
    since: str | None = None
    started: str = ""
    full_started: str | None = None
    finished: str = ""
    study_ref: str = ""
    cohort: int = 0
    cohort_requests: int = 0
    batches_total: int = 0
    finish_requests: int = 0
    resent: int = 0
    """How many times the watchdog sent lost batches again."""
    finishes: int = 0
    """How many times a finish task took the run up."""
    redis: str = ""
    """The Redis the run lives in (host:port/db): a journal shared by two stacks (a test's
    own Redis beside the stack's) tells their runs apart."""
    touched: str = ""
    """The last time the run itself changed (started, batches re-sent): with the batches'
    last report, the run's progress."""
    reason: str = ""
    """Why the run was skipped, failed or cancelled (PHI-free)."""
    result: dict[str, Any] = field(default_factory=dict)
    """What the finish step did (listed, outcomes, left the cohort, the Group)."""
    funnel: dict[str, Any] = field(default_factory=dict)
    batches: BatchTotals = field(default_factory=BatchTotals)

    @property
    def scope(self) -> str:
        return run_scope(self.study, self.tag)

    @property
    def progress_at(self) -> str:
        return max(self.queued, self.started, self.touched, self.batches.last_at)

    @property
    def failures(self) -> tuple[str, ...]:
        return self.batches.failures + tuple(self.result.get("failures") or ())

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "batches": self.batches.as_json()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Run:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        totals = values.pop("batches", None) or {}
        batch_fields = {f.name for f in fields(BatchTotals)}
        known_totals: dict[str, Any] = {k: v for k, v in totals.items() if k in batch_fields}
        known_totals["failures"] = tuple(known_totals.get("failures") or ())
        batches = BatchTotals(**known_totals)
        return cls(**{**values, "state": State(values["state"]), "batches": batches})


def run_scope(study_id: str, tag: str) -> str:
    """What a run locks, and whose last run an incremental run continues: the study, or
    the study's tagged population (test data; tagged runs touch nothing else)."""
    return f"{study_id}:{tag}" if tag else study_id


def _key(run_id: str) -> str:
    return f"{PREFIX}:run:{run_id}"


def _lock(scope: str) -> str:
    return f"{PREFIX}:lock:{scope}"


_INDEX = f"{PREFIX}:runs"
"""Every run's id, scored by when it was queued: the run list, newest first."""


def _stored(run: Run) -> str:
    """The run as Redis keeps it: without its batches' totals, which are summed from the
    batches' own reports whenever the run is read."""
    return json.dumps({k: v for k, v in run.as_json().items() if k != "batches"})


def redis_identity(client: redis.Redis) -> str:
    """host:port/db of the Redis a client talks to (never its password)."""
    kwargs = client.connection_pool.connection_kwargs
    return f"{kwargs.get('host', '')}:{kwargs.get('port', '')}/{kwargs.get('db', 0)}"


def new_run(client: redis.Redis, run: Run) -> Run:
    """Record a new run (queued)."""
    run = replace(run, redis=redis_identity(client))
    client.set(_key(run.id), _stored(run), ex=RUN_TTL_S)
    client.zadd(_INDEX, {run.id: datetime.fromisoformat(run.queued).timestamp()})
    _journal(run)
    return run


def load_run(client: redis.Redis, run_id: str) -> Run | None:
    """The run with its batches' reports summed, or None if Redis has no such run (or
    only a record in the older, hash-shaped format of an earlier version)."""
    try:
        raw = client.get(_key(run_id))
    except redis.ResponseError:
        return None
    if not isinstance(raw, bytes):
        return None
    return _with_batches(client, Run.from_json(json.loads(raw)))


def _with_batches(client: redis.Redis | redis.client.Pipeline, run: Run) -> Run:
    reports = cast(dict[bytes, bytes], client.hgetall(f"{_key(run.id)}:batches"))
    return replace(run, batches=batch_totals(json.loads(v) for v in reports.values()))


def update_run(client: redis.Redis, run_id: str, change: Callable[[Run], Run | None]) -> Run | None:
    """Change a run atomically: ``change`` sees the run as stored (its batches summed) and
    returns the new one, or None to leave it (a transition that no longer applies).
    Returns what was stored, or None when nothing was (no such run, or ``change``
    declined). A batch reported meanwhile makes it look again."""
    key = _key(run_id)
    with client.pipeline() as pipe:
        while True:
            try:
                pipe.watch(key, f"{key}:batches")  # type: ignore[no-untyped-call]
                raw = pipe.get(key)
                if not isinstance(raw, bytes):
                    pipe.unwatch()
                    return None
                changed = change(_with_batches(pipe, Run.from_json(json.loads(raw))))
                if changed is None:
                    pipe.unwatch()
                    return None
                pipe.multi()
                pipe.set(key, _stored(changed), ex=RUN_TTL_S)
                pipe.execute()
                break
            except redis.WatchError:
                continue  # changed meanwhile: look again
    _journal(changed)
    return changed


def record_batch(client: redis.Redis, run_id: str, batch: int, report: dict[str, Any]) -> None:
    """A batch's report, under its number: a batch run twice counts once, and a failed
    copy (one sent again that met a fault) never replaces a report that succeeded."""
    key = f"{_key(run_id)}:batches"
    if report.get("failed_batches"):
        client.hsetnx(key, str(batch), json.dumps({**report, "at": now()}))
    else:
        client.hset(key, str(batch), json.dumps({**report, "at": now()}))
    client.expire(key, RUN_TTL_S)


def mark_started(client: redis.Redis, run_id: str, batch: int) -> None:
    """A batch task began (or began again): the watchdog leaves it alone until it could
    no longer be running (its time limit)."""
    key = f"{_key(run_id)}:started"
    client.hset(key, str(batch), now())
    client.expire(key, RUN_TTL_S)


def started_batches(client: redis.Redis, run_id: str) -> dict[int, str]:
    marks = cast(dict[bytes, bytes], client.hgetall(f"{_key(run_id)}:started"))
    return {int(n): t.decode() for n, t in marks.items()}


_KEPT = ""
"""A member every saved cohort has, so that an empty cohort is told from a lost one."""


def save_cohort(client: redis.Redis, run_id: str, patients: Sequence[str]) -> None:
    """A full run's cohort: whom the finish keeps listed (the others left it)."""
    key = f"{_key(run_id)}:cohort"
    client.delete(key)
    client.sadd(key, _KEPT, *patients)
    client.expire(key, RUN_TTL_S)


def leave_cohort(client: redis.Redis, run_id: str, patients: Sequence[str]) -> None:
    """Patients a batch found outside the cohort (their own record says so): unlisted."""
    client.srem(f"{_key(run_id)}:cohort", *patients)


def load_cohort(client: redis.Redis, run_id: str) -> set[str] | None:
    """A full run's cohort, or None when Redis lost it."""
    members = cast(set[bytes], client.smembers(f"{_key(run_id)}:cohort"))
    return {m.decode() for m in members} - {_KEPT} if members else None


def drop_cohort(client: redis.Redis, run_id: str) -> None:
    client.delete(f"{_key(run_id)}:cohort")


def save_plan(client: redis.Redis, run_id: str, batches: Sequence[Sequence[str]]) -> None:
    """The patients of each batch (ids only), so that lost batches can be sent again."""
    key = f"{_key(run_id)}:plan"
    client.delete(key)
    if batches:
        client.hset(key, mapping={str(n): json.dumps(list(b)) for n, b in enumerate(batches)})
        client.expire(key, RUN_TTL_S)


def batch_plan(client: redis.Redis, run_id: str) -> dict[int, list[str]]:
    plan = cast(dict[bytes, bytes], client.hgetall(f"{_key(run_id)}:plan"))
    return {int(n): json.loads(p) for n, p in plan.items()}


def recorded_batches(client: redis.Redis, run_id: str) -> set[int]:
    return {int(n) for n in cast(list[bytes], client.hkeys(f"{_key(run_id)}:batches"))}


def batch_totals(reports: Iterable[dict[str, Any]]) -> BatchTotals:
    """The batches' reports summed."""
    numbers: dict[str, float] = {}
    named: dict[str, dict[str, int]] = {n: {} for n in _BY_NAME}
    failures: list[str] = []
    done = 0
    last = ""
    for report in reports:
        done += 1
        last = max(last, str(report.get("at") or ""))
        for name, value in report.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                numbers[name] = round(numbers.get(name, 0) + value, 3)
        for name in _BY_NAME:
            for key, count in (report.get(name) or {}).items():
                named[name][key] = named[name].get(key, 0) + count
        failures += report.get("failures") or []
    known = {f.name for f in fields(BatchTotals)} - {"seconds"}
    counts = {k: int(v) for k, v in numbers.items() if k in known}
    return BatchTotals(
        batches_done=done,
        seconds=numbers.get("seconds", 0.0),
        outcomes=named["outcomes"],
        removed=named["removed"],
        failures=tuple(failures),
        last_at=last,
        **{k: v for k, v in counts.items() if k != "batches_done"},
    )


def run_funnel(run: Run, study: Study) -> Funnel:
    """A run's funnel from its record (batches summed). Its patients are the cohort (less
    those a registry named whose own record put them outside it); in an incremental run
    only those whose record changed (the others were not re-evaluated).
    Those the run did not evaluate (no longer on the server, a failed batch, an engine
    failure) are counted as not evaluated."""
    batches = run.batches
    found = run.cohort - batches.outside - (0 if run.full else batches.unchanged)
    return Funnel.of(
        study,
        batches.removed,
        batches.outcomes,
        not_evaluated=found - batches.evaluated,
        scope="full" if run.full else "incremental",
    )


def list_runs(client: redis.Redis, limit: int = 20) -> list[Run]:
    """The newest runs of this Redis, from Redis and from the journal (which keeps what
    Redis lost)."""
    ids = [i.decode() for i in cast(list[bytes], client.zrevrange(_INDEX, 0, limit - 1))]
    found = {run.id: run for run in (load_run(client, i) for i in ids) if run is not None}
    mine = redis_identity(client)
    for run in journal_runs():
        if run.redis == mine:
            found.setdefault(run.id, run)
    return sorted(found.values(), key=lambda r: r.queued, reverse=True)[:limit]


def _journal(run: Run) -> None:
    """Write the run's durable copy (atomically: a reader never sees half a file)."""
    HISTORY_DIR.mkdir(parents=True, exist_ok=True)
    path = HISTORY_DIR / f"{run.id}.json"
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(json.dumps(run.as_json(), indent=1), encoding="utf-8")
    partial.replace(path)


def journal_runs(folder: Path | None = None) -> Iterator[Run]:
    """Every run in the journal; a file that cannot be read is passed over (it is ours,
    written atomically, so only a disk fault makes one)."""
    for path in sorted((folder or HISTORY_DIR).glob("*.json")):
        try:
            yield Run.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError, KeyError):
            continue


def fail_lost(run: Run, reason: str) -> Run:
    """End, in the journal, a run that Redis no longer holds."""
    failed = replace(run, state=State.FAILED, reason=reason, finished=now())
    _journal(failed)
    return failed


def journal_run(run_id: str) -> Run | None:
    """A run from the journal; None for no such run, or for an id that is not a run id
    (a path in disguise)."""
    if not RUN_ID.fullmatch(run_id):
        return None
    path = HISTORY_DIR / f"{run_id}.json"
    try:
        return Run.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def acquire_lock(client: redis.Redis, scope: str, run_id: str) -> bool:
    """Take the lock of a study (or of its tagged population) for a run; True also when
    this run already holds it (a task delivered twice must not lock itself out)."""
    if client.set(_lock(scope), run_id, nx=True, ex=LOCK_TTL_S):
        return True
    return lock_holder(client, scope) == run_id


def lock_holder(client: redis.Redis, scope: str) -> str | None:
    holder = client.get(_lock(scope))
    return holder.decode() if isinstance(holder, bytes) else None


def release_lock(client: redis.Redis, scope: str, run_id: str) -> None:
    """Release the lock if this run holds it (never another run's)."""
    client.eval(_RELEASE, 1, _lock(scope), run_id)


@dataclass(frozen=True)
class LastRun:
    """Where the next incremental run of a scope starts: its last complete run."""

    run: str
    started: str
    full_started: str | None


def remember_last_run(client: redis.Redis, scope: str, last: LastRun) -> None:
    """Record a run that completed without failures: the next incremental run starts there."""
    client.set(f"{PREFIX}:last:{scope}", json.dumps(asdict(last)))


def last_run(client: redis.Redis, scope: str) -> LastRun | None:
    """The last complete run of a scope; from the journal when Redis lost it."""
    raw = client.get(f"{PREFIX}:last:{scope}")
    if isinstance(raw, bytes):
        return LastRun(**json.loads(raw))
    mine = redis_identity(client)
    complete = [
        r for r in journal_runs() if r.scope == scope and r.state is State.DONE and r.redis == mine
    ]
    if not complete:
        return None
    latest = max(complete, key=lambda r: r.started)
    return LastRun(latest.id, latest.started, latest.full_started)
