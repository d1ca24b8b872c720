"""The ``fhir-match`` command: flags and environment to Settings, one subcommand, exit codes."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from fhir_match import __version__
from fhir_match.config import (
    COHORT_SOURCES,
    PROJECT_DIR,
    CohortSetting,
    Settings,
    load_settings,
    mask_url_password,
)
from fhir_match.errors import ConfigError, FhirError, FhirMatchError

if TYPE_CHECKING:
    import redis

    from fhir_match.server import ServerAllows

__all__ = ["EXIT_CONFIG", "EXIT_FAILURE", "EXIT_OK", "EXIT_UNAVAILABLE", "main"]

EXIT_OK = 0
EXIT_FAILURE = 1
"""The command ran but something failed (a check, or records that had to be skipped)."""
EXIT_CONFIG = 2
"""Bad flags or settings; nothing was done."""
EXIT_UNAVAILABLE = 3
"""A service the command needs (FHIR server, Redis, worker) did not answer."""

WORKER_TIMEOUT_S = 60.0


def fatal(message: str, code: int) -> NoReturn:
    print(f"fhir-match: {message}", file=sys.stderr)
    raise SystemExit(code)


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings()
    if getattr(args, "fhir_url", None):
        settings = replace(settings, fhir=settings.fhir.with_base_url(args.fhir_url))
    return settings


def cmd_status(args: argparse.Namespace) -> int:
    """Check that the FHIR server, Redis and a worker answer, that the worker reaches FHIR,
    and that no run is stalled (exit 1 if one is)."""
    from fhir_match.fhir import FhirClient
    from fhir_match.server import describe_server, read_allows

    settings = _settings(args)
    report: dict[str, object] = {"settings": settings.as_json()}
    with FhirClient(settings.fhir) as client:
        report["fhir_server"] = describe_server(client)
        report["discovery"] = _discovery_ways(settings, read_allows(client))
    stuck: list[str] = []
    if args.worker:
        from worker.tasks import check_fhir_server

        runs = _run_status(settings)
        report["runs"] = runs
        stuck = runs["stalled"]
        result = check_fhir_server.delay(settings.fhir.base_url)
        try:
            report["worker"] = result.get(timeout=WORKER_TIMEOUT_S)
        except TimeoutError:
            fatal(f"no worker answered within {WORKER_TIMEOUT_S:.0f}s", EXIT_UNAVAILABLE)
    print(json.dumps(report, indent=2))
    return EXIT_FAILURE if stuck else EXIT_OK


def _discovery_ways(settings: Settings, server: ServerAllows) -> dict[str, str]:
    """Per study, the way discovery will find its cohort on this server, or why it cannot."""
    from fhir_match.evaluate.study import configured_studies
    from fhir_match.sources import choose_source, describe

    ways = {}
    for study in settings.studies or configured_studies():
        try:
            ways[study] = describe(choose_source(settings.cohort(study), server))
        except ConfigError as exc:
            ways[study] = f"none: {exc}"
    return ways


def _run_status(settings: Settings) -> dict[str, list[str]]:
    """Runs in progress, and those stalled (no progress for FHIR_MATCH_STALL_SECONDS)."""
    from worker import runs
    from worker.report import stalled

    store = _store(settings)
    recent = runs.list_runs(store, limit=50)
    moment = datetime.now(UTC)
    stuck = stalled(recent, moment, settings.stall_s)
    for run in stuck:
        print(
            f"fhir-match: run {run.id} of {run.study} ({run.state}) has made no progress "
            f"since {run.progress_at} (fhir-match runs show {run.id})",
            file=sys.stderr,
        )
    return {
        "in_progress": [run.id for run in recent if run.state not in runs.FINAL],
        "stalled": [run.id for run in stuck],
    }


def cmd_jwks(args: argparse.Namespace) -> int:
    """Print the public key of FHIR_PRIVATE_KEY_FILE as a JWK Set: what the EHR registers."""
    from fhir_match.signing import public_jwks, signing_key

    backend = _settings(args).fhir.backend
    if backend is None:
        raise ConfigError(
            "jwks needs FHIR_AUTH=smart-backend (FHIR_CLIENT_ID, FHIR_PRIVATE_KEY_FILE)"
        )
    print(json.dumps(public_jwks(signing_key(backend.private_key, backend.key_id)), indent=2))
    return EXIT_OK


def _only_study() -> str | None:
    """The default --study: the one study configured, if there is only one."""
    from fhir_match.evaluate.study import configured_studies

    studies = configured_studies()
    return studies[0] if len(studies) == 1 else None


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def cmd_screen(args: argparse.Namespace) -> int:
    """Screen patients in FHIR files against a study's criteria; one JSON line per patient."""
    from fhir_match.evaluate.engine import translate_cql
    from fhir_match.evaluate.study import load_study
    from fhir_match.screen import load_normaliser, path_problem, screen, study_engine

    for written in (args.output, args.summary):
        if written is not None and (problem := path_problem(written, args.input)):
            fatal(problem, EXIT_CONFIG)
    for path in args.input:
        if not path.exists():
            fatal(f"no such file or folder: {path}", EXIT_CONFIG)
    study = load_study(args.study)
    translate_cql()
    normaliser = load_normaliser(study)
    engine = study_engine(study, normaliser, args.as_of)
    # A file is written under another name until the run ends, so that a run that stops part
    # way never leaves one that looks complete (a pipe or a device is written as it goes).
    to_file = args.output is not None and (args.output.is_file() or not args.output.exists())
    partial = args.output.with_name(args.output.name + ".partial") if to_file else args.output
    output = open(partial, "w", encoding="utf-8") if partial else sys.stdout  # noqa: SIM115
    try:
        with engine:
            summary = screen(
                args.input,
                study,
                args.as_of,
                normaliser,
                engine,
                output,
                cohort_only=args.cohort_only,
            )
    finally:
        if output is not sys.stdout:
            output.close()
    if to_file:
        partial.replace(args.output)
    print(summary.report(), file=sys.stderr)
    if args.summary:
        args.summary.write_text(json.dumps(summary.as_json(), indent=2) + "\n", encoding="utf-8")
    return EXIT_OK if summary.complete else EXIT_FAILURE


