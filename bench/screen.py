"""Benchmark `fhir-match screen`: patients per second and peak memory, at two population sizes.

Usage: .venv/bin/python bench/screen.py [--patients 10000] [--seed 7]
       .venv/bin/python bench/screen.py --export 100000 [--seed 7] [--itp-share 0.02]

It generates a synthetic population (NDJSON, the Bulk Data layout) with `fhir-match synth`,
then screens it and the population twice its size, each in a fresh process, and prints for
each: wall time, patients per second, CPU time per patient of the Python process and of the CQL
engine (Node) with the rate one core would reach from it (wall time depends on what else the
machine runs; CPU time much less), peak memory of both, and how often the engine agreed with
the answers the generator intended. The ratios between the two sizes show whether memory stays
flat as the population grows.

With ``--export``, a hospital's population export instead: that many patients and a tenth of
them (generated once, cached under var/bench), each screened in full (today's ``screen``) and
cohort-only (``screen --cohort-only``, the group-export source's local work: find the cohort,
read and evaluate only its records), side by side: wall time, population read per second,
patients evaluated, peak memory, and whether every cohort line is the full screen's and every
listed patient in the cohort.
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


def screen_once(population: Path, results: Path, cohort_only: bool = False) -> dict[str, float]:
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
        summary = screen(
            [population / "fhir"], study, as_of, normaliser, engine, out, cohort_only=cohort_only
        )
        seconds = time.perf_counter() - started
        engine_cpu, python_cpu = _cpu_seconds(pid) - engine_cpu, _own_cpu_seconds() - python_cpu
    return {
        "patients": summary.patients,
        "outside": summary.outside or 0,
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


def generate(patients: int, seed: int, out: Path, itp_share: float | None = None) -> float:
    started = time.perf_counter()
    share = [] if itp_share is None else ["--itp-share", str(itp_share)]
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
            *share,
        ],
        check=True,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def cached_population(size: int, seed: int, itp_share: float) -> Path:
    """A population under var/bench, generated the first time (not timed): the manifest is
    written last, so a population without one is generated again."""
    population = ROOT / "var" / "bench" / f"export-{size}-seed{seed}-itp{itp_share}"
    if not (population / "manifest.json").is_file():
        generate(size, seed, population, itp_share)
    return population


def _child(population: Path, results: Path, mode: str) -> dict[str, float]:
    child = subprocess.run(
        [sys.executable, __file__, "--child", str(population), str(results), "--mode", mode],
        check=True,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    figures: dict[str, float] = json.loads(child.stdout.splitlines()[-1])
    return figures


def _lines(results: Path) -> dict[str, str]:
    return {json.loads(line)["patient"]: line for line in results.read_text().splitlines()}


def export_benchmark(size: int, seed: int, itp_share: float) -> None:
    """Full and cohort-only screening of a population export, at ``size`` and a tenth of it."""
    print(
        f"{'patients':>9} {'ITP share':>9} {'mode':>11} {'wall s':>7} {'patients/s':>11} "
        f"{'evaluated':>10} {'not in cohort':>14} {'python MB':>10} {'engine MB':>10}"
    )
    figures: dict[tuple[int, str], dict[str, float]] = {}
    checks = []
    with tempfile.TemporaryDirectory(prefix="fhir-match-bench-") as tmp:
        for patients in (size // 10, size):
            population = cached_population(patients, seed, itp_share)
            cohorts = json.loads((population / "manifest.json").read_text())["cohorts"]
            share = 1 - cohorts.get("general", 0) / patients
            results = {}
            for mode in ("full", "cohort-only"):
                results[mode] = Path(tmp) / f"{mode}-{patients}.ndjson"
                f = figures[patients, mode] = _child(population, results[mode], mode)
                print(
                    f"{patients:>9} {share:>9.1%} {mode:>11} {f['seconds']:>7.1f} "
                    f"{patients / f['seconds']:>11.0f} {f['patients']:>10} {f['outside']:>14} "
                    f"{f['python_peak_mb']:>10.0f} {f['engine_peak_mb']:>10.0f}"
                )
            full, cohort = _lines(results["full"]), _lines(results["cohort-only"])
            listed = {p for p, line in full.items() if json.loads(line)["outcome"] != "ineligible"}
            same = sum(line == full.get(p) for p, line in cohort.items())
            checks.append(
                f"{patients}: cohort lines equal to the full screen's {same}/{len(cohort)}, "
                f"listed patients missing from the cohort {len(listed - cohort.keys())}"
            )
    for patients in (size // 10, size):
        ratio = figures[patients, "full"]["seconds"] / figures[patients, "cohort-only"]["seconds"]
        print(f"{patients}: cohort-only is {ratio:.1f}x faster")
    small, large = figures[size // 10, "cohort-only"], figures[size, "cohort-only"]
    print(
        f"cohort-only, 10x patients: time {large['seconds'] / small['seconds']:.2f}x, python "
        f"memory {large['python_peak_mb'] / small['python_peak_mb']:.2f}x, engine memory "
        f"{large['engine_peak_mb'] / small['engine_peak_mb']:.2f}x"
    )
    print("\n".join(checks))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--export", type=int, help="screen a population export of this size")
    parser.add_argument(
        "--itp-share", type=float, default=0.02, help="with --export (0.02: about 2.4%% ITP)"
    )
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="full", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        population, results = args.child
        print(json.dumps(screen_once(population, results, cohort_only=args.mode == "cohort-only")))
        return
    if args.export:
        export_benchmark(args.export, args.seed, args.itp_share)
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
