"""Celery beat, as a real process, sends each study's discovery run to the workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from fhir_match.fhir import FhirClient
from fhir_match.seed import remove_tagged
from worker.process import WorkerProcess

from ..conftest import ROOT

FINAL = ("done", "failed", "skipped")
BEAT_TIMEOUT_S = 150
"""Beat sends at the next minute boundary; the run of an empty tagged cohort is quick."""


def _runs_of_tag(store: redis.Redis, tag: str) -> list[dict[str, Any]]:
    found = []
    for key in store.scan_iter("fhir-match:run:*"):
        if key.count(b":") != 2:
            continue  # a run's batches or cohort, not its record
        fields = store.hgetall(key)
        if json.loads(fields.get(b"tag", b'""')) == tag:
            found.append({k.decode(): json.loads(v) for k, v in fields.items()})
    return found


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
        while not [r for r in _runs_of_tag(redis_client, tag) if r.get("state") in FINAL]:
            if beat.poll() is not None:
                pytest.fail(f"beat exited with code {beat.returncode}")
            if time.monotonic() > deadline:
                pytest.fail(f"no scheduled run finished within {BEAT_TIMEOUT_S}s")
            time.sleep(0.5)  # polling Redis for the run's record, not waiting for an effect
    finally:
        beat.terminate()
        beat.wait(timeout=30)
        remove_tagged(fhir, tag)  # the run's snapshot, and the study if the run created it

    run = next(r for r in _runs_of_tag(redis_client, tag) if r.get("state") in FINAL)
    assert run["state"] == "done", run
    assert run["study"] == "kn5501"
    assert run["full"] is True  # the first run of a scope is a full one
    assert run["cohort"] == 0
