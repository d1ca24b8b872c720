"""What the watchdog does about a run that stopped moving: a pure decision per run.

A worker killed mid-run (an OOM kill, a lost node, a careless deploy) takes its batches
with it, and Celery's Redis transport hands them back only after the visibility timeout;
a Redis that lost its state loses the finish the last batch sent. Beat sends
the watchdog every minute; for each unfinished run with no progress for the stall time
it decides one of the actions below, and worker/tasks.py carries it out. Every task is
idempotent, so a batch sent again whose lost copy comes back late changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass
from datetime import datetime

from worker.runs import FINAL, Run, State

__all__ = ["MAX_FINISHES", "MAX_RESENDS", "Fail", "Finish", "Resend", "Seen", "verdict"]

MAX_RESENDS = 3
"""Lost batches are sent again this many times; a run still stuck after that has a batch
that kills its worker every time, and is failed."""
MAX_FINISHES = 3
"""A finish that keeps failing (the server refuses the Group, say) is tried this often."""


@dataclass(frozen=True)
class Finish:
    """Every batch reported, but the run never finished (its finish task was lost), or the
    finish task died."""


@dataclass(frozen=True)
class Resend:
    batches: tuple[int, ...]


@dataclass(frozen=True)
class Fail:
    reason: str


Action = Finish | Resend | Fail | None


@dataclass(frozen=True)
class Seen:
    """What the watchdog knows of a run besides its record."""

    in_redis: bool
    """False for a run only the journal knows: Redis lost it."""
    planned: Set[int]
    """The batches the run fanned out."""
    recorded: Set[int]
    """Those that reported."""
    started: Mapping[int, str]
    """When each batch task last began."""
    held: Set[int]
    """Batches a live worker runs, holds or waits to retry, by the workers' own answer."""
    queued: Set[int]
    """This run's batches whose tasks wait in its queue (read from the queue itself: other
    tasks waiting there, such as the watchdog's own, say nothing about a batch)."""
    queue_waiting: int
    """Tasks waiting in the run's queue: while there are, a run's first task may be queued."""


def _seconds_since(instant: str, now: datetime) -> float:
    return (now - datetime.fromisoformat(instant)).total_seconds() if instant else float("inf")


def verdict(
    run: Run,
    seen: Seen,
    *,
    now: datetime,
    stall_s: float,
    task_limit_s: float,
    batch_limit_s: float,
) -> Action:
    """What to do about ``run`` (None: leave it).

    A batch is lost when no live worker holds it and its task is not waiting in the queue
    (its worker died under it, or its task died with a worker that had taken it, or with
    Redis); and, whatever the workers say, when it began
    longer ago than a batch may run, or a worker has held it unbegun for longer than that
    with nothing done meanwhile (a worker that lost its broker keeps such a task and never
    runs it). Batches waiting in the queue, or still running, are left alone however long
    the run takes.
    """
    idle = _seconds_since(run.progress_at, now)
    if run.state in FINAL:
        return None
    if not seen.in_redis:
        if idle < stall_s:
            return None
        return Fail("its state was lost with Redis; the next run evaluates everyone again")
    if run.state is State.QUEUED:
        if idle > stall_s and seen.queue_waiting == 0:
            return Fail("its task was lost before it started; the next run takes over")
        return None
    if run.state is State.FINISHING:
        # the finish task cannot outlive its time limit: past it, its worker died
        return _finish_again(run) if idle > task_limit_s + stall_s else None
    if not run.study_ref or run.fetch == "files":
        # still finding the cohort (or screening an export's files) inside the discover task
        if idle > task_limit_s + stall_s:
            return Fail("its worker stopped before the run's batches were done")
        return None
    if idle < stall_s:
        return None
    missing = sorted(seen.planned - seen.recorded)
    if not missing:
        return _finish_again(run)
    lost = tuple(
        n
        for n in missing
        if (n in seen.started and _seconds_since(seen.started[n], now) > batch_limit_s)
        or (n not in seen.held and n not in seen.queued)
        or (n in seen.held and n not in seen.started and idle > batch_limit_s)
    )
    if not lost:
        return None
    if run.resent >= MAX_RESENDS:
        return Fail(f"{len(lost)} batches were lost {run.resent + 1} times")
    return Resend(lost)


def _finish_again(run: Run) -> Action:
    if run.finishes >= MAX_FINISHES:
        return Fail(f"its finish failed {run.finishes} times")
    return Finish()
