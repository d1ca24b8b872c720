"""Runs survive a dead worker and a lost Redis: real worker processes, a real beat sending
the watchdog, a Redis of the test's own killed with SIGKILL, and the real FHIR server.

Each test waits for states (the run's record), never for time; the watchdog is set to
take up a run after 10 s without progress (FHIR_MATCH_STALL_SECONDS), so recovery is
bounded by seconds here and by minutes with the defaults.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from fhir_match.candidates import current_candidates
from fhir_match.evaluate.study import load_study
from fhir_match.fhir import FhirClient, Search
from fhir_match.tagging import tag_token
from worker import runs
from worker.process import WorkerProcess, start_worker

from ..conftest import ROOT
from .populations import AS_OF, STUDY, Population, loaded_population

STALL_S = 10
RECOVERY_BOUND_S = 240
"""Kill to a finished run: the stall time, a watchdog pass, and the batches run again,
on a 2-core machine that also runs the FHIR server."""
WATCHDOG_ENV = {
    "FHIR_MATCH_STALL_SECONDS": str(STALL_S),
    "FHIR_MATCH_TASK_TIME_LIMIT": "90",  # a batch may run 30 s: plenty for 15 patients
    "FHIR_MATCH_WATCH_SECONDS": "2",
    "FHIR_MATCH_SCHEDULE": "0 0 1 1 *",  # no scheduled discovery during the test
}


@pytest.fixture(scope="module")
def population(fhir: FhirClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Population]:
    folder = tmp_path_factory.mktemp("recovery-population")
    with loaded_population(fhir, folder, 90, 53, 0.6, "recovery") as population:
        yield population


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def _beat(env: dict[str, str], folder: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Celery beat as a real process: it sends the watchdog every 2 s."""
    beat = subprocess.Popen(
        [
            *(sys.executable, "-m", "celery", "-A", "worker.app", "beat"),
            *("--loglevel", "WARNING", "--schedule", str(folder / "beat-schedule")),
        ],
        cwd=ROOT,
        env={**os.environ, **env},
    )
    try:
        yield beat
    finally:
        beat.terminate()
        beat.wait(timeout=30)


