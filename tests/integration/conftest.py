"""Fixtures for tests against the real FHIR server, Redis and Celery worker processes.

Nothing here is skipped when a service is missing: the tests fail and say which service to
start. Everything a test creates on the FHIR server carries a run tag and is deleted by it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import redis

from fhir_match.config import Settings
from fhir_match.errors import FhirError
from fhir_match.fhir import FhirClient, Search
from fhir_match.seed import TAG_SYSTEM

from ..conftest import ROOT

READY_TIMEOUT_S = 60
KEYCLOAK_URL = os.environ.get("KEYCLOAK_URL") or (
    f"http://127.0.0.1:{os.environ.get('KEYCLOAK_PORT') or 8180}"
)
"""The local Keycloak of the SMART tests, where scripts/keycloak starts it."""


@pytest.fixture(scope="session")
def fhir(settings: Settings) -> Iterator[FhirClient]:
    with FhirClient(settings.fhir) as client:
        try:
            client.capabilities()
        except FhirError as exc:
            pytest.fail(f"no FHIR server at {client.base_url} (scripts/stack start): {exc}")
        yield client


@dataclass
class RunTag:
    """A meta.tag unique to one test; cleanup deletes what carries it, type by type."""

    code: str
    types: set[str] = field(default_factory=set)

    @property
    def coding(self) -> dict[str, str]:
        return {"system": TAG_SYSTEM, "code": self.code}

    @property
    def token(self) -> str:
        return f"{TAG_SYSTEM}|{self.code}"

    def mark(self, resource: dict[str, object]) -> dict[str, object]:
        """Tag a resource's JSON in place and remember its type for cleanup."""
        self.types.add(str(resource["resourceType"]))
        meta = resource.setdefault("meta", {})
        assert isinstance(meta, dict)
        meta.setdefault("tag", []).append(self.coding)
        return resource


@pytest.fixture
def run_tag(fhir: FhirClient) -> Iterator[RunTag]:
    tag = RunTag(f"test-{uuid.uuid4().hex[:12]}")
    yield tag
    for resource_type in sorted(tag.types):
        fhir.delete_matching(Search(resource_type).where("_tag", tag.token), cascade=True)


@pytest.fixture(scope="session")
def redis_client(settings: Settings) -> redis.Redis:
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"no Redis at {settings.redis_url} (scripts/stack start): {exc}")
    return client


@dataclass(frozen=True)
class WorkerProcess:
    queue: str
    pid: int


@pytest.fixture(scope="session")
def celery_worker(redis_client: redis.Redis) -> Iterator[WorkerProcess]:
    """A real Celery worker in its own process, on a queue of its own so no other worker
    (the stack's, say) can take these tests' tasks."""
    from worker.app import app

    queue = f"test-{uuid.uuid4().hex[:8]}"
    node = f"{queue}@localhost"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "worker.app",
            "worker",
            "-Q",
            queue,
            "-n",
            node,
            "--concurrency",
            "2",
            "--loglevel",
            "WARNING",
            "--without-mingle",
            "--without-gossip",
        ],
        cwd=ROOT,
        env=os.environ.copy(),
    )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not app.control.ping(destination=[node], timeout=1.0):
            if process.poll() is not None:
                pytest.fail(f"the test worker exited with code {process.returncode}")
            if time.monotonic() > deadline:
                pytest.fail(f"the test worker did not answer within {READY_TIMEOUT_S}s")
        yield WorkerProcess(queue, process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)