def cmd_synth(args: argparse.Namespace) -> int:
    """Write a synthetic hospital population (FHIR R4) and the answers each patient should get."""
    from fhir_match.synth.generate import generate

    summary = generate(
        args.patients, args.seed, args.out, args.format, as_of=args.as_of, itp_share=args.itp_share
    )
    print(json.dumps(summary.manifest(), indent=2, default=str))
    return EXIT_OK


def _progress(label: str) -> Callable[[int], None]:
    """A one-line counter on a terminal; silent when stderr is a file or a pipe."""
    if not sys.stderr.isatty():
        return lambda done: None
    return lambda done: print(f"\r{label}: {done}", end="", file=sys.stderr, flush=True)


def cmd_seed(args: argparse.Namespace) -> int:
    """Load a population into a FHIR server, every resource tagged; or remove one by its tag."""
    from fhir_match.fhir import FhirClient
    from fhir_match.seed import remove_tagged, seed, state_path, summary_json

    settings = _settings(args)
    with FhirClient(settings.fhir) as client:
        if args.remove:
            if not args.tag:
                fatal("--remove needs --tag", EXIT_CONFIG)
            removed = remove_tagged(client, args.tag, _progress("removed"))
            print(json.dumps({"tag": args.tag, "removed": removed}), file=sys.stderr)
            return EXIT_OK
        if not args.input:
            fatal("seed needs --input (or --remove --tag TAG)", EXIT_CONFIG)
        tag = args.tag or f"fhir-match-{datetime.now(UTC):%Y%m%d%H%M%S}"
        state = state_path(PROJECT_DIR / "var" / "seed", tag)
        summary = seed(
            client, args.input, tag, state, args.workers, _progress("patients"), args.group or ""
        )
    print(f"\ntag: {tag}\n{summary_json(summary)}", file=sys.stderr)
    for issue in (summary.skipped + summary.failed)[:20]:
        print(f"  {issue}", file=sys.stderr)
    return EXIT_OK if not (summary.skipped or summary.failed) else EXIT_FAILURE


RUN_POLL_S = 0.5


def _store(settings: Settings) -> redis.Redis:
    """Redis, answering, or a fatal error naming where it was looked for."""
    import redis

    store = redis.Redis.from_url(settings.redis_url, socket_timeout=5)
    try:
        store.ping()
    except redis.RedisError as exc:
        where = mask_url_password(settings.redis_url)
        fatal(f"Redis at {where} did not answer: {exc}", EXIT_UNAVAILABLE)
    return store


