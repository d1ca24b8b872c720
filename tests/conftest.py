"""Shared test fixtures: where the real services are, read from the environment like the product."""

from __future__ import annotations

from pathlib import Path

import pytest

from fhir_match.config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def settings() -> Settings:
    """The same settings the product reads: FHIR_BASE_URL, REDIS_URL, ..."""
    return load_settings()
