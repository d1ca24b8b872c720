"""Settings from the environment: defaults, inference of the auth method, masking, bad values."""

from __future__ import annotations

import pytest

from fhir_match.config import DEFAULT_FHIR_BASE_URL, load_settings
from fhir_match.errors import ConfigError


def test_defaults_point_at_the_local_stack() -> None:
    settings = load_settings({})
    assert settings.fhir.base_url == DEFAULT_FHIR_BASE_URL
    assert settings.fhir.auth == "none"
    assert settings.redis_url == "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize(
    ("env", "method"),
    [
        ({"FHIR_TOKEN": "t"}, "bearer"),
        ({"FHIR_USERNAME": "u", "FHIR_PASSWORD": "p"}, "basic"),
        ({"FHIR_AUTH": "NONE", "FHIR_TOKEN": "t"}, "none"),
    ],
)
def test_auth_method_is_inferred_or_explicit(env: dict[str, str], method: str) -> None:
    assert load_settings(env).fhir.auth == method


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"FHIR_BASE_URL": "ftp://x"}, "FHIR_BASE_URL"),
        ({"FHIR_AUTH": "kerberos"}, "FHIR_AUTH"),
        ({"FHIR_AUTH": "basic", "FHIR_USERNAME": "u"}, "FHIR_PASSWORD"),
        ({"FHIR_AUTH": "bearer"}, "FHIR_TOKEN"),
        ({"FHIR_TIMEOUT": "soon"}, "FHIR_TIMEOUT"),
        ({"FHIR_TIMEOUT": "0"}, "FHIR_TIMEOUT"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        load_settings(env)


def test_secrets_are_masked_when_recorded() -> None:
    settings = load_settings(
        {"FHIR_TOKEN": "s3cret-token", "REDIS_URL": "redis://:hunter2@10.0.0.1:6379/0"}
    )
    recorded = str(settings.as_json())
    assert "s3cret-token" not in recorded
    assert "hunter2" not in recorded
    assert "s3cret-token" not in repr(settings)
