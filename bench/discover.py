"""Benchmark cohort discovery against the local HAPI FHIR server, every approach side by side.

Usage: .venv/bin/python bench/discover.py [--sizes 1000,10000] [--large] [--seed 5]
                                          [--latency-ms 20] [--out var/bench/discover]

For each population size it generates a synthetic population, loads it into the server under
a run tag of its own (once: loading resumes, and is skipped when complete; not timed), then
runs discovery of KN5501 over that tag in five ways, on the same data, one after the other:

- ours (worker): the real pipeline, a Celery worker process on its own queue (2 processes);
  a first run, which may write ResearchSubjects, and a repeat run (the nightly steady state);
- ours (in-process): the same steps, 100 patients a batch, in one process;
- naive: the same steps one patient at a time (one search per patient per resource type);
- lower bound: only the cohort search and the record searches, no evaluation or write-back;
- bulk (worker): the pipeline with one Bulk Data ``$export`` instead of searches;
- group-export and patient-list (worker, strict EHR): the ways a hospital's EHR allows,
  through the strict EHR proxy of the tests (tests/strict_ehr.py: one patient per clinical
  search, Group export only, research resources read-only, internal-host links) in front
  of the same server, writing to a write store of the benchmark's own (a second HAPI on
  port 8091, data under ``--out``, stopped and removed at the end): a group export of the
  population's Group, then an incremental one right after with nothing changed (the
  nightly steady state: the export's fixed cost), and
  the Group read as a registry one patient at a time. Their requests are the EHR's (the
  proxy's count; the store's writes are not counted), and a refused request stops the
  benchmark.

It prints wall time, patients per second, HTTP requests per ITP patient (the cohort found)
and peak memory (VmHWM) of each, the HAPI server's memory, and the ratios against the goals:
naive at least 5x slower than ours, ours within 1.3x of the lower bound.

With ``--latency-ms N`` the search modes (ours through the worker and in-process, the naive
approach, the lower bound) run a second time, on the same data, through a proxy that adds
an N ms round trip to every request (bench/latency.py): on loopback a request costs only
the server's time, so the naive approach's many more requests barely show; across a
hospital network each one also pays the round trip. Both sets of figures and ratios are
printed. All figures go to
``discover.json`` and a plot of cost per patient against population size to
``discover-cost.png`` in ``--out``. In-process modes run in child processes, so each peak
is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

import redis
from latency import DelayProxy

from fhir_match.config import PROJECT_DIR, load_settings
from fhir_match.errors import FhirError
from fhir_match.fhir import FhirClient
from fhir_match.seed import seed, state_path
from fhir_match.synth import generate
from worker.process import WorkerNotReady, WorkerProcess, start_worker

ROOT = Path(__file__).resolve().parents[1]
STUDY = "kn5501"
AS_OF = "2026-06-01"
HAPI_PID_FILE = PROJECT_DIR / "var" / "run" / "hapi.pid"
READY_TIMEOUT_S = 60
RUN_TIMEOUT_S = 3600
LOCK_WAIT_S = 15
"""A run of the same population already holds its lock (another benchmark): sent again."""
POLL_S = 0.2
SEED_ATTEMPTS = 5
"""A busy server times out some transactions, failing their patients; loading resumes."""

SEARCH_FIRST = "ours (worker, first)"
SEARCH = "ours (worker)"
IN_PROCESS = "ours (in-process)"
NAIVE = "naive (in-process)"
LOWER = "lower bound (in-process)"
BULK_FIRST = "bulk (worker, first)"
BULK = "bulk (worker)"
GROUP_EXPORT = "group-export (strict EHR)"
GROUP_INCREMENTAL = "group-export incr. (strict EHR)"
PATIENT_LIST = "patient-list (strict EHR)"
WRITE_STORE_PORT = 8091


def population_seed(size: int, seed_: int) -> int:
    """The generator's seed for one size. Patient ids are ``syn<seed>-<index>``, so sizes
    generated with the same seed would share ids, and loading one would re-tag the other."""
    return seed_ * 1_000_000 + size


def population(size: int, seed_: int, out: Path) -> Path:
    """The synthetic population of ``size`` patients, generated unless already there."""
    made_with = population_seed(size, seed_)
    folder = out / f"pop-s{made_with}"
    manifest = folder / "manifest.json"
    if manifest.exists():
        made = json.loads(manifest.read_text())
        if (made["patients"], made["seed"], made["as_of"]) == (size, made_with, AS_OF):
            return folder
    shutil.rmtree(folder, ignore_errors=True)
    generate(size, made_with, folder, "ndjson")
    return folder


def load(client: FhirClient, folder: Path, size: int, tag: str) -> float:
    """Load the population into the server under ``tag``; seconds it took (0 if loaded)."""
    state = state_path(PROJECT_DIR / "var" / "seed", tag)
    loaded = state.exists() and len(set(state.read_text().split())) >= size
    if loaded and _has_group(client, tag):
        return 0.0
    started = time.perf_counter()
    for _ in range(SEED_ATTEMPTS):
        # with its Group (id: the tag), the population a hospital provisions
        summary = seed(client, [folder / "fhir"], tag, state, group=tag)
        if not summary.failed and summary.patients >= size:
            return time.perf_counter() - started
        print(f"  seeding {tag}: {len(summary.failed)} patients failed, resuming", flush=True)
    raise SystemExit(f"seeding {tag} failed: {summary.failed[:3]}")


def _has_group(client: FhirClient, tag: str) -> bool:
    try:
        client.read_json("Group", tag)
    except FhirError:
        return False
    return True


def _status_mb(pid: int, field: str) -> float:
    """A VmHWM/VmRSS line of /proc/<pid>/status in MB; 0 when the process is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0.0
    for line in lines:
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _tree_mb(pid: int) -> float:
    """Peak memory of a process and all its descendants, summed."""
    return _status_mb(pid, "VmHWM") + sum(_tree_mb(child) for child in _children(pid))


