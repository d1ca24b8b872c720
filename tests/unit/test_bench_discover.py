"""The discovery benchmark's arithmetic (bench/discover.py): mode labels, the proxied
address, and the ratios it reports with and without added latency."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from discover import (
    BULK,
    IN_PROCESS,
    LOWER,
    NAIVE,
    SEARCH,
    proxied,
    ratios,
    with_latency,
)


def _mode(seconds: float, find_s: float = 1.0, requests: int = 100) -> dict[str, Any]:
    return {"seconds": seconds, "find_s": find_s, "requests": requests}


def _result(latency_ms: float = 0) -> dict[str, Any]:
    modes = {
        SEARCH: _mode(4.0),
        IN_PROCESS: _mode(5.0),
        LOWER: _mode(4.0),
        NAIVE: _mode(9.0, requests=1000),
        BULK: _mode(8.0, requests=20),
    }
    if latency_ms:
        modes |= {
            with_latency(SEARCH, latency_ms): _mode(6.0),
            with_latency(IN_PROCESS, latency_ms): _mode(8.0),
            with_latency(LOWER, latency_ms): _mode(5.0),
            with_latency(NAIVE, latency_ms): _mode(43.0),
        }
    return {"size": 1000, "latency_ms": latency_ms, "modes": modes}


def test_labels_name_the_latency_only_when_there_is_one() -> None:
    assert with_latency(SEARCH, 0) == SEARCH
    assert with_latency(SEARCH, 20) == f"{SEARCH} +20ms"
    assert with_latency(NAIVE, 2.5) == f"{NAIVE} +2.5ms"


def test_the_proxied_address_keeps_scheme_and_path() -> None:
    assert proxied("http://127.0.0.1:8090/fhir", 41234) == "http://127.0.0.1:41234/fhir"
    assert proxied("http://localhost/fhir/", 5) == "http://127.0.0.1:5/fhir/"


def test_ratios_on_loopback_only() -> None:
    rows = {what: (ratio, verdict) for what, ratio, verdict in ratios(_result())}
    assert rows[f"(a) naive / {SEARCH}"] == (9.0 / 4.0, "goal >= 5: NOT MET")
    assert rows["(a) naive / ours (in-process), after the cohort search"][0] == 8.0 / 4.0
    assert rows["(a) at most: naive / lower bound"] == (9.0 / 4.0, "")
    assert rows[f"(b) {SEARCH} / lower bound"] == (1.0, "goal <= 1.3: MET")
    assert rows["(c) bulk / search, time (worker, repeat runs)"][0] == 2.0
    assert rows["(c) bulk / search, requests"][0] == 0.2
    assert not [what for what in rows if "round trip" in what]


def test_ratios_with_latency_add_the_same_comparisons_through_the_proxy() -> None:
    rows = {what: (ratio, verdict) for what, ratio, verdict in ratios(_result(20))}
    assert rows[f"(a) naive / {SEARCH}"][0] == 9.0 / 4.0
    assert rows[f"(a) naive / {SEARCH}, 20 ms round trip"] == (43.0 / 6.0, "goal >= 5: MET")
    after = rows["(a) naive / ours (in-process), after the cohort search, 20 ms round trip"]
    assert after[0] == 42.0 / 7.0
    assert rows[f"(b) {IN_PROCESS} / lower bound, 20 ms round trip"] == (
        8.0 / 5.0,
        "goal <= 1.3: NOT MET",
    )
    assert rows["(a) at most: naive / lower bound, 20 ms round trip"][0] == 43.0 / 5.0
    assert len(rows) == len(ratios(_result())) + 6
