"""Shared test fixtures: where the real services are, read from the environment like the product.

It also runs the log scan (tests/logscan.py) when a session ran integration tests: at the very
end, in ``pytest_sessionfinish``, so that it runs after every test and after the session's
fixtures are torn down (the test worker stopped, its log complete), which a test module
ordered last could not see. A hit fails the session (exit status 1) and is listed by log,
line and kind.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fhir_match.config import Settings, load_settings

from .logscan import log_sizes, patient_items, population_folders, scan, stack_logs, temp_logs

ROOT = Path(__file__).resolve().parents[1]
VAR_LOG = ROOT / "var" / "log"
"""Where the stack's scripts and the tests' own worker processes write their logs."""
INTEGRATION = ROOT / "tests" / "integration"

_LOGS_AT_START = pytest.StashKey[dict[Path, int]]()
_TEMP = pytest.StashKey[Path]()


@pytest.fixture(scope="session")
def settings() -> Settings:
    """The same settings the product reads: FHIR_BASE_URL, REDIS_URL, ..."""
    return load_settings()


@pytest.fixture(scope="session", autouse=True)
def _session_temp(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Remember the session's temporary folder: the log scan reads the populations there."""
    pytestconfig.stash[_TEMP] = tmp_path_factory.getbasetemp()


def pytest_sessionstart(session: pytest.Session) -> None:
    """Where each stack log ends now: the scan reads only what this session adds."""
    session.config.stash[_LOGS_AT_START] = log_sizes(stack_logs(VAR_LOG))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the session if a log holds a seeded patient's name, identifier or birth date."""
    ran_integration = any(item.path.is_relative_to(INTEGRATION) for item in session.items)
    temp = session.config.stash.get(_TEMP, None)
    if not ran_integration or temp is None:
        return
    logs = stack_logs(VAR_LOG) + temp_logs(temp)
    items = patient_items(population_folders(temp))
    hits = scan(logs, items, session.config.stash[_LOGS_AT_START])
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = [
        f"log scan: {len(logs)} logs, {sum(map(len, items.values()))} items of seeded patients: "
        + (f"{len(hits)} lines with patient data" if hits else "no patient data"),
        *(f"  {hit}" for hit in hits),
    ]
    if reporter is not None:
        reporter.write_sep("-", "log scan", red=bool(hits), green=not hits)
        for line in lines:
            reporter.write_line(line)
    if hits:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
