"""What the watchdog does about a run that stopped moving: a pure decision per run.

A worker killed mid-run (an OOM kill, a lost node, a careless deploy) takes its batches
with it, and Celery's Redis transport hands them back only after the visibility timeout;
a Redis that lost its state loses the chord that would have finished the run. Beat sends
the watchdog every minute; for each unfinished run with no progress for the stall time
it decides one of the actions below, and worker/tasks.py carries it out. Every task is
idempotent, so a batch sent again whose lost copy comes back late changes nothing.
"""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass
from datetime import datetime

from worker.runs import FINAL, Run, State

__all__ = ["MAX_RESENDS", "Fail", "Finish", "Resend", "verdict"]

MAX_RESENDS = 3
"""Lost batches are sent again this many times; a run still stuck after that has a batch
that kills its worker every time, and is failed."""


@dataclass(frozen=True)
class Finish:
    """Every batch reported, but the run never finished (its chord was lost)."""


@dataclass(frozen=True)
class Resend:
    batches: tuple[int, ...]


@dataclass(frozen=True)
class Fail:
    reason: str


Action = Finish | Resend | Fail | None


def _seconds_since(instant: str, now: datetime) -> float:
    return (now - datetime.fromisoformat(instant)).total_seconds() if instant else float("inf")


def verdict(
    run: Run,
    *,
    in_redis: bool,
    planned: Set[int],
    recorded: Set[int],
    now: datetime,
    stall_s: float,
    task_time_limit_s: float,
) -> Action:
    """What to do about ``run`` (None: leave it).

    ``in_redis`` is False for a run only the journal knows: Redis lost it. ``planned``
    and ``recorded`` are the batch numbers the run fanned out and those that reported.
    """
    if run.state in FINAL:
        return None
    if not in_redis:
        return Fail("its state was lost with Redis; the next run evaluates everyone again")
    if run.state is State.QUEUED:
        return None  # not started: the broker still holds its task, or workers are away
    if not run.study_ref or run.fetch == "bulk":
        # still finding the cohort (or screening a bulk export) inside the discover task,
        # which cannot outlive its time limit
        if _seconds_since(run.started, now) > task_time_limit_s + stall_s:
            return Fail("its worker stopped before the run's batches were sent")
        return None
    if _seconds_since(run.progress_at, now) < stall_s:
        return None
    missing = tuple(sorted(planned - recorded))
    if not missing:
        return Finish()
    if run.resent >= MAX_RESENDS:
        return Fail(f"{len(missing)} batches were lost {run.resent + 1} times")
    return Resend(missing)