def _hapi_pid() -> int:
    return int(HAPI_PID_FILE.read_text().strip())


# --- in-process modes, each run in a child process -----------------------------------------


def _own_peak_mb() -> float:
    """Not ru_maxrss: Linux carries the parent's peak into a child through fork and exec."""
    return _status_mb(os.getpid(), "VmHWM")


def in_process(mode: str, tag: str) -> dict[str, Any]:
    """Run in a child process: one discovery of ``tag`` the ``mode`` way; figures as JSON."""
    from fhir_match.cohort import find_cohort
    from fhir_match.discovery import PATIENTS_PER_BATCH, ensure_study, finish_run, screen_batch
    from fhir_match.fetch import fetch_records
    from fhir_match.funnel import Funnel
    from fhir_match.records import DataIssue
    from fhir_match.runtime import study_setup
    from fhir_match.screen import study_engine
    from fhir_match.sources import Fetch
    from fhir_match.writeback import RunInfo

    setup = study_setup(STUDY)
    issues: list[DataIssue] = []
    written = 0
    engine_peak = 0.0
    with FhirClient(load_settings().fhir) as client:
        if mode == LOWER:
            started = time.perf_counter()
            cohort = find_cohort(client, setup.cohort, tag)
            found = time.perf_counter()
            for i in range(0, len(cohort), PATIENTS_PER_BATCH):
                chunk = cohort[i : i + PATIENTS_PER_BATCH]
                fetch_records(client, setup.records, chunk, issues.append)
            seconds = time.perf_counter() - started
        else:
            per_batch = 1 if mode == NAIVE else PATIENTS_PER_BATCH
            as_of = date.fromisoformat(AS_OF)
            with study_engine(setup.study, setup.normaliser, as_of) as engine:
                engine.start()
                started = time.perf_counter()
                recorded = datetime.now(UTC).isoformat(timespec="seconds")
                run = RunInfo(f"bench-{uuid.uuid4().hex[:12]}", AS_OF, recorded, tag)
                study_ref = ensure_study(client, setup.study, tag)
                cohort = find_cohort(client, setup.cohort, tag)
                found = time.perf_counter()
                removed: Counter[str] = Counter()
                outcomes: Counter[str] = Counter()
                evaluated = 0
                for i in range(0, len(cohort), per_batch):
                    chunk = cohort[i : i + per_batch]
                    report = screen_batch(
                        client, setup, engine, Fetch.SEARCH, chunk, study_ref, run
                    )
                    issues += report.failures + report.written.failed
                    written += report.written.created + report.written.updated
                    removed += report.removed
                    outcomes += report.outcomes
                    evaluated += report.evaluated
                funnel = Funnel.of(setup.study, removed, outcomes, len(cohort) - evaluated)
                finish = finish_run(client, setup, study_ref, run, set(cohort), funnel)
                written += finish.left_cohort.updated
                seconds = time.perf_counter() - started
                engine_peak = sum(_tree_mb(child) for child in _children(os.getpid()))
        requests = client.requests
    return {
        "seconds": seconds,
        "find_s": found - started,
        "cohort": len(cohort),
        "requests": requests,
        "written": written,
        "failures": len(issues),
        "python_peak_mb": _own_peak_mb(),
        "engine_peak_mb": engine_peak,
    }


