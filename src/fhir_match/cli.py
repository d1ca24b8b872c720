"""The ``fhir-match`` command: flags and environment to Settings, one subcommand, exit codes."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import NoReturn

from fhir_match import __version__
from fhir_match.config import PROJECT_DIR, Settings, load_settings, mask_url_password
from fhir_match.errors import ConfigError, FhirError, FhirMatchError

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
        settings = Settings(settings.fhir.with_base_url(args.fhir_url), settings.redis_url)
    return settings


def cmd_status(args: argparse.Namespace) -> int:
    """Check that the FHIR server, Redis and a worker answer, and that the worker reaches FHIR."""
    from fhir_match.fhir import FhirClient
    from fhir_match.server import describe_server

    settings = _settings(args)
    report: dict[str, object] = {"settings": settings.as_json()}
    with FhirClient(settings.fhir) as client:
        report["fhir_server"] = describe_server(client)
    if args.worker:
        import redis

        from worker.tasks import check_fhir_server

        try:
            redis.Redis.from_url(settings.redis_url, socket_timeout=5).ping()
        except redis.RedisError as exc:
            where = mask_url_password(settings.redis_url)
            fatal(f"Redis at {where} did not answer: {exc}", EXIT_UNAVAILABLE)
        result = check_fhir_server.delay(settings.fhir.base_url)
        try:
            report["worker"] = result.get(timeout=WORKER_TIMEOUT_S)
        except TimeoutError:
            fatal(f"no worker answered within {WORKER_TIMEOUT_S:.0f}s", EXIT_UNAVAILABLE)
    print(json.dumps(report, indent=2))
    return EXIT_OK


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def cmd_screen(args: argparse.Namespace) -> int:
    """Screen patients in FHIR files against a study's criteria; one JSON line per patient."""
    from fhir_match.evaluate.engine import NodeCqlEngine, translate_cql
    from fhir_match.evaluate.study import load_study
    from fhir_match.screen import load_normaliser, screen

    study = load_study(args.study)
    translate_cql()
    normaliser = load_normaliser(study)
    parameters = {"As Of": args.as_of, **study.parameters}
    engine = NodeCqlEngine(
        study.library,
        version=study.library_version,
        value_sets=normaliser.terminology.expansions,
        parameters=parameters,
    )
    output = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout  # noqa: SIM115
    try:
        with engine:
            summary = screen(args.input, study, args.as_of, normaliser, engine, output)
    except FileNotFoundError as exc:
        fatal(str(exc), EXIT_CONFIG)
    finally:
        if output is not sys.stdout:
            output.close()
    print(summary.report(), file=sys.stderr)
    return EXIT_OK if summary.complete else EXIT_FAILURE


def cmd_synth(args: argparse.Namespace) -> int:
    """Write a synthetic hospital population (FHIR R4) and the answers each patient should get."""
    from fhir_match.synth.generate import generate

    summary = generate(args.patients, args.seed, args.out, args.format, as_of=args.as_of)
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
        summary = seed(client, args.input, tag, state, args.workers, _progress("patients"))
    print(f"\ntag: {tag}\n{summary_json(summary)}", file=sys.stderr)
    for issue in (summary.skipped + summary.failed)[:20]:
        print(f"  {issue}", file=sys.stderr)
    return EXIT_OK if not (summary.skipped or summary.failed) else EXIT_FAILURE


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

    screen = commands.add_parser("screen", help=cmd_screen.__doc__)
    screen.add_argument(
        "--input",
        type=Path,
        action="append",
        required=True,
        help="a FHIR JSON or NDJSON file, or a folder of them (repeatable)",
    )
    screen.add_argument("--study", default="kn5501", help="study id (default: kn5501)")
    screen.add_argument(
        "--as-of", type=_date, default=date.today(), help="screening date (default: today)"
    )
    screen.add_argument("--output", type=Path, help="write the NDJSON here (default: stdout)")
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
    synth.set_defaults(run=cmd_synth)

    seed = commands.add_parser("seed", help=cmd_seed.__doc__)
    seed.add_argument("--fhir-url", help="FHIR base URL (default: $FHIR_BASE_URL)")
    seed.add_argument("--input", type=Path, action="append", help="FHIR files or folders")
    seed.add_argument("--tag", help="the run tag (default: fhir-match-<UTC time>)")
    seed.add_argument("--remove", action="store_true", help="delete what --tag marks")
    seed.add_argument("--workers", type=int, default=4, help="transactions in flight")
    seed.set_defaults(run=cmd_seed)
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
