"""The run record's transitions against the real Redis: one finish, cancel and fail never
crossing, reports that keep their best, and the lock always freed."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace

import pytest
import redis

from worker import runs, tasks
from worker.runs import Run, State


@pytest.fixture
def run(redis_client: redis.Redis) -> Iterator[Run]:
    created = runs.new_run(
        redis_client,
        Run(
            str(uuid.uuid4()),
            "kn5501",
            State.QUEUED,
            queued=runs.now(),
            tag=f"test-store-{uuid.uuid4().hex[:8]}",
        ),
    )
    yield created
    runs.release_lock(redis_client, created.scope, created.id)


def _running(store: redis.Redis, run: Run) -> Run:
    assert runs.acquire_lock(store, run.scope, run.id)
    moved = runs.update_run(store, run.id, lambda r: replace(r, state=State.RUNNING))
    assert moved is not None
    return moved


def test_only_one_finish_takes_a_run(redis_client: redis.Redis, run: Run) -> None:
    _running(redis_client, run)
    first = runs.update_run(redis_client, run.id, tasks._claim)
    second = runs.update_run(redis_client, run.id, tasks._claim)
    assert first is not None
    assert first.state is State.FINISHING
    assert first.finishes == 1
    assert second is None  # the other copy does nothing


def test_a_finishing_run_cannot_be_cancelled(redis_client: redis.Redis, run: Run) -> None:
    _running(redis_client, run)
    runs.update_run(redis_client, run.id, tasks._claim)
    assert tasks.cancel(redis_client, run.id) is None
    assert runs.lock_holder(redis_client, run.scope) == run.id


def test_cancel_ends_a_running_run_and_frees_its_study(redis_client: redis.Redis, run: Run) -> None:
    _running(redis_client, run)
    cancelled = tasks.cancel(redis_client, run.id)
    assert cancelled is not None
    assert cancelled.state is State.CANCELLED
    assert runs.lock_holder(redis_client, run.scope) is None
    assert tasks.cancel(redis_client, run.id) is None  # ended once
    journal = runs.journal_run(run.id)
    assert journal is not None
    assert journal.state is State.CANCELLED  # the durable copy follows


def test_failing_an_ended_run_still_frees_a_lock_it_holds(
    redis_client: redis.Redis, run: Run
) -> None:
    _running(redis_client, run)
    runs.update_run(redis_client, run.id, lambda r: replace(r, state=State.DONE))
    tasks._fail(redis_client, run.id, "late failure")
    ended = runs.load_run(redis_client, run.id)
    assert ended is not None
    assert ended.state is State.DONE  # never rewritten
    assert runs.lock_holder(redis_client, run.scope) is None


def test_a_failed_copy_of_a_batch_never_replaces_its_good_report(
    redis_client: redis.Redis, run: Run
) -> None:
    runs.record_batch(redis_client, run.id, 0, {"patients": 5, "evaluated": 5})
    runs.record_batch(
        redis_client, run.id, 0, {"patients": 5, "failed_batches": 1, "failures": ["503"]}
    )
    runs.record_batch(redis_client, run.id, 1, {"patients": 3, "failed_batches": 1})
    runs.record_batch(redis_client, run.id, 1, {"patients": 3, "evaluated": 3})
    loaded = runs.load_run(redis_client, run.id)
    assert loaded is not None
    assert (loaded.batches.evaluated, loaded.batches.failed_batches) == (8, 0)
    assert runs.recorded_batches(redis_client, run.id) == {0, 1}


def test_a_change_sees_the_batches_reported_so_far(redis_client: redis.Redis, run: Run) -> None:
    runs.record_batch(redis_client, run.id, 0, {"patients": 2, "evaluated": 2})
    seen: list[int] = []

    def look(current: Run) -> Run | None:
        seen.append(current.batches.evaluated)
        return None

    assert runs.update_run(redis_client, run.id, look) is None
    assert seen == [2]