def run_child(mode: str, tag: str, env: dict[str, str]) -> dict[str, Any]:
    """One in-process mode in a child process; ``env`` adds to its environment."""
    child = subprocess.run(
        [sys.executable, __file__, "--child", mode, tag],
        check=True,
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )
    figures: dict[str, Any] = json.loads(child.stdout.splitlines()[-1])
    figures["memory"] = (
        f"python {figures['python_peak_mb']:.0f} + node {figures['engine_peak_mb']:.0f}"
    )
    return figures


# --- worker modes ---------------------------------------------------------------------------


@dataclass
class Worker:
    """A Celery worker process of our own, on its own queue (as the integration tests do)."""

    process: WorkerProcess
    log: IO[bytes]

    @property
    def queue(self) -> str:
        return self.process.queue

    @classmethod
    def start(cls, log: Path, env: dict[str, str]) -> Worker:
        """Its banner and warnings go to ``log``, not between the benchmark's figures;
        ``env`` adds to its environment (the FHIR server's address)."""
        output = log.open("ab")
        try:
            process = start_worker("bench", env=env, stderr=output, ready_timeout_s=READY_TIMEOUT_S)
        except WorkerNotReady as exc:
            output.close()
            raise SystemExit(f"the benchmark's worker: {exc}; see {log}") from exc
        return cls(process, output)

    def memory(self) -> dict[str, float]:
        """Peak memory: the largest pool process with its Node engine, and the whole tree."""
        pid = self.process.pid
        pools = [_tree_mb(child) for child in _children(pid)]
        return {"largest_pool_mb": max(pools, default=0.0), "tree_mb": _tree_mb(pid)}

    def stop(self) -> None:
        self.process.stop()
        self.log.close()


