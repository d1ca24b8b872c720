"""Celery beat, as a real process, sends each study's discovery run to the workers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis

from fhir_match.fhir import FhirClient
from fhir_match.seed import remove_tagged
from worker import runs
from worker.process import WorkerProcess

from ..conftest import ROOT

BEAT_TIMEOUT_S = 150
"""Beat sends at the next minute boundary; the run of an empty tagged cohort is quick."""


def _ended_runs_of_tag(store: redis.Redis, tag: str) -> list[runs.Run]:
    return [r for r in runs.list_runs(store, limit=50) if r.tag == tag and r.state in runs.FINAL]


def test_beat_sends_a_discovery_run_on_the_schedule(
    fhir: FhirClient, celery_worker: WorkerProcess, redis_client: redis.Redis, tmp_path: Path
) -> None:
    tag = f"test-beat-{uuid.uuid4().hex[:8]}"  # no resource carries it: an empty cohort
    env = {
        **os.environ,
        "FHIR_MATCH_QUEUE": celery_worker.queue,
        "FHIR_MATCH_SCHEDULE": "* * * * *",
        "FHIR_MATCH_TAG": tag,
    }
    beat = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "worker.app",
            "beat",
            "--loglevel",
            "WARNING",
            "--schedule",
            str(tmp_path / "beat-schedule"),
        ],
        cwd=ROOT,
        env=env,
    )
    try:
        deadline = time.monotonic() + BEAT_TIMEOUT_S
        while not _ended_runs_of_tag(redis_client, tag):
            if beat.poll() is not None:
                pytest.fail(f"beat exited with code {beat.returncode}")
            if time.monotonic() > deadline:
                pytest.fail(f"no scheduled run finished within {BEAT_TIMEOUT_S}s")
            time.sleep(0.5)  # polling Redis for the run's record, not waiting for an effect
    finally:
        beat.terminate()
        beat.wait(timeout=30)
        remove_tagged(fhir, tag)  # the run's snapshot, and the study if the run created it

    run = _ended_runs_of_tag(redis_client, tag)[0]
    assert run.state == "done", run
    assert run.study == "kn5501"
    assert run.full is True  # the first run of a scope is a full one
    assert run.cohort == 0
