"""A real FHIR server restart in the middle of a discovery run (issue 14: "HAPI stopped, then
started 60 s later").

The shared server is never stopped: this test starts a HAPI FHIR server of its own (the
stack's launcher jar, on a free port, with a database in a temporary folder), loads a
population into it and runs discovery on the real worker through the fault proxy, which
here says when the run is under way and, while the server is down, answers 502 as a
gateway in front of it would. Once the first batch has read its first page of
Observations, the server is stopped (SIGTERM, Spring's graceful shutdown), started again
60 s later, and the run must end with the generator's intended list. HAPI takes 40-75 s to
start on a 2-core machine, so the server is away for 100-140 s in all.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis

from fhir_match.candidates import current_candidates
from fhir_match.config import FhirSettings
from fhir_match.evaluate.study import load_study
from fhir_match.fhir import FhirClient
from fhir_match.seed import seed
from fhir_match.synth.generate import generate
from worker.process import WorkerProcess
from worker.runs import State

from ..conftest import ROOT
from .faults import FaultProxy
from .populations import STUDY, Population, run_discovery
from .test_faults import OUTAGE_S, first_batch_read

HAPI_JAR = ROOT / "server" / "hapi" / "target" / "app" / "fhir-match-hapi.jar"
START_TIMEOUT_S = 240
STOP_TIMEOUT_S = 60
JAVA_OPTIONS = ("-Xmx512m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC")
"""As scripts/fhir-server starts the stack's server."""


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as listening:
        return int(listening.getsockname()[1])


@dataclass
class OwnHapi:
    """A HAPI FHIR server this test starts and stops, on ``port`` with its data in ``data``."""

    port: int
    data: Path
    process: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)
    """Settings of the launcher's own (FHIR_ALLOW_EXTERNAL_REFERENCES for a write store)."""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"

    def start(self) -> float:
        """Start the server and return once it answers: the seconds that took."""
        if not HAPI_JAR.is_file():
            pytest.fail(f"no HAPI launcher at {HAPI_JAR} (scripts/fhir-server build)")
        started = time.monotonic()
        with (self.data / "hapi.log").open("ab") as log:
            self.process = subprocess.Popen(
                ["java", *JAVA_OPTIONS, "-jar", str(HAPI_JAR)],
                env={
                    **os.environ,
                    **self.env,
                    "FHIR_PORT": str(self.port),
                    "FHIR_DATA_DIR": str(self.data),
                },
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = started + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"HAPI exited with {self.process.returncode}: see {self.data}")
            try:
                if httpx.get(f"{self.base_url}/metadata", timeout=5).status_code == 200:
                    return time.monotonic() - started
            except httpx.TransportError:
                pass
            time.sleep(1)  # polling the server's start-up, not waiting for an effect
        pytest.fail(f"HAPI did not answer within {START_TIMEOUT_S}s")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


@pytest.fixture
def own_hapi(tmp_path: Path) -> Iterator[OwnHapi]:
    data = tmp_path / "hapi"
    data.mkdir()
    server = OwnHapi(_free_port(), data)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def load(fhir: FhirClient, folder: Path) -> Population:
    """A population on the test's own server (discarded with it: nothing to remove)."""
    generate(60, 1415, folder, "ndjson", itp_share=0.6)
    tag = f"test-restart-{uuid.uuid4().hex[:8]}"  # its own lock, whatever ran before
    loaded = seed(fhir, [folder / "fhir"], tag, folder / "seed.done", workers=2)
    assert not loaded.failed
    assert not loaded.skipped
    lines = (folder / "expected.ndjson").read_text().splitlines()
    return Population(tag, folder, {e["patient"]: e for e in map(json.loads, lines)})


def test_a_fhir_server_restarted_mid_run_gives_the_intended_list(
    own_hapi: OwnHapi,
    redis_client: redis.Redis,
    celery_worker: WorkerProcess,
    tmp_path: Path,
) -> None:
    with FhirClient(FhirSettings(base_url=own_hapi.base_url)) as fhir:
        population = load(fhir, tmp_path / "population")
    timings: dict[str, float] = {}

    def restart() -> None:
        stopping = time.monotonic()
        proxy.hold()  # no request slips through while the server shuts down gracefully
        own_hapi.stop()
        proxy.release()  # what was held now meets a stopped server
        timings["stopped"] = time.monotonic()
        threading.Event().wait(OUTAGE_S)  # the outage itself: the server stays down 60 s
        timings["start_up"] = own_hapi.start()
        timings["back"] = time.monotonic()
        timings["away"] = timings["back"] - stopping

    with FaultProxy(own_hapi.base_url) as proxy:
        proxy.after(first_batch_read, restart)
        run = run_discovery(redis_client, celery_worker, population, base_url=proxy.base_url)
    ended = time.monotonic()

    assert proxy.unreachable > 0  # the run did meet the outage
    print(f"\nserver away {timings['away']:.0f} s (start-up {timings['start_up']:.0f} s)")
    print(f"run ended {ended - timings['back']:.0f} s after the server was back")
    assert run.state == State.DONE, run
    assert run.failures == ()
    with FhirClient(FhirSettings(base_url=own_hapi.base_url)) as fhir:
        candidates, _ = current_candidates(fhir, load_study(STUDY), population.tag)
    listed = {c.patient: c for c in candidates}
    assert {p: c.outcome for p, c in listed.items()} == population.listed
    for patient, candidate in listed.items():
        expected = population.expected[patient]["criteria"]
        assert {c.id: c.result for c in candidate.criteria} == expected