def worker_run(
    store: redis.Redis, worker: Worker, fetch: str, tag: str, **options: Any
) -> dict[str, Any]:
    """One discovery run through the worker, timed from sending the task to the run's end;
    ``options`` go to the task (a cohort source, a mode)."""
    from worker.runs import FINAL, State, load_run
    from worker.tasks import discover

    kwargs = {"study_id": STUDY, "as_of": AS_OF, "mode": "full", "tag": tag, "fetch": fetch}
    kwargs |= options
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        started = time.perf_counter()
        run_id = discover.apply_async(kwargs=kwargs, queue=worker.queue).id
        while (record := load_run(store, run_id)) is None or record.state not in FINAL:
            if time.monotonic() > deadline:
                raise SystemExit(f"run {run_id} did not finish within {RUN_TIMEOUT_S}s")
            time.sleep(POLL_S)
        seconds = time.perf_counter() - started
        if record.state is not State.SKIPPED:
            break
        print(f"  {record.reason}; sending again in {LOCK_WAIT_S}s", flush=True)
        time.sleep(LOCK_WAIT_S)
    if record.state is State.FAILED:
        raise SystemExit(f"run {run_id} failed: {record.reason}")
    run = record.as_json()
    batches = run["batches"]
    # A bulk run's own count covers its batches too; a search run's is theirs summed.
    fetched = batches.get("requests", 0)
    return {
        "seconds": seconds,
        "cohort": run["cohort"],
        "requests": run["cohort_requests"] + fetched + run["finish_requests"],
        "written": batches.get("created", 0)
        + batches.get("updated", 0)
        + run["result"]["left_cohort"],
        "failures": len(batches["failures"]) + batches.get("failed_batches", 0),
        "evaluated": batches.get("evaluated", 0),
        "run": run_id,
    }


def worker_modes(
    store: redis.Redis, fetch: str, tag: str, log: Path, env: dict[str, str]
) -> list[dict[str, Any]]:
    """A first and a repeat run in a fresh worker; the worker's peak memory covers both."""
    worker = Worker.start(log, env)
    try:
        first = worker_run(store, worker, fetch, tag)
        repeat = worker_run(store, worker, fetch, tag)
        memory = worker.memory()
    finally:
        worker.stop()
    for figures in (first, repeat):
        figures.update(memory)
        figures["memory"] = (
            f"pool+node {memory['largest_pool_mb']:.0f}, all {memory['tree_mb']:.0f}"
        )
    return [first, repeat]


def hospital_modes(
    store: redis.Redis, tag: str, log: Path, upstream: str, write_store: str, itp: int
) -> dict[str, dict[str, Any]]:
    """The group-export (first, then incremental) and patient-list runs through the strict
    EHR proxy, writing to the write store, in one fresh worker. ``itp``: the cohort the
    search way found, so that requests per ITP patient compare across ways."""
    sys.path.insert(0, str(ROOT))  # the tests' strict EHR, for a benchmark run from bench/
    from tests.strict_ehr import StrictEhr

    cohorts: dict[str, dict[str, Any]] = {
        GROUP_EXPORT: {"cohort": {"source": "group-export", "group": tag}},
        GROUP_INCREMENTAL: {
            "cohort": {"source": "group-export", "group": tag},
            "mode": "incremental",
        },
        PATIENT_LIST: {"cohort": {"source": "patient-list", "patient_list": f"Group/{tag}"}},
    }
    results: dict[str, dict[str, Any]] = {}
    with StrictEhr(upstream, lifetime_s=4 * RUN_TIMEOUT_S) as ehr:
        env = {"FHIR_BASE_URL": ehr.base_url, "FHIR_FOREIGN_LINKS": "rewrite"}
        worker = Worker.start(log, {**env, "FHIR_WRITE_URL": write_store})
        try:
            for label, options in cohorts.items():
                if label == GROUP_INCREMENTAL:
                    _nothing_changed_since_now(store, tag)
                asked, refused = ehr.requests, ehr.refusals
                figures = worker_run(store, worker, "search", tag, **options)
                if ehr.refusals != refused:
                    raise SystemExit(f"{label}: the strict EHR refused {dict(ehr.refused)}")
                figures["requests"] = ehr.requests - asked
                figures["screened"] = figures["cohort"]  # the export's cohort, or the registry
                figures["cohort"] = itp
                results[label] = figures
            memory = worker.memory()
        finally:
            worker.stop()
    for figures in results.values():
        figures.update(memory)
        figures["memory"] = (
            f"pool+node {memory['largest_pool_mb']:.0f}, all {memory['tree_mb']:.0f}"
        )
    return results