def _cohort_setting(args: argparse.Namespace, settings: Settings, study_id: str) -> CohortSetting:
    """How this run finds its cohort: the flags, else the settings for the study."""
    configured = settings.cohort(study_id)
    registry = args.patient_list or configured.patient_list
    if registry and not registry.startswith(("Group/", "List/")):
        registry = str(Path(registry).resolve())  # the worker reads it, from elsewhere
    try:
        return replace(
            configured,
            source=args.source or configured.source,
            group=(args.group or configured.group).removeprefix("Group/"),
            patient_list=registry,
        )
    except ConfigError as exc:
        fatal(str(exc), EXIT_CONFIG)


def cmd_discover(args: argparse.Namespace) -> int:
    """Run cohort discovery for a study through the worker; write the candidate list back."""
    import time
    import uuid

    from fhir_match.evaluate.study import load_study
    from worker import runs
    from worker.report import progress_bar
    from worker.tasks import discover

    settings = _settings(args)
    study = load_study(args.study)
    store = _store(settings)
    run_id = str(uuid.uuid4())
    queued = time.monotonic()
    queued_run = runs.Run(
        run_id,
        study.id,
        runs.State.QUEUED,
        queued=runs.now(),
        tag=args.tag or "",
        mode=args.mode,
        fetch=args.fetch,
        queue=settings.queue,
    )
    runs.new_run(store, queued_run)
    discover.apply_async(
        task_id=run_id,
        kwargs={
            "study_id": study.id,
            "base_url": settings.fhir.base_url,
            "as_of": args.as_of.isoformat() if args.as_of else None,
            "mode": args.mode,
            "tag": args.tag or "",
            "fetch": args.fetch,
            "cohort": asdict(_cohort_setting(args, settings, study.id)),
        },
    )
    print(f"run {run_id} of {study.id} queued", file=sys.stderr)
    if not args.wait:
        print(json.dumps({"run": run_id}))
        return EXIT_OK
    terminal = sys.stderr.isatty()
    while True:
        run = runs.load_run(store, run_id)
        if terminal:
            print(progress_bar(run), end="", file=sys.stderr, flush=True)
        if run is not None and run.state in runs.FINAL:
            break
        waited = time.monotonic() - queued
        if (run is None or run.state is runs.State.QUEUED) and waited > WORKER_TIMEOUT_S:
            fatal(f"no worker took run {run_id} within {WORKER_TIMEOUT_S:.0f}s", EXIT_UNAVAILABLE)
        if waited > args.timeout:
            fatal(f"run {run_id} did not finish within {args.timeout:.0f}s", EXIT_FAILURE)
        time.sleep(RUN_POLL_S)
    if terminal:
        print(file=sys.stderr)
    print(json.dumps({"run": run_id, **run.as_json()}, indent=2))
    return EXIT_OK if run.state in (runs.State.DONE, runs.State.SKIPPED) else EXIT_FAILURE


def cmd_runs(args: argparse.Namespace) -> int:
    """List recent discovery runs; show one (counts, funnel, failures, timings); cancel one."""
    from worker import runs
    from worker.report import run_details, run_table
    from worker.tasks import cancel

    settings = _settings(args)
    store = _store(settings)
    moment = datetime.now(UTC)
    if args.action == "list":
        found = runs.list_runs(store, limit=args.limit)
        if args.json:
            print(json.dumps([run.as_json() for run in found], indent=2))
        else:
            print(run_table(found, moment))
        return EXIT_OK
    if not args.run_id:
        fatal(f"runs {args.action} needs a run id (fhir-match runs lists them)", EXIT_CONFIG)
    if args.action == "cancel":
        cancelled = cancel(store, args.run_id)
        if cancelled is None:
            run = runs.load_run(store, args.run_id)
            if run is None:
                known = runs.journal_run(args.run_id) is not None
                fatal(
                    f"run {args.run_id} is not in Redis"
                    + (" (only in the journal: the watchdog ends it)" if known else ""),
                    EXIT_FAILURE,
                )
            if run.state is runs.State.FINISHING:
                fatal(f"run {args.run_id} is finishing: it ends in a moment", EXIT_FAILURE)
            fatal(f"run {args.run_id} has already ended ({run.state})", EXIT_FAILURE)
        print(
            f"run {args.run_id} cancelled; {cancelled.study} is free to run again "
            "(a batch already running finishes its writes)"
        )
        return EXIT_OK
    run = runs.load_run(store, args.run_id) or runs.journal_run(args.run_id)
    if run is None:
        fatal(f"no run {args.run_id}", EXIT_FAILURE)
    print(json.dumps(run.as_json(), indent=2) if args.json else run_details(run, moment))
    return EXIT_OK


