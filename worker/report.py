"""Runs as an operator reads them: one line per run, a run's details, the stalled ones.

Pure functions of :class:`worker.runs.Run`: ``fhir-match runs`` and ``fhir-match status``
print them. Nothing here names a patient: a run holds counts and PHI-free texts only.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from worker.runs import FINAL, Run

__all__ = ["progress_bar", "run_details", "run_line", "run_table", "stalled"]

BAR_WIDTH = 30


def _duration(run: Run, now: datetime) -> str:
    if not run.started:
        return "-"
    end = datetime.fromisoformat(run.finished) if run.finished else now
    seconds = int((end - datetime.fromisoformat(run.started)).total_seconds())
    return f"{seconds // 3600}:{seconds // 60 % 60:02}:{seconds % 60:02}"


def _progress(run: Run) -> str:
    return f"{run.batches.batches_done}/{run.batches_total}" if run.study_ref else "-"


def run_line(run: Run, now: datetime) -> list[str]:
    mode = "full" if run.full else run.mode
    return [
        run.id,
        run.study + (f" [{run.tag}]" if run.tag else ""),
        mode,
        run.state,
        run.started or run.queued,
        _duration(run, now),
        _progress(run),
        str(len(run.failures)),
    ]


def run_table(runs: Iterable[Run], now: datetime) -> str:
    """Recent runs, one line each, in aligned columns."""
    head = ["run", "study", "mode", "state", "started", "took", "batches", "failures"]
    rows = [head, *(run_line(run, now) for run in runs)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


_FETCHED = {
    "search": "by searches naming many patients",
    "patient": "one patient per request",
    "files": "from the export's files",
}


def run_details(run: Run, now: datetime) -> str:
    """One run: what it was asked, its counts, its funnel, its failures, its timings."""
    b = run.batches
    lines = [
        f"run       {run.id}",
        f"study     {run.study}" + (f" (tag {run.tag})" if run.tag else ""),
        f"state     {run.state}" + (f": {run.reason}" if run.reason else ""),
        f"mode      {'full' if run.full else 'incremental'}, "
        f"as of {run.as_of or '-'}" + (f", changed since {run.since}" if run.since else ""),
        f"cohort by {run.source or '-'}; records fetched {_FETCHED.get(run.fetch, run.fetch)}",
        f"server    {run.base_url or '-'}",
        f"queued    {run.queued}",
        f"started   {run.started or '-'}",
        f"finished  {run.finished or '-'} (took {_duration(run, now)})",
        f"cohort    {run.cohort} patients, {run.batches_total} batches, "
        f"{b.batches_done} done ({b.failed_batches} failed)"
        + (f", lost batches sent again {run.resent} times" if run.resent else ""),
        f"patients  {b.evaluated} evaluated, {b.unchanged} unchanged, "
        f"outcomes {_counts(b.outcomes)}",
        f"records   {b.skipped} resources left out (a shape the rules cannot read), "
        f"{b.unused} values not used (e.g. a unit that cannot be converted)",
        f"written   {b.created} subjects created, {b.updated} updated"
        + (f"; listed {run.result.get('listed')}" if run.result else ""),
        f"requests  {run.cohort_requests + b.requests + run.finish_requests}"
        f" (finding {run.cohort_requests}, batches {b.requests}, finish {run.finish_requests})",
        f"time      batches {b.seconds:.1f} s of worker time",
    ]
    if run.funnel:
        lines.append("funnel    " + _funnel(run.funnel))
    if run.failures:
        lines.append(f"failures  {len(run.failures)}")
        lines += [f"  {failure}" for failure in run.failures[:50]]
        if len(run.failures) > 50:
            lines.append(f"  ... and {len(run.failures) - 50} more")
    return "\n".join(lines)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(counts.items())) or "-"


def _funnel(funnel: dict[str, Any]) -> str:
    """The funnel as Funnel.as_json wrote it, on one line."""
    removed = funnel.get("removed") or {}
    steps = ", ".join(f"{criterion} {count}" for criterion, count in removed.items() if count)
    return (
        f"found {funnel.get('found')}, not evaluated {funnel.get('not_evaluated')}; "
        f"removed: {steps or 'nobody'}; candidates {funnel.get('candidates')}, "
        f"potential {funnel.get('potential_candidates')}"
    )


def stalled(runs: Iterable[Run], now: datetime, stall_s: float) -> list[Run]:
    """Runs not ended with no progress for ``stall_s``: what the watchdog will take up."""
    return [
        run
        for run in runs
        if run.state not in FINAL
        and run.progress_at
        and (now - datetime.fromisoformat(run.progress_at)).total_seconds() > stall_s
    ]


def progress_bar(run: Run | None) -> str:
    """A run's progress on one terminal line (redrawn in place)."""
    if run is None:
        return "\rqueued"
    filled = BAR_WIDTH * run.batches.batches_done // run.batches_total if run.batches_total else 0
    return (
        f"\r{run.state:9} [{'#' * filled}{'-' * (BAR_WIDTH - filled)}] "
        f"{run.batches.batches_done}/{run.batches_total} batches, cohort {run.cohort}"
    )