def _nothing_changed_since_now(store: redis.Redis, tag: str) -> None:
    """Make the next incremental run look back from now, as if the last run had started
    after the population was loaded (it was loaded minutes ago, within the 5 minutes an
    incremental run looks back past the last run's start): the nightly steady state, where
    the export finds no change, measured as such."""
    from worker.runs import last_run, remember_last_run, run_scope
    from worker.tasks import SINCE_MARGIN

    scope = run_scope(STUDY, tag)
    last = last_run(store, scope)
    if last is not None:
        started = (datetime.now(UTC) + SINCE_MARGIN).isoformat(timespec="seconds")
        remember_last_run(store, scope, replace(last, started=started))


class WriteStore:
    """A second HAPI server (the stack's launcher, another port and folder) that accepts
    references to the EHR's resources: where the hospital ways write their lists."""

    def __init__(self, folder: Path) -> None:
        self.env = {
            **os.environ,
            "FHIR_PORT": str(WRITE_STORE_PORT),
            "FHIR_DATA_DIR": str(folder),
            "FHIR_ALLOW_EXTERNAL_REFERENCES": "true",
        }
        self.folder = folder
        self.base_url = f"http://127.0.0.1:{WRITE_STORE_PORT}/fhir"

    def __enter__(self) -> WriteStore:
        shutil.rmtree(self.folder, ignore_errors=True)
        subprocess.run([str(ROOT / "scripts" / "fhir-server"), "start"], env=self.env, check=True)
        return self

    def __exit__(self, *_: object) -> None:
        subprocess.run([str(ROOT / "scripts" / "fhir-server"), "stop"], env=self.env, check=True)
        shutil.rmtree(self.folder, ignore_errors=True)


# --- one size, all modes ----------------------------------------------------------------


def with_latency(label: str, latency_ms: float) -> str:
    """A mode's label when its requests go through the delaying proxy."""
    return f"{label} +{latency_ms:g}ms" if latency_ms else label


def proxied(base_url: str, port: int) -> str:
    """``base_url`` with its host and port replaced by the proxy's (loopback)."""
    parts = urlsplit(base_url)
    return urlunsplit(parts._replace(netloc=f"127.0.0.1:{port}"))