def cmd_candidates(args: argparse.Namespace) -> int:
    """List a study's current candidates with their per-criterion results, from the server."""
    from fhir_match.candidates import (
        candidate_json,
        candidate_text,
        current_candidates,
        source_lines,
    )
    from fhir_match.evaluate.study import load_study
    from fhir_match.fhir import FhirClient

    study = load_study(args.study)
    settings = _settings(args)
    tag = settings.tag if args.tag is None else args.tag
    with FhirClient(settings.store) as store:
        candidates, source = current_candidates(
            store, study, tag, settings.research_study(study.id), settings.ehr_base
        )
    for candidate in candidates:
        if args.format == "ndjson":
            print(json.dumps(candidate_json(candidate, study), ensure_ascii=False))
        else:
            print(candidate_text(candidate) + "\n")
    for line in source_lines(source):
        print(line, file=sys.stderr)
    print(f"{len(candidates)} candidates for {study.id}", file=sys.stderr)
    return EXIT_OK


def cmd_review(args: argparse.Namespace) -> int:
    """Serve the coordinators' review app (SMART on FHIR; without sign-in on loopback)."""
    import uvicorn

    from fhir_match.review.app import create_app
    from fhir_match.review.config import load_review_settings

    settings = load_review_settings(host=args.host, port=args.port)
    app = create_app(settings)
    print(f"review app at {settings.base}/ for {settings.fhir_base_url}", file=sys.stderr)
    # No access log: request lines carry patient ids and, on /callback, the one-time code.
    uvicorn.run(app, host=settings.host, port=settings.port, access_log=False, log_level="warning")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fhir-match",
        description="Find clinical-trial candidates in an EHR over FHIR R4.",
    )
    parser.add_argument("--version", action="version", version=f"fhir-match {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    status = commands.add_parser("status", help=cmd_status.__doc__)
    status.add_argument("--fhir-url", help="FHIR base URL (default: $FHIR_BASE_URL)")
    status.add_argument(
        "--no-worker", dest="worker", action="store_false", help="skip the Redis and worker checks"
    )
    status.set_defaults(run=cmd_status)

    jwks = commands.add_parser("jwks", help=cmd_jwks.__doc__)
    jwks.set_defaults(run=cmd_jwks)

    screen = commands.add_parser("screen", help=cmd_screen.__doc__)
    screen.add_argument(
        "--input",
        type=Path,
        action="append",
        required=True,
        help="a FHIR JSON or NDJSON file, or a folder of them (repeatable)",
    )
    screen.add_argument("--study", default=_only_study(), help="study id")
    screen.add_argument(
        "--as-of", type=_date, default=date.today(), help="screening date (default: today)"
    )
    screen.add_argument("--output", type=Path, help="write the NDJSON here (default: stdout)")
    screen.add_argument(
        "--summary", type=Path, help="also write the summary (counts, funnel) here as JSON"
    )
    screen.add_argument(
        "--cohort-only",
        action="store_true",
        help="evaluate only the study's cohort, found in the files first (a hospital's "
        "population export); the others are counted, not written",
    )
    screen.set_defaults(run=cmd_screen)

    synth = commands.add_parser("synth", help=cmd_synth.__doc__)
    synth.add_argument("--patients", type=int, required=True, help="how many patients")
    synth.add_argument("--seed", type=int, default=1, help="the same seed, the same files")
    synth.add_argument("--out", type=Path, required=True, help="folder to write into")
    synth.add_argument("--format", choices=("bundles", "ndjson"), default="bundles")
    synth.add_argument(
        "--as-of",
        type=_date,
        default=date(2026, 6, 1),
        help="screening date the expected answers hold for (default: 2026-06-01)",
    )
    synth.add_argument(
        "--itp-share",
        type=float,
        default=0.04,
        help="share of patients with an ITP history (default: 0.04, a haematology-heavy "
        "hospital; raise it for a demo with more candidates)",
    )
    synth.set_defaults(run=cmd_synth)

    seed = commands.add_parser("seed", help=cmd_seed.__doc__)
    seed.add_argument("--fhir-url", help="FHIR base URL (default: $FHIR_BASE_URL)")
    seed.add_argument("--input", type=Path, action="append", help="FHIR files or folders")
    seed.add_argument("--tag", help="the run tag (default: fhir-match-<UTC time>)")
    seed.add_argument("--remove", action="store_true", help="delete what --tag marks")
    seed.add_argument("--workers", type=int, default=4, help="transactions in flight")
    seed.add_argument("--group", help="also write Group GROUP of every patient loaded, tagged")
    seed.set_defaults(run=cmd_seed)

    discover = commands.add_parser("discover", help=cmd_discover.__doc__)
    discover.add_argument("--study", default=_only_study(), help="study id")
    discover.add_argument("--fhir-url", help="FHIR base URL (default: $FHIR_BASE_URL)")
    discover.add_argument("--as-of", type=_date, help="screening date (default: today)")
    discover.add_argument(
        "--mode",
        choices=("auto", "full", "incremental"),
        default="full",
        help="full: every patient of the cohort (default); incremental: only those whose "
        "record changed since the last run; auto: as the schedule does",
    )
    discover.add_argument(
        "--tag", help="only patients found through resources with this run tag (test data)"
    )
    discover.add_argument(
        "--source",
        choices=COHORT_SOURCES,
        help="how the cohort is found (default: $FHIR_MATCH_COHORT_SOURCE, else auto): "
        "search across patients, a Bulk Data export of the population --group, or a "
        "registry read one patient at a time (--patient-list)",
    )
    discover.add_argument(
        "--group", help="the population Group's id (default: $FHIR_MATCH_COHORT_GROUP)"
    )
    discover.add_argument(
        "--patient-list",
        help="the registry: Group/<id>, List/<id> or a file of patient ids "
        "(default: $FHIR_MATCH_PATIENT_LIST)",
    )
    discover.add_argument(
        "--fetch",
        choices=("search", "bulk"),
        default="search",
        help="with the search source: batched searches fanned out to the workers (default), "
        "or one Bulk Data $export of the cohort (always a full run)",
    )
    discover.add_argument("--wait", action="store_true", help="show progress until it ends")
    discover.add_argument(
        "--timeout", type=float, default=6 * 3600.0, help="with --wait: give up after (s)"
    )
    discover.set_defaults(run=cmd_discover)

    runs = commands.add_parser("runs", help=cmd_runs.__doc__)
    runs.add_argument("action", nargs="?", choices=("list", "show", "cancel"), default="list")
    runs.add_argument("run_id", nargs="?", help="the run (show, cancel)")
    runs.add_argument("--limit", type=int, default=20, help="list: how many runs")
    runs.add_argument("--json", action="store_true", help="the records as JSON")
    runs.set_defaults(run=cmd_runs)

    candidates = commands.add_parser("candidates", help=cmd_candidates.__doc__)
    candidates.add_argument("--study", default=_only_study(), help="study id")
    candidates.add_argument("--fhir-url", help="FHIR base URL (default: $FHIR_BASE_URL)")
    candidates.add_argument("--format", choices=("text", "ndjson"), default="text")
    candidates.add_argument(
        "--tag", help="the list of runs with this run tag (default: $FHIR_MATCH_TAG)"
    )
    candidates.set_defaults(run=cmd_candidates)

    review = commands.add_parser("review", help=cmd_review.__doc__)
    review.add_argument("--host", help="address to listen on (default: 127.0.0.1)")
    review.add_argument("--port", type=int, help="port (default: $FHIR_MATCH_REVIEW_PORT or 8765)")
    review.set_defaults(run=cmd_review)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except ConfigError as exc:
        fatal(str(exc), EXIT_CONFIG)
    except FhirError as exc:
        fatal(str(exc), EXIT_UNAVAILABLE if exc.status is None else EXIT_FAILURE)
    except FhirMatchError as exc:
        fatal(str(exc), EXIT_FAILURE)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
