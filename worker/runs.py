"""Run records and the per-study lock, in Redis: what a run is doing, readable while it runs.

A run record holds settings, counts, timings and error texts, never patient data. Each
batch stores its own report under its number, so a batch that runs twice counts once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, cast

import redis

from fhir_match.evaluate.study import Study
from fhir_match.funnel import Funnel

__all__ = [
    "LOCK_TTL_S",
    "acquire_lock",
    "batch_totals",
    "last_run",
    "load_run",
    "lock_holder",
    "record_batch",
    "release_lock",
    "remember_last_run",
    "run_funnel",
    "save_run",
]

PREFIX = "fhir-match"
LOCK_TTL_S = 6 * 3600
"""A run that never finishes (its worker killed) frees its study after this long."""
RUN_TTL_S = 90 * 24 * 3600
_BY_NAME = ("outcomes", "removed")
"""Batch report fields that count by name (outcome, criterion): summed name by name."""

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


def _lock(scope: str) -> str:
    return f"{PREFIX}:lock:{scope}"


def _run(run_id: str) -> str:
    return f"{PREFIX}:run:{run_id}"


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


def save_run(client: redis.Redis, run_id: str, **fields: Any) -> None:
    """Set fields of the run record (JSON values)."""
    key = _run(run_id)
    client.hset(key, mapping={name: json.dumps(value) for name, value in fields.items()})
    client.expire(key, RUN_TTL_S)


def record_batch(client: redis.Redis, run_id: str, batch: int, report: dict[str, Any]) -> None:
    key = f"{_run(run_id)}:batches"
    client.hset(key, str(batch), json.dumps(report))
    client.expire(key, RUN_TTL_S)


def load_run(client: redis.Redis, run_id: str) -> dict[str, Any] | None:
    """The run record with its batches' reports summed, or None if there is no such run."""
    raw = cast(dict[bytes, bytes], client.hgetall(_run(run_id)))
    if not raw:
        return None
    run = {k.decode(): json.loads(v) for k, v in raw.items()}
    batches = cast(dict[bytes, bytes], client.hgetall(f"{_run(run_id)}:batches"))
    run["batches"] = batch_totals(json.loads(v) for v in batches.values())
    return run


def batch_totals(reports: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The batches' reports summed: every batch counts other patients, so counts add."""
    totals: dict[str, Any] = {"batches_done": 0, "failures": [], **{n: {} for n in _BY_NAME}}
    for report in reports:
        totals["batches_done"] += 1
        for name, value in report.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                totals[name] = round(totals.get(name, 0) + value, 3)
        for name in _BY_NAME:
            for key, count in (report.get(name) or {}).items():
                totals[name][key] = totals[name].get(key, 0) + count
        totals["failures"] += report.get("failures") or []
    return totals


def run_funnel(run: dict[str, Any], study: Study) -> Funnel:
    """A run's funnel from its record (batches summed). Its patients are the cohort; in an
    incremental run only those whose record changed (the others were not re-evaluated).
    Those the run did not evaluate (no longer on the server, a failed batch, an engine
    failure) are counted as not evaluated."""
    batches = run["batches"]
    found = run["cohort"] - (0 if run["full"] else batches.get("unchanged", 0))
    return Funnel.of(
        study,
        batches["removed"],
        batches["outcomes"],
        not_evaluated=found - batches.get("evaluated", 0),
        scope="full" if run["full"] else "incremental",
    )


def remember_last_run(client: redis.Redis, scope: str, run: dict[str, Any]) -> None:
    """Record a run that completed without failures: the next incremental run starts there."""
    client.set(f"{PREFIX}:last:{scope}", json.dumps(run))


def last_run(client: redis.Redis, scope: str) -> dict[str, Any] | None:
    raw = client.get(f"{PREFIX}:last:{scope}")
    return json.loads(raw) if isinstance(raw, bytes) else None