def _send_run(env: dict[str, str], population: Population) -> str:
    """Queue a full run the way an operator does, with the command line."""
    sent = subprocess.run(
        [
            *(sys.executable, "-m", "fhir_match.cli", "discover", "--as-of", AS_OF),
            *("--tag", population.tag, "--study", STUDY, "--mode", "full"),
        ],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return str(json.loads(sent.stdout)["run"])


def _wait_for(
    store: redis.Redis, run_id: str, ready: str, timeout_s: float, *, tolerate_outage: bool = False
) -> runs.Run:
    """Poll the run's record until ``ready`` holds: "in-flight" (a batch begun, some not
    done) or "ended"."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            run = runs.load_run(store, run_id)
        except redis.ConnectionError:
            if not tolerate_outage:
                raise
            run = None
        if run is not None:
            if ready == "ended" and run.state in runs.FINAL:
                return run
            if ready == "in-flight" and run.state in runs.FINAL:
                pytest.fail(f"the run ended before it could be interrupted: {run.state}")
            begun = run.study_ref and runs.started_batches(store, run_id)
            if ready == "in-flight" and begun and run.batches.batches_done < run.batches_total:
                return run
        time.sleep(0.05)  # polling the run's record for a state, not waiting for an effect
    pytest.fail(f"run {run_id} was not {ready} within {timeout_s:.0f}s")


def _listed(fhir: FhirClient, population: Population) -> dict[str, str]:
    candidates, _ = current_candidates(fhir, load_study(STUDY), population.tag)
    return {c.patient: c.outcome for c in candidates if c.patient in population.expected}


def _subjects_per_patient(fhir: FhirClient, population: Population) -> dict[str, int]:
    counts: dict[str, int] = {}
    search = Search("ResearchSubject").where("_tag", tag_token(population.tag)).count(500)
    for page in fhir.pages(search):
        for entry in page.get("entry") or []:
            patient = entry["resource"]["individual"]["reference"]
            counts[patient] = counts.get(patient, 0) + 1
    return counts


def test_a_run_whose_worker_is_killed_finishes_with_the_same_list(
    fhir: FhirClient,
    redis_client: redis.Redis,
    population: Population,
    tmp_path: Path,
) -> None:
    worker = start_worker("recovery", env=WATCHDOG_ENV)
    env = {**WATCHDOG_ENV, "FHIR_MATCH_QUEUE": worker.queue}
    replacement: WorkerProcess | None = None
    try:
        run_id = _send_run(env, population)
        _wait_for(redis_client, run_id, "in-flight", 120)
        worker.kill()  # the whole worker, SIGKILL: what an OOM kill or a lost node does
        killed = time.monotonic()
        stuck = runs.load_run(redis_client, run_id)
        assert stuck is not None
        assert stuck.state is runs.State.RUNNING
        assert stuck.batches.batches_done < stuck.batches_total
        replacement = start_worker("recovery", env=WATCHDOG_ENV, queue=worker.queue)
        with _beat(env, tmp_path):
            run = _wait_for(redis_client, run_id, "ended", RECOVERY_BOUND_S)
        recovered_s = time.monotonic() - killed
    finally:
        if replacement is not None:
            replacement.stop(timeout_s=60)
        if worker.process.poll() is None:
            worker.stop(timeout_s=60)

    print(f"worker killed: run finished {recovered_s:.1f}s later, resent {run.resent}")
    assert run.state is runs.State.DONE, run
    assert run.resent >= 1  # the watchdog sent the lost batches again
    assert run.batches.evaluated == run.cohort
    assert _listed(fhir, population) == population.listed
    assert set(_subjects_per_patient(fhir, population).values()) == {1}  # never two
    assert runs.lock_holder(redis_client, runs.run_scope(STUDY, population.tag)) is None


@contextmanager
def _own_redis(folder: Path) -> Iterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    """A Redis of the test's own, as the stack runs it (append-only file, fsync every
    second), that the test may kill; restarted on the same files."""
    port = _free_port()
    folder.mkdir(parents=True, exist_ok=True)
    command = [
        shutil.which("redis-server") or "redis-server",
        "--bind", "127.0.0.1", "--port", str(port), "--dir", str(folder),
        "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
    ]  # fmt: skip
    processes: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        processes.append(subprocess.Popen(command, stdout=subprocess.DEVNULL))
        client = redis.Redis(port=port, socket_timeout=2)
        deadline = time.monotonic() + 20
        while True:
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.05)  # polling for Redis to answer

    start()
    url = f"redis://127.0.0.1:{port}/0"
    try:
        yield url, processes
    finally:
        for process in processes:
            process.kill()
            process.wait()


def test_a_run_survives_redis_killed_mid_run(
    fhir: FhirClient, population: Population, tmp_path: Path
) -> None:
    with _own_redis(tmp_path / "redis") as (url, processes):
        store = redis.Redis.from_url(url, socket_timeout=5)
        env = {**WATCHDOG_ENV, "REDIS_URL": url}
        worker = start_worker("redis-loss", env=env)
        env["FHIR_MATCH_QUEUE"] = worker.queue
        try:
            with _beat(env, tmp_path):
                run_id = _send_run(env, population)
                _wait_for(store, run_id, "in-flight", 120)
                processes[0].kill()  # SIGKILL: no chance to write anything more
                processes[0].wait()
                restart = subprocess.Popen(processes[0].args, stdout=subprocess.DEVNULL)
                processes.append(restart)
                run = _wait_for(store, run_id, "ended", RECOVERY_BOUND_S, tolerate_outage=True)
                repair_id = _send_run(env, population)  # the next night's run
                repair = _wait_for(store, repair_id, "ended", RECOVERY_BOUND_S)
        finally:
            worker.stop(timeout_s=60)
        lock = runs.lock_holder(store, runs.run_scope(STUDY, population.tag))

    print(f"Redis killed: run ended {run.state}, resent {run.resent}, reason {run.reason!r}")
    journal = runs.journal_run(run_id)
    assert journal is not None
    assert journal.state == run.state  # the durable copy agrees
    assert lock is None
    assert run.state in (runs.State.DONE, runs.State.FAILED), run  # never left hanging
    assert repair.state is runs.State.DONE, repair
    assert _listed(fhir, population) == population.listed
    assert set(_subjects_per_patient(fhir, population).values()) == {1}
