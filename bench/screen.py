"""Benchmark `fhir-match screen`: patients per second and peak memory, at two population sizes.

Usage: .venv/bin/python bench/screen.py [--patients 10000] [--seed 7]

It generates a synthetic population (NDJSON, the Bulk Data layout) with `fhir-match synth`,
then screens it and the population twice its size, each in a fresh process, and prints for
each: wall time, patients per second, CPU time per patient of the Python process and of the CQL
engine (Node) with the rate one core would reach from it (wall time depends on what else the
machine runs; CPU time much less), peak memory of both, and how often the engine agreed with
the answers the generator intended. The ratios between the two sizes show whether memory stays
flat as the population grows.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _own_peak_mb() -> float:
    """This process's own peak RSS. Not ru_maxrss: Linux carries that over from the parent
    through fork and exec, so the child would report the benchmark driver's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def screen_once(population: Path, results: Path) -> dict[str, float]:
    """Run in a child process: screen ``population`` and report the figures as JSON."""
    from fhir_match.evaluate.engine import NodeCqlEngine, translate_cql
    from fhir_match.evaluate.study import load_study
    from fhir_match.screen import load_normaliser, screen

    manifest = json.loads((population / "manifest.json").read_text())
    as_of = date.fromisoformat(manifest["as_of"])
    study = load_study("kn5501")
    translate_cql()
    normaliser = load_normaliser(study)
    engine = NodeCqlEngine(
        study.library,
        version=study.library_version,
        value_sets=normaliser.terminology.expansions,
        parameters={"As Of": as_of, **study.parameters},
    )
    with engine, results.open("w", encoding="utf-8") as out:
        engine.start()
        pid = engine.pid
        assert pid is not None
        engine_cpu, python_cpu = _cpu_seconds(pid), _own_cpu_seconds()
        started = time.perf_counter()
        summary = screen([population / "fhir"], study, as_of, normaliser, engine, out)
        seconds = time.perf_counter() - started
        engine_cpu, python_cpu = _cpu_seconds(pid) - engine_cpu, _own_cpu_seconds() - python_cpu
    return {
        "patients": summary.patients,
        "failures": len(summary.failures),
        "seconds": seconds,
        "python_cpu_s": python_cpu,
        "engine_cpu_s": engine_cpu,
        "python_peak_mb": _own_peak_mb(),
        "engine_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def agreement(population: Path, results: Path) -> tuple[float, float, Counter[str]]:
    """Share of patients whose outcome, and of criteria whose result, match the generator's."""
    expected = {}
    for line in (population / "expected.ndjson").read_text().splitlines():
        item = json.loads(line)
        expected[item["patient"]] = item
    outcomes = criteria = total = 0
    disagreements: Counter[str] = Counter()
    for line in results.read_text().splitlines():
        got = json.loads(line)
        want = expected[got["patient"]]
        outcomes += got["outcome"] == want["outcome"]
        for criterion in got["criteria"]:
            total += 1
            same = criterion["result"] == want["criteria"][criterion["id"]]
            criteria += same
            if not same:
                disagreements[criterion["id"]] += 1
    return outcomes / max(len(expected), 1), criteria / max(total, 1), disagreements


def generate(patients: int, seed: int, out: Path) -> float:
    started = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "fhir_match.cli",
            "synth",
            "--patients",
            str(patients),
            "--seed",
            str(seed),
            "--out",
            str(out),
            "--format",
            "ndjson",
        ],
        check=True,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(screen_once(*args.child)))
        return

    rows = []
    with tempfile.TemporaryDirectory(prefix="fhir-match-bench-") as tmp:
        for size in (args.patients, 2 * args.patients):
            population = Path(tmp) / f"pop-{size}"
            generated = generate(size, args.seed, population)
            results = Path(tmp) / f"results-{size}.ndjson"
            child = subprocess.run(
                [sys.executable, __file__, "--child", str(population), str(results)],
                check=True,
                cwd=ROOT,
                capture_output=True,
                text=True,
            )
            figures = json.loads(child.stdout.splitlines()[-1])
            same_outcome, same_criteria, disagreements = agreement(population, results)
            rows.append((size, generated, figures, same_outcome, same_criteria, disagreements))

    print(
        f"{'patients':>9} {'synth s':>8} {'screen s':>9} {'patients/s':>11} "
        f"{'python ms/p':>12} {'engine ms/p':>12} {'1-core p/s':>11} "
        f"{'python MB':>10} {'engine MB':>10} {'outcome ok':>11} {'criteria ok':>12}"
    )
    for size, generated, f, same_outcome, same_criteria, _ in rows:
        cpu = f["python_cpu_s"] + f["engine_cpu_s"]
        print(
            f"{size:>9} {generated:>8.1f} {f['seconds']:>9.1f} "
            f"{f['patients'] / f['seconds']:>11.0f} "
            f"{1000 * f['python_cpu_s'] / f['patients']:>12.2f} "
            f"{1000 * f['engine_cpu_s'] / f['patients']:>12.2f} "
            f"{f['patients'] / cpu:>11.0f} {f['python_peak_mb']:>10.0f} "
            f"{f['engine_peak_mb']:>10.0f} {same_outcome:>11.2%} {same_criteria:>12.2%}"
        )
    (small, _, fs, *_), (large, _, fl, *_) = rows
    print(
        f"ratios {large // small}x patients: time {fl['seconds'] / fs['seconds']:.2f}x, "
        f"python memory {fl['python_peak_mb'] / fs['python_peak_mb']:.2f}x, "
        f"engine memory {fl['engine_peak_mb'] / fs['engine_peak_mb']:.2f}x"
    )
    print("engine != generator, by criterion:", dict(rows[-1][5].most_common()))


if __name__ == "__main__":
    main()