def measure(
    size: int, seed_: int, out: Path, write_store: str, latency_ms: float = 0, hospital: bool = True
) -> dict[str, Any]:
    settings = load_settings()
    started = time.perf_counter()
    folder = population(size, seed_, out)
    generated = time.perf_counter() - started
    tag = f"bench-discover-s{population_seed(size, seed_)}"
    with FhirClient(settings.fhir) as client:
        loaded = load(client, folder, size, tag)
    print(
        f"\n== {size} patients (tag {tag}): synth {generated:.1f}s, "
        f"seeding {loaded:.1f}s{' (already loaded)' if not loaded else ''}",
        flush=True,
    )
    store = redis.Redis.from_url(settings.redis_url, socket_timeout=30)
    hapi = _hapi_pid()
    modes: dict[str, dict[str, Any]] = {}
    log = out / "worker.log"

    def record(labels: list[str], results: list[dict[str, Any]], before: float) -> None:
        """Store a step's figures with the server's memory before and after it."""
        for label, figures in zip(labels, results, strict=True):
            figures["server_rss_before_mb"] = before
            figures["server_rss_after_mb"] = _status_mb(hapi, "VmRSS")
            figures["server_hwm_mb"] = _status_mb(hapi, "VmHWM")
            modes[label] = figures
            print(f"  {label}: {figures['seconds']:.1f}s", flush=True)

    def search_modes(env: dict[str, str], delay: float) -> None:
        before = _status_mb(hapi, "VmRSS")
        labels = [with_latency(SEARCH_FIRST, delay), with_latency(SEARCH, delay)]
        record(labels, worker_modes(store, "search", tag, log, env), before)
        for mode in (IN_PROCESS, LOWER, NAIVE):
            before = _status_mb(hapi, "VmRSS")
            record([with_latency(mode, delay)], [run_child(mode, tag, env)], before)

    search_modes({}, 0)
    before = _status_mb(hapi, "VmRSS")
    record([BULK_FIRST, BULK], worker_modes(store, "bulk", tag, log, {}), before)
    if hospital:
        before = _status_mb(hapi, "VmRSS")
        itp = modes[SEARCH]["cohort"]
        ways = hospital_modes(store, tag, log, settings.fhir.base_url, write_store, itp)
        record(list(ways), list(ways.values()), before)
    if latency_ms:
        target = urlsplit(settings.fhir.base_url)
        with DelayProxy(target.hostname or "127.0.0.1", target.port or 80, latency_ms) as proxy:
            env = {"FHIR_BASE_URL": proxied(settings.fhir.base_url, proxy.port)}
            search_modes(env, latency_ms)
    for figures in modes.values():
        cohort = max(figures["cohort"], 1)
        figures["cohort_per_s"] = figures["cohort"] / figures["seconds"]
        figures["population_per_s"] = size / figures["seconds"]
        figures["requests_per_itp"] = figures["requests"] / cohort
        figures["ms_per_patient"] = 1000 * figures["seconds"] / size
        figures["ms_per_itp"] = 1000 * figures["seconds"] / cohort
    return {
        "size": size,
        "tag": tag,
        "synth_s": generated,
        "seed_s": loaded,
        "latency_ms": latency_ms,
        "modes": modes,
    }


def ratios(result: dict[str, Any]) -> list[tuple[str, float, str]]:
    """(what, ratio, verdict) for the three comparisons, and the most (a) could be."""
    m = result["modes"]

    def s(mode: str) -> float:
        return float(m[mode]["seconds"])

    def goal(ok: bool, text: str) -> str:
        return f"goal {text}: {'MET' if ok else 'NOT MET'}"

    rows = []
    for delay in sorted({0.0, float(result.get("latency_ms") or 0)}):

        def at(mode: str, delay: float = delay) -> str:
            return with_latency(mode, delay)

        where = f", {delay:g} ms round trip" if delay else ""
        for ours in (SEARCH, IN_PROCESS):
            r = s(at(NAIVE)) / s(at(ours))
            rows.append((f"(a) naive / {ours}{where}", r, goal(r >= 5, ">= 5")))
        naive, in_process = m[at(NAIVE)], m[at(IN_PROCESS)]
        after = (naive["seconds"] - naive["find_s"]) / (
            in_process["seconds"] - in_process["find_s"]
        )
        text = f"(a) naive / ours (in-process), after the cohort search{where}"
        rows.append((text, after, goal(after >= 5, ">= 5")))
        # The lower bound reads what ours reads and nothing more: no way of reading the same
        # resources in one process gains more than this over the naive approach.
        ceiling = s(at(NAIVE)) / s(at(LOWER))
        rows.append((f"(a) at most: naive / lower bound{where}", ceiling, ""))
        for ours in (SEARCH, IN_PROCESS):
            r = s(at(ours)) / s(at(LOWER))
            rows.append((f"(b) {ours} / lower bound{where}", r, goal(r <= 1.3, "<= 1.3")))
    rows.append(("(c) bulk / search, time (worker, repeat runs)", s(BULK) / s(SEARCH), ""))
    requests = m[BULK]["requests"] / max(m[SEARCH]["requests"], 1)
    rows.append(("(c) bulk / search, requests", requests, ""))
    for way in (GROUP_EXPORT, GROUP_INCREMENTAL, PATIENT_LIST):
        if way in m:
            rows.append((f"(d) {way} / ours (worker, first), time", s(way) / s(SEARCH_FIRST), ""))
            asked = m[way]["requests"] / max(m[SEARCH_FIRST]["requests"], 1)
            rows.append((f"(d) {way} / ours (worker, first), requests", asked, ""))
    return rows


