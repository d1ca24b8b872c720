"""The log scan (tests/logscan.py) on a generated population and logs written here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fhir_match.synth.generate import generate

from ..logscan import (
    Hit,
    log_sizes,
    patient_items,
    population_folders,
    scan,
    stack_logs,
    temp_logs,
)


@pytest.fixture(scope="module")
def population(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("scan") / "pop"
    generate(4, seed=5, out=out, format="ndjson")
    return out


@pytest.fixture(scope="module")
def first(population: Path) -> dict[str, str]:
    """The first patient's family name, identifier and birth date."""
    patient = json.loads((population / "fhir" / "Patient.ndjson").read_text().splitlines()[0])
    return {
        "name": patient["name"][0]["family"],
        "identifier": patient["identifier"][0]["value"],
        "birth date": patient["birthDate"],
    }


def test_the_items_are_every_patients_names_identifiers_and_birth_dates(
    population: Path, first: dict[str, str]
) -> None:
    assert population_folders(population.parent) == [population / "fhir"]
    items = patient_items([population / "fhir"])
    assert len(items["identifier"]) == 4
    assert 1 <= len(items["birth date"]) <= 4
    for kind, value in first.items():
        assert value in items[kind]


def test_a_hit_names_the_log_line_and_kind_never_the_value(
    population: Path, first: dict[str, str], tmp_path: Path
) -> None:
    log = tmp_path / "worker.out"  # not *.log: a session's own scan would find it
    log.write_text(
        "2026-12-07 22:00:01 worker ready\n"
        f"ERROR batch failed for {first['identifier']}\n"
        f"patient born {first['birth date']}, named {first['name']}\n"
        f"x{first['identifier']}y and {first['birth date']}0 are other tokens\n",
        encoding="utf-8",
    )
    hits = scan([log], patient_items([population / "fhir"]), {})
    assert hits == [
        Hit(log, 2, "identifier"),
        Hit(log, 3, "name"),
        Hit(log, 3, "birth date"),
    ]
    for hit in hits:
        assert all(value not in str(hit) for value in first.values())
    assert str(hits[0]) == f"{log}:2: a seeded patient's identifier"


def test_only_what_was_written_since_is_read_and_lines_keep_their_numbers(
    population: Path, first: dict[str, str], tmp_path: Path
) -> None:
    log = tmp_path / "hapi.out"
    log.write_text(f"an old leak: {first['name']}\nstarted\n", encoding="utf-8")
    since = log_sizes([log])
    with log.open("a", encoding="utf-8") as out:
        out.write(f"ok\nnew: {first['birth date']}\n")
    items = patient_items([population / "fhir"])
    assert scan([log], items, since) == [Hit(log, 4, "birth date")]
    log.write_text(f"rotated: {first['name']}\n", encoding="utf-8")  # shorter than before
    assert scan([log], items, since) == [Hit(log, 1, "name")]


def test_logs_are_the_stacks_files_and_the_tests_dot_logs_never_data(tmp_path: Path) -> None:
    var = tmp_path / "var"
    (var / "log").mkdir(parents=True)
    (var / "demo" / "fhir").mkdir(parents=True)
    for path in (var / "log" / "worker.log", var / "log" / "redis.log.1"):
        path.write_text("x\n")
    (var / "demo" / "fhir" / "Patient.ndjson").write_text("{}\n")
    temp = tmp_path / "pytest-of-ci"
    (temp / "review0").mkdir(parents=True)
    (temp / "review0" / "app.log").write_text("x\n")
    (temp / "review0" / "Patient.ndjson").write_text("{}\n")
    assert stack_logs(var / "log") == [var / "log" / "redis.log.1", var / "log" / "worker.log"]
    assert temp_logs(temp) == [temp / "review0" / "app.log"]
    assert stack_logs(tmp_path / "missing") == []
