"""SMART Backend Services settings: inference, defaults, bad values, and the key kept secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from fhir_match.config import DEFAULT_BACKEND_SCOPE, load_settings
from fhir_match.errors import ConfigError
from fhir_match.fetch import record_searches
from fhir_match.records import RECORD_TYPES
from fhir_match.signing import signing_key

from .keys import key_file, pem


def _env(folder: Path, kind: str = "rsa", **extra: str) -> dict[str, str]:
    return {
        "FHIR_CLIENT_ID": "fhir-match-backend",
        "FHIR_PRIVATE_KEY_FILE": str(key_file(folder, kind)),
        **extra,
    }


def _secret_line(kind: str) -> str:
    """A line from the middle of the key's PEM: if it shows, the key leaked."""
    return pem(kind).splitlines()[2]


@pytest.mark.parametrize(("kind", "algorithm"), [("rsa", "RS384"), ("ec", "ES384")])
def test_a_client_id_and_a_key_mean_smart_backend(
    tmp_path: Path, kind: str, algorithm: str
) -> None:
    fhir = load_settings(_env(tmp_path, kind)).fhir
    assert fhir.auth == "smart-backend"
    assert fhir.backend is not None
    assert fhir.backend.client_id == "fhir-match-backend"
    assert fhir.backend.algorithm == algorithm
    assert fhir.backend.key_id == signing_key(pem(kind)).key.thumbprint()
    assert fhir.backend.scope == DEFAULT_BACKEND_SCOPE
    assert fhir.backend.token_url == ""


def test_key_id_scope_and_token_url_can_be_set(tmp_path: Path) -> None:
    env = _env(
        tmp_path,
        FHIR_AUTH="smart-backend",
        FHIR_KEY_ID="epic-2026",
        FHIR_SCOPE="  system/Patient.rs\n system/Observation.rs ",
        FHIR_TOKEN_URL="https://ehr.example/oauth2/token",
    )
    backend = load_settings(env).fhir.backend
    assert backend is not None
    assert backend.key_id == "epic-2026"
    assert backend.scope == "system/Patient.rs system/Observation.rs"
    assert backend.token_url == "https://ehr.example/oauth2/token"


def test_the_default_scope_reads_every_record_type_and_writes_without_deleting() -> None:
    scopes = DEFAULT_BACKEND_SCOPE.split()
    assert all(s.startswith("system/") for s in scopes)
    for search in record_searches(RECORD_TYPES):
        kind = search.resource_type
        assert f"system/{kind}.rs" in scopes or f"system/{kind}.crus" in scopes
    assert "system/Medication.rs" in scopes
    for written in ("ResearchStudy", "ResearchSubject", "Provenance", "Group"):
        assert f"system/{written}.crus" in scopes
    assert not any("d" in s.rsplit(".", 1)[1] for s in scopes)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FHIR_AUTH": "smart-backend"}, "needs FHIR_CLIENT_ID"),
        ({"FHIR_CLIENT_ID": "c"}, "needs FHIR_PRIVATE_KEY_FILE"),
        ({"FHIR_PRIVATE_KEY_FILE": "/etc/fhir-match/key.pem"}, "needs FHIR_CLIENT_ID"),
        ({"FHIR_AUTH": "oauth"}, "FHIR_AUTH must be one of"),
        (
            {"FHIR_CLIENT_ID": "c", "FHIR_PRIVATE_KEY_FILE": "/nonexistent/key.pem"},
            "FHIR_PRIVATE_KEY_FILE '/nonexistent/key.pem' cannot be read: No such file",
        ),
    ],
)
def test_missing_settings_are_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(env)


@pytest.mark.filterwarnings("ignore:Key size should be:UserWarning")
@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("ec-p256", "must be on P-384"),
        ("rsa-1024", "2048 bits or more"),
        ("ed25519", "not an unencrypted PEM private key of type RSA or EC"),
        ("rsa-public", "holds a public key"),
    ],
)
def test_a_wrong_key_is_named_but_never_shown(tmp_path: Path, kind: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load_settings(_env(tmp_path, kind))
    assert "FHIR_PRIVATE_KEY_FILE" in str(caught.value)
    assert _secret_line(kind) not in str(caught.value)
    assert caught.value.__suppress_context__  # no chained library error that might quote it


def test_a_file_that_is_no_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not a key\n")
    env = {"FHIR_CLIENT_ID": "c", "FHIR_PRIVATE_KEY_FILE": str(path)}
    with pytest.raises(ConfigError, match="not an unencrypted PEM private key"):
        load_settings(env)


def test_a_bad_token_url_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="FHIR_TOKEN_URL"):
        load_settings(_env(tmp_path, FHIR_TOKEN_URL="ehr.example/token"))


def test_credentials_of_two_methods_need_fhir_auth(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"bearer and smart-backend.*FHIR_AUTH"):
        load_settings(_env(tmp_path, FHIR_TOKEN="t"))
    assert load_settings(_env(tmp_path, FHIR_TOKEN="t", FHIR_AUTH="bearer")).fhir.backend is None


def test_the_private_key_is_masked_when_recorded_and_absent_from_repr(tmp_path: Path) -> None:
    settings = load_settings(_env(tmp_path))
    recorded = settings.as_json()
    backend = recorded["fhir"]["backend"]
    assert backend["private_key"] == "***"
    assert backend["client_id"] == "fhir-match-backend"
    assert _secret_line("rsa") not in str(recorded)
    assert _secret_line("rsa") not in repr(settings)