def report(result: dict[str, Any]) -> None:
    size = result["size"]
    cohort = result["modes"][SEARCH]["cohort"]
    print(f"\n{size} patients, {cohort} in the cohort (ITP patients found)")
    if result.get("latency_ms"):
        print(f"modes marked +{result['latency_ms']:g}ms: every request through the delay proxy")
    print(
        f"{'mode':<34} {'wall s':>7} {'find s':>7} {'ITP/s':>7} {'pop/s':>7} {'req/ITP':>8} "
        f"{'req':>6} {'written':>7} {'fail':>4} {'HAPI RSS MB before>after (HWM)':>31}  "
        "peak MB"
    )
    for name, f in result["modes"].items():
        server = (
            f"{f['server_rss_before_mb']:.0f}>{f['server_rss_after_mb']:.0f} "
            f"({f['server_hwm_mb']:.0f})"
        )
        find = f"{f['find_s']:.1f}" if "find_s" in f else "-"
        print(
            f"{name:<34} {f['seconds']:>7.1f} {find:>7} {f['cohort_per_s']:>7.1f} "
            f"{f['population_per_s']:>7.0f} {f['requests_per_itp']:>8.2f} {f['requests']:>6} "
            f"{f['written']:>7} {f['failures']:>4} {server:>31}  {f['memory']}"
        )
    for what, ratio, verdict in ratios(result):
        print(f"{what:<72} {ratio:>6.2f}x  {verdict}")


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Cost per patient against population size, per population patient and per ITP one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 5))
    sizes = [r["size"] for r in results]
    every = [mode for mode in results[0]["modes"] if all(mode in r["modes"] for r in results)]
    # A mode through the delay proxy: its loopback twin's colour, dashed.
    latency = f" +{results[0].get('latency_ms') or 0:g}ms"
    bases = list(dict.fromkeys(mode.removesuffix(latency) for mode in every))
    for mode in every:
        base = mode.removesuffix(latency)
        style = {"color": f"C{bases.index(base) % 10}", "linestyle": "--" if base != mode else "-"}
        for ax, key in zip(axes, ("ms_per_patient", "ms_per_itp"), strict=True):
            values = [r["modes"][mode][key] for r in results]
            ax.plot(sizes, values, marker="o", label=mode, **style)
    for ax, unit in zip(axes, ("population patient", "ITP patient (cohort)"), strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("population (patients)")
        ax.set_ylabel(f"ms per {unit}")
        ax.set_title(f"Discovery cost per {unit}")
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--large", action="store_true", help="add 50,000 patients")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=0,
        help="also run the search modes with this round trip added to every request",
    )
    parser.add_argument(
        "--hospital-max",
        type=int,
        default=1000,
        help="run the hospital ways only up to this many patients (a HAPI group export of "
        "10,000 patients takes many minutes on H2)",
    )
    parser.add_argument("--out", type=Path, default=PROJECT_DIR / "var" / "bench" / "discover")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(in_process(*args.child)))
        return

    sizes = [int(s) for s in args.sizes.split(",")] + ([50_000] if args.large else [])
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    with WriteStore(args.out / "write-store") as write_store:
        for size in sizes:
            hospital = size <= args.hospital_max
            results.append(
                measure(size, args.seed, args.out, write_store.base_url, args.latency_ms, hospital)
            )
            report(results[-1])
            # Written after each size, so a long run leaves what it has measured so far.
            (args.out / "discover.json").write_text(json.dumps(results, indent=2) + "\n")
            plot(results, args.out / "discover-cost.png")
    print(f"\nfigures: {args.out / 'discover.json'}, plot: {args.out / 'discover-cost.png'}")


if __name__ == "__main__":
    main()
