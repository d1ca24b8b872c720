"""The run record as a typed value, the watchdog's decision, and how runs read to an operator."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from worker import watchdog
from worker.report import run_details, run_table, stalled
from worker.runs import RUN_ID, BatchTotals, Run, State, batch_totals, journal_run

NOW = datetime(2026, 12, 7, 22, 0, tzinfo=UTC)
STALL_S = 600.0
LIMIT_S = 1800.0


def _at(minutes_ago: float) -> str:
    return (NOW - timedelta(minutes=minutes_ago)).isoformat()


def _running(progress_minutes_ago: float, **changes: object) -> Run:
    run = Run(
        "run-1",
        "kn5501",
        State.RUNNING,
        queued=_at(60),
        started=_at(60),
        study_ref="ResearchStudy/1",
        cohort=400,
        batches_total=4,
        full=True,
        batches=BatchTotals(batches_done=2, last_at=_at(progress_minutes_ago)),
    )
    return replace(run, **changes)  # type: ignore[arg-type]


def _verdict(
    run: Run,
    recorded: set[int],
    in_redis: bool = True,
    *,
    started: dict[int, str] | None = None,
    held: set[int] | None = None,
    queued: set[int] | None = None,
    queue_waiting: int = 0,
) -> watchdog.Action:
    seen = watchdog.Seen(
        in_redis=in_redis,
        planned={0, 1, 2, 3},
        recorded=recorded,
        started=started if started is not None else {n: _at(5) for n in range(4)},
        held=held or set(),
        queued=queued or set(),
        queue_waiting=queue_waiting,
    )
    return watchdog.verdict(
        run, seen, now=NOW, stall_s=STALL_S, task_limit_s=LIMIT_S, batch_limit_s=LIMIT_S / 3
    )


def test_a_moving_run_is_left_alone() -> None:
    assert _verdict(_running(progress_minutes_ago=2), {0, 1}) is None


def test_a_stalled_run_gets_the_batches_no_live_worker_holds_sent_again() -> None:
    assert _verdict(_running(progress_minutes_ago=11), {0, 1}) == watchdog.Resend((2, 3))
    assert _verdict(_running(11), {0, 1}, held={2}) == watchdog.Resend((3,))


def test_a_batch_a_worker_still_runs_or_that_waits_in_the_queue_is_not_lost() -> None:
    assert _verdict(_running(11), {0, 1}, held={2, 3}) is None
    waiting = _verdict(_running(11), {0, 1}, started={}, queued={2, 3}, queue_waiting=5)
    assert waiting is None  # queued behind other work, however long that takes


def test_other_tasks_in_the_queue_do_not_hide_a_lost_batch() -> None:
    """The watchdog's own tasks wait in the run's queue too: a batch a killed worker had
    taken is in neither the queue nor any live worker's hands."""
    lost = _verdict(_running(11), {0, 1}, started={}, queued={3}, queue_waiting=5)
    assert lost == watchdog.Resend((2,))


def test_a_batch_older_than_its_time_limit_is_lost_whatever_the_workers_say() -> None:
    started = {2: _at(11), 3: _at(1)}
    assert _verdict(_running(11), {0, 1}, started=started, held={2, 3}) == watchdog.Resend((2,))


def test_a_batch_a_worker_holds_unbegun_past_a_batch_time_limit_is_lost() -> None:
    started = {2: _at(5)}
    assert _verdict(_running(5), {0, 1}, started=started, held={2, 3}) is None
    late = _verdict(_running(11), {0, 1}, started=started, held={2, 3})
    assert late == watchdog.Resend((3,))  # 2 runs still (begun within its limit)


def test_a_batch_never_begun_is_lost_only_when_nothing_waits_in_the_queue() -> None:
    assert _verdict(_running(11), {0, 1}, started={}) == watchdog.Resend((2, 3))


def test_a_stalled_run_whose_batches_all_reported_is_finished() -> None:
    assert _verdict(_running(progress_minutes_ago=11), {0, 1, 2, 3}) == watchdog.Finish()


def test_batches_sent_again_move_the_run_so_they_are_not_sent_twice_at_once() -> None:
    run = _running(progress_minutes_ago=11, touched=_at(1), resent=1)
    assert _verdict(run, {0, 1}) is None


def test_a_run_whose_batches_keep_getting_lost_fails_with_the_reason() -> None:
    run = _running(progress_minutes_ago=11, resent=watchdog.MAX_RESENDS)
    action = _verdict(run, {0, 1})
    assert isinstance(action, watchdog.Fail)
    assert "2 batches were lost" in action.reason


