"""docker-compose.yml as Debian's docker-compose reads it (`config`: parsed, validated against
its schema and interpolated, with no Docker engine): what an engine would be asked to run."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from ..conftest import ROOT


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The resolved file, every variable at its default, the review profile included."""
    program = shutil.which("docker-compose")
    if program is None:
        pytest.fail("docker-compose is not installed: run scripts/setup")
    done = subprocess.run(
        [program, "--profile", "review", "-f", str(ROOT / "docker-compose.yml"), "config"],
        cwd=ROOT,
        env={"PATH": os.environ.get("PATH", "")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    resolved: dict[str, Any] = yaml.safe_load(done.stdout)
    return resolved


def test_the_stack_has_its_five_services(compose: dict[str, Any]) -> None:
    assert sorted(compose["services"]) == ["beat", "fhir", "redis", "review", "worker"]
    assert compose["services"]["review"]["profiles"] == ["review"]


def test_every_published_port_is_on_the_hosts_loopback_only(compose: dict[str, Any]) -> None:
    published = {name: service.get("ports", []) for name, service in compose["services"].items()}
    assert published == {
        "fhir": ["127.0.0.1:8080:8080/tcp"],
        "redis": ["127.0.0.1:6379:6379/tcp"],
        "review": ["127.0.0.1:8765:8765/tcp"],
        "worker": [],
        "beat": [],
    }


def test_the_distroless_fhir_server_has_no_healthcheck_it_cannot_run(
    compose: dict[str, Any],
) -> None:
    assert "healthcheck" not in compose["services"]["fhir"]
    for name, service in compose["services"].items():
        for needed in service.get("depends_on", {}).values():
            assert needed["condition"] in ("service_started", "service_healthy"), name
        if "fhir" in service.get("depends_on", {}):
            assert service["depends_on"]["fhir"]["condition"] == "service_started", name


def test_the_worker_waits_for_the_fhir_server_with_our_client_then_runs_celery(
    compose: dict[str, Any],
) -> None:
    shell, flag, script = compose["services"]["worker"]["command"]
    assert (shell, flag) == ("sh", "-c")
    wait, start = script.split("done;")
    assert wait.startswith("until fhir-match status --no-worker")
    assert start.strip().startswith("exec celery -A worker.app worker")
    assert start.strip().endswith("--concurrency 2")


def test_redis_keeps_an_append_only_file_on_a_volume_and_reports_its_health(
    compose: dict[str, Any],
) -> None:
    redis = compose["services"]["redis"]
    assert redis["command"] == [
        "redis-server",
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
    ]
    assert redis["volumes"] == ["redis-data:/data:rw"]
    assert "redis-data" in compose["volumes"]
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    for name in ("worker", "beat", "review"):
        assert compose["services"][name]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_the_review_app_listens_on_every_address_of_its_container(
    compose: dict[str, Any],
) -> None:
    review = compose["services"]["review"]
    assert review["command"] == ["fhir-match", "review"]
    assert review["environment"]["FHIR_MATCH_REVIEW_HOST"] == "0.0.0.0"
    assert review["environment"]["FHIR_MATCH_REVIEW_PORT"] == "8765"
    assert review["environment"]["FHIR_MATCH_REVIEW_URL"] == "http://127.0.0.1:8765"
    assert review["environment"]["FHIR_BASE_URL"] == "http://fhir:8080/fhir"
    # It signs users in with SMART: it gets no credentials of the backend client (only the
    # write store's, where the list is read and decisions written).
    given = {k for k in review["environment"] if k.startswith("FHIR_") and "REVIEW" not in k}
    assert not {k for k in given if not k.startswith("FHIR_WRITE_")} - {
        "FHIR_BASE_URL",
        "FHIR_MATCH_TAG",
        "FHIR_MATCH_TIME_ZONE",
    }


def test_every_variable_the_services_read_is_in_the_readmes_configuration_table(
    compose: dict[str, Any],
) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    for name in ("worker", "beat", "review"):
        for variable in compose["services"][name]["environment"]:
            assert f"`{variable}`" in table, (name, variable)