def test_a_run_redis_lost_fails_with_the_reason_once_it_stalled() -> None:
    assert _verdict(_running(progress_minutes_ago=1), {0, 1}, in_redis=False) is None
    action = _verdict(_running(progress_minutes_ago=11), {0, 1}, in_redis=False)
    assert isinstance(action, watchdog.Fail)
    assert "lost with Redis" in action.reason


def test_a_run_still_finding_its_cohort_fails_only_after_its_task_could_have_ended() -> None:
    finding = replace(_running(20), study_ref="", batches_total=0, started=_at(20))
    assert _verdict(finding, set()) is None  # the discover task may still run
    dead = replace(_running(45), study_ref="", batches_total=0, started=_at(45))
    action = _verdict(dead, set())
    assert isinstance(action, watchdog.Fail)
    assert "before the run's batches were done" in action.reason


def test_a_finish_whose_worker_died_is_finished_again_and_a_failing_one_fails() -> None:
    finishing = _running(45, state=State.FINISHING, touched=_at(45), finishes=1)
    assert _verdict(finishing, {0, 1, 2, 3}) == watchdog.Finish()
    assert _verdict(replace(finishing, touched=_at(5)), {0, 1, 2, 3}) is None
    worn = replace(finishing, finishes=watchdog.MAX_FINISHES)
    action = _verdict(worn, {0, 1, 2, 3})
    assert isinstance(action, watchdog.Fail)
    assert "finish failed" in action.reason


def test_a_queued_run_whose_task_was_lost_fails_but_one_waiting_its_turn_does_not() -> None:
    queued = _running(0, state=State.QUEUED, queued=_at(30), started="", touched="")
    queued = replace(queued, batches=BatchTotals())
    assert _verdict(queued, set(), queue_waiting=3) is None
    action = _verdict(queued, set())
    assert isinstance(action, watchdog.Fail)
    assert "lost before it started" in action.reason


@pytest.mark.parametrize("state", [State.DONE, State.FAILED, State.CANCELLED, State.SKIPPED])
def test_ended_runs_are_left_alone(state: State) -> None:
    assert _verdict(_running(progress_minutes_ago=30, state=state), {0}) is None


def test_a_run_round_trips_through_json() -> None:
    run = _running(3, reason="x", funnel={"found": 4}, result={"failures": ["f"]})
    run = replace(run, batches=replace(run.batches, failures=("a batch failed",)))
    assert Run.from_json(run.as_json()) == run
    assert run.failures == ("a batch failed", "f")


def test_batch_reports_sum_by_name_and_keep_the_latest_report_time() -> None:
    totals = batch_totals(
        [
            {"patients": 10, "evaluated": 9, "outcomes": {"candidate": 2}, "at": _at(5)},
            {"patients": 5, "failed_batches": 1, "failures": ["timed out"], "at": _at(1)},
            {"patients": 3, "seconds": 1.25, "outcomes": {"candidate": 1, "ineligible": 2}},
        ]
    )
    assert (totals.batches_done, totals.patients, totals.evaluated) == (3, 18, 9)
    assert totals.outcomes == {"candidate": 3, "ineligible": 2}
    assert (totals.failed_batches, totals.failures, totals.seconds) == (1, ("timed out",), 1.25)
    assert totals.last_at == _at(1)


def test_the_operators_views_show_state_progress_and_failures() -> None:
    run = _running(11, tag="demo", reason="")
    failed = replace(
        run,
        id="run-2",
        state=State.FAILED,
        reason="its state was lost with Redis; the next run evaluates everyone again",
        finished=_at(0),
        batches=replace(run.batches, failures=("batch 3: the FHIR server answered 500",)),
    )
    table = run_table([run, failed], NOW).splitlines()
    assert table[0].split() == [
        "run", "study", "mode", "state", "started", "took", "batches", "failures",
    ]  # fmt: skip
    assert table[1].split()[2:8] == ["[demo]", "full", "running", _at(60), "1:00:00", "2/4"]
    details = run_details(failed, NOW)
    assert "state     failed: its state was lost with Redis" in details
    assert "batch 3: the FHIR server answered 500" in details
    assert [r.id for r in stalled([run, failed], NOW, STALL_S)] == ["run-1"]


@pytest.mark.parametrize("name", ["../../etc/passwd", "a/b", "", ".hidden", "x" * 65])
def test_a_name_that_is_not_a_run_id_never_reaches_the_journal(name: str) -> None:
    assert journal_run(name) is None


def test_a_celery_task_id_is_a_run_id() -> None:
    assert RUN_ID.fullmatch("0f8fad5b-d9cb-469f-a165-70867728950e")
