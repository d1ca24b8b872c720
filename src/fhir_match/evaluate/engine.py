"""The bridge to the CQL engine: CQL-to-ELM translation, and one long-lived Node process that
evaluates a CQL library over batches of FHIR R4 patient Bundles.

No Python package executes CQL correctly, so the official JavaScript tools do the work
(node/translate.mjs and node/serve.mjs; the wire protocol is documented at the top of
serve.mjs). This module is the only place that sees subprocesses and Node: their failures
leave it as :class:`~fhir_match.errors.EngineError`, a library the engine refuses to load as
:class:`~fhir_match.errors.ConfigError`, and CQL that does not translate as
:class:`~fhir_match.errors.TranslationError`. A patient whose evaluation raises is data, not
an exception: it comes back as a :class:`PatientFailure` beside the other patients' values.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import selectors
import shutil
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Protocol, TypeAlias, cast

import orjson

from fhir_match.config import PROJECT_DIR
from fhir_match.errors import ConfigError, EngineError, TranslationError

__all__ = [
    "CQL_DIR",
    "DEFAULT_ELM_DIR",
    "DEFAULT_REQUEST_TIMEOUT_S",
    "DEFAULT_TRANSLATE_TIMEOUT_S",
    "Bundle",
    "CqlEvaluator",
    "JsonValue",
    "NodeCqlEngine",
    "ParameterValue",
    "PatientFailure",
    "PatientOutcome",
    "PatientValues",
    "SystemCode",
    "retrieved_types",
    "translate_cql",
    "value_sets_used",
]

log = logging.getLogger(__name__)

NODE_DIR = PROJECT_DIR / "node"
CQL_DIR = PROJECT_DIR / "cql"
DEFAULT_ELM_DIR = PROJECT_DIR / "build" / "elm"
_SERVE_SCRIPT = NODE_DIR / "serve.mjs"
_TRANSLATE_SCRIPT = NODE_DIR / "translate.mjs"

DEFAULT_REQUEST_TIMEOUT_S = 120.0
"""Longest wait for one answer from the engine: a start and load, or one batch of patients."""
DEFAULT_TRANSLATE_TIMEOUT_S = 300.0
_CLOSE_TIMEOUT_S = 5.0
"""How long a closing engine may take to exit by itself before it is killed."""
_STDERR_TAIL_CHARS = 1000
_READ_CHUNK = 1 << 16

JsonValue: TypeAlias = bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"] | None
SystemCode: TypeAlias = tuple[str, str]
"""A (system, code) pair, as value set expansions hold them."""
ParameterValue: TypeAlias = JsonValue | date
"""A CQL parameter: JSON as serve.mjs documents it; a date or datetime becomes its ISO string."""
Bundle: TypeAlias = Mapping[str, object]
"""A FHIR R4 Bundle (JSON) holding one Patient and that patient's resources."""

_LOCATED = re.compile(r"^.+:\d+:\d+: ")


@dataclass(frozen=True)
class PatientValues:
    """One patient's value for every expression evaluated, as plain JSON."""

    patient_id: str
    values: Mapping[str, JsonValue]


@dataclass(frozen=True)
class PatientFailure:
    """The engine raised while evaluating one patient.

    ``message`` names the CQL definition and location that failed, never patient data.
    ``patient_id`` is None when the Bundle had no Patient with an id.
    """

    patient_id: str | None
    message: str


PatientOutcome: TypeAlias = PatientValues | PatientFailure


class CqlEvaluator(Protocol):
    """What the evaluate stage needs from a CQL engine; tests can fake it at this seam."""

    def add_codes(self, codes: Mapping[str, Iterable[SystemCode]]) -> None:
        """Add (system, code) pairs to value set expansions, keyed by value set URL."""
        ...

    def evaluate(
        self, bundles: Sequence[Bundle], expressions: Sequence[str] | None = None
    ) -> list[PatientOutcome]:
        """One outcome per Bundle, in order: all public expressions, or the ones named."""
        ...


class _ProcessGone(Exception):
    """The Node process exited or closed its pipes (internal: the engine restarts it)."""


class _NodeProcess:
    """One running node/serve.mjs: a request out, one response line back, under a deadline.

    All three pipes are non-blocking and driven by one selector, so neither a stuck engine
    nor a full stderr pipe can block a call past its deadline.
    """

    def __init__(self, node: str) -> None:
        try:
            self._proc = subprocess.Popen(  # noqa: S603 -- fixed script, resolved node binary
                [node, str(_SERVE_SCRIPT)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=NODE_DIR,
                bufsize=0,
            )
        except OSError as exc:
            raise EngineError(f"cannot start the CQL engine ({_SERVE_SCRIPT}): {exc}") from exc
        self._stdin = cast(IO[bytes], self._proc.stdin)
        self._stdout = cast(IO[bytes], self._proc.stdout)
        self._stderr = cast(IO[bytes], self._proc.stderr)
        for pipe in (self._stdin, self._stdout, self._stderr):
            os.set_blocking(pipe.fileno(), False)
        self._out = bytearray()
        self._err = bytearray()
        self._stderr_tail = ""
        self._last_id = 0

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def alive(self) -> bool:
        return self._proc.poll() is None

    def request(self, payload: Mapping[str, object], timeout_s: float) -> dict[str, object]:
        """Send one request and return its response; TimeoutError or _ProcessGone otherwise."""
        self._last_id += 1
        # orjson: the Bundles of a batch are most of the bytes, and it writes them ~5x faster.
        line = orjson.dumps({"id": self._last_id, **payload}, default=_plain_mapping)
        answer = self._exchange(line + b"\n", time.monotonic() + timeout_s)
        try:
            response = orjson.loads(answer)
        except ValueError:
            response = None
        if not isinstance(response, dict) or response.get("id") != self._last_id:
            # Out of step: no later answer could be trusted either. The next call restarts it.
            self.kill()
            raise EngineError("the CQL engine answered out of step with the protocol; stopped it")
        return response

    def _exchange(self, data: bytes, deadline: float) -> bytes:
        pending = memoryview(data)
        with selectors.DefaultSelector() as selector:
            selector.register(self._stdin, selectors.EVENT_WRITE)
            selector.register(self._stdout, selectors.EVENT_READ)
            selector.register(self._stderr, selectors.EVENT_READ)
            while True:
                end = self._out.find(b"\n")
                if end >= 0:
                    answer = bytes(self._out[:end])
                    del self._out[: end + 1]
                    return answer
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                for key, _ in selector.select(remaining):
                    if key.fileobj is self._stdin:
                        pending = self._write(pending)
                        if not pending:
                            selector.unregister(self._stdin)
                    elif not self._read(cast(IO[bytes], key.fileobj)):
                        if key.fileobj is self._stdout:
                            raise _ProcessGone
                        selector.unregister(self._stderr)

    def _write(self, pending: memoryview) -> memoryview:
        try:
            written = os.write(self._stdin.fileno(), pending[:_READ_CHUNK])
        except BlockingIOError:
            return pending
        except (BrokenPipeError, ConnectionResetError):
            raise _ProcessGone from None
        return pending[written:]

    def _read(self, pipe: IO[bytes]) -> bool:
        """Read what is there; False at end of file."""
        try:
            chunk = os.read(pipe.fileno(), _READ_CHUNK)
        except BlockingIOError:
            return True
        if not chunk:
            return False
        if pipe is self._stdout:
            self._out += chunk
        else:
            self._keep_stderr(chunk)
        return True

    def _keep_stderr(self, chunk: bytes) -> None:
        self._err += chunk
        *lines, rest = self._err.split(b"\n")
        self._err = bytearray(rest)
        for raw in lines:
            text = raw.decode(errors="replace").rstrip()
            if text:
                log.warning("CQL engine (pid %d): %s", self._proc.pid, text)
                self._stderr_tail = (self._stderr_tail + "\n" + text)[-_STDERR_TAIL_CHARS:]

    def stderr_tail(self) -> str:
        """The last lines the process wrote on stderr (after it died: why it died)."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=1.0)
        with contextlib.suppress(OSError):  # BlockingIOError: a live process has no more now
            while chunk := os.read(self._stderr.fileno(), _READ_CHUNK):
                self._keep_stderr(chunk)
        self._keep_stderr(b"\n")
        return self._stderr_tail.strip() or f"exit status {self._proc.poll()}"

    def close(self) -> None:
        """Let the process end by closing its stdin; kill it if it does not."""
        with contextlib.suppress(OSError):
            self._stdin.close()
        try:
            self._proc.wait(timeout=_CLOSE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
        self._close_pipes()

    def kill(self) -> None:
        """Stop the process if it still runs, reap it, and release its pipes."""
        if self.alive:
            self._proc.kill()
        self._proc.wait(timeout=_CLOSE_TIMEOUT_S)
        self._close_pipes()

    def _close_pipes(self) -> None:
        for pipe in (self._stdin, self._stdout, self._stderr):
            with contextlib.suppress(OSError):
                pipe.close()


class NodeCqlEngine:
    """A :class:`CqlEvaluator` backed by one long-lived Node process (node/serve.mjs).

    The process starts on first use and loads the library with the value set expansions and
    parameters given here. If it dies it is started again and the library reloaded, including
    every code added since, so a restart changes no result; a call during which it dies is
    sent once more. Every request has a deadline; an engine that misses it is killed and the
    call raises EngineError. One engine serves one thread: use one per worker.

    ``now`` fixes CQL's Now() and Today(); it defaults to the time the engine was created, so
    that restarts do not change it either.
    """

    def __init__(
        self,
        library: str,
        *,
        version: str | None = None,
        value_sets: Mapping[str, Iterable[SystemCode]] | None = None,
        parameters: Mapping[str, ParameterValue] | None = None,
        elm_dir: Path = DEFAULT_ELM_DIR,
        now: datetime | None = None,
        timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
        node: str = "node",
    ) -> None:
        if timeout_s <= 0:
            raise ConfigError("the CQL engine timeout must be a positive number of seconds")
        self._library = library
        self._version = version
        self._elm_dir = elm_dir.resolve()
        self._value_sets = {url: set(codes) for url, codes in (value_sets or {}).items()}
        self._parameters = {name: _parameter_json(v) for name, v in (parameters or {}).items()}
        self._now = (now or datetime.now(UTC)).isoformat(timespec="milliseconds")
        self._timeout_s = timeout_s
        self._node = node
        self._process: _NodeProcess | None = None
        self._expressions: tuple[str, ...] = ()

    def __enter__(self) -> NodeCqlEngine:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        """The engine's process id while it runs (for diagnostics and tests)."""
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        """Start the engine and load the library now rather than on first use."""
        self._running()

    def expression_names(self) -> tuple[str, ...]:
        """The library's public Patient-context expressions, in definition order."""
        self._running()
        return self._expressions

    def add_codes(self, codes: Mapping[str, Iterable[SystemCode]]) -> None:
        """Add (system, code) pairs to the expansions (value sets not given are created).

        Kept for the engine's life and re-sent if it restarts. Codes already present cost
        nothing, so a caller may add every code it sees under a value set's hierarchy.
        """
        new: dict[str, list[dict[str, str]]] = {}
        for url, pairs in codes.items():
            known = self._value_sets.setdefault(url, set())
            for system, code in pairs:
                if (system, code) not in known:
                    known.add((system, code))
                    new.setdefault(url, []).append({"system": system, "code": code})
        if new and self._process is not None and self._process.alive:
            self._call({"op": "add-codes", "valueSets": new})

    def evaluate(
        self, bundles: Sequence[Bundle], expressions: Sequence[str] | None = None
    ) -> list[PatientOutcome]:
        """One outcome per Bundle, in order: all public expressions, or the ones named."""
        if not bundles:
            return []
        request: dict[str, object] = {"op": "evaluate", "bundles": list(bundles)}
        if expressions is not None:
            request["expressions"] = list(expressions)
        results = self._call(request).get("results")
        if not isinstance(results, list) or len(results) != len(bundles):
            raise EngineError("the CQL engine answered evaluate without one result per Bundle")
        return [_outcome(item) for item in results]

    def close(self) -> None:
        """Stop the engine; a later call starts it again."""
        if self._process is not None:
            self._process.close()
            self._process = None

    def _running(self) -> _NodeProcess:
        """The live process, started and loaded if there is none."""
        if self._process is not None:
            if self._process.alive:
                return self._process
            log.warning("the CQL engine (pid %d) has exited; restarting it", self._process.pid)
            self._discard()
        node = shutil.which(self._node)
        if node is None:
            raise EngineError(f"cannot start the CQL engine: {self._node!r} is not on PATH")
        process = _NodeProcess(node)
        self._process = process
        try:
            response = process.request(self._load_request(), self._timeout_s)
        except _ProcessGone:
            detail = process.stderr_tail()
            self._discard()
            hint = " (run `npm ci` in node/)" if "ERR_MODULE_NOT_FOUND" in detail else ""
            raise EngineError(f"the CQL engine exited while starting{hint}: {detail}") from None
        except TimeoutError:
            self._discard()
            raise EngineError(
                f"the CQL engine did not load {self._library} within {self._timeout_s:g} s"
            ) from None
        if response.get("ok") is not True:
            self._discard()
            raise ConfigError(
                f"the CQL engine cannot load {self._library}: {response.get('error')}"
            )
        names = response.get("expressions")
        self._expressions = tuple(str(n) for n in names) if isinstance(names, list) else ()
        return process

    def _load_request(self) -> dict[str, object]:
        return {
            "op": "load",
            "elmDir": str(self._elm_dir),
            "library": self._library,
            "version": self._version,
            "valueSets": {
                url: [{"system": s, "code": c} for s, c in sorted(codes)]
                for url, codes in self._value_sets.items()
            },
            "parameters": self._parameters,
            "now": self._now,
        }

    def _call(self, request: Mapping[str, object]) -> dict[str, object]:
        """One request, sent once more if the engine died under it."""
        op = request["op"]
        try:
            response = self._send(request)
        except _ProcessGone as gone:
            log.warning("the CQL engine exited during %s (%s); restarting it", op, gone)
            try:
                response = self._send(request)
            except _ProcessGone as again:
                raise EngineError(f"the CQL engine exited twice during {op}: {again}") from None
        if response.get("ok") is not True:
            raise EngineError(f"the CQL engine refused {op}: {response.get('error')}")
        return response

    def _send(self, request: Mapping[str, object]) -> dict[str, object]:
        process = self._running()
        try:
            return process.request(request, self._timeout_s)
        except _ProcessGone:
            detail = process.stderr_tail()
            self._discard()
            raise _ProcessGone(detail) from None
        except TimeoutError:
            self._discard()
            raise EngineError(
                f"the CQL engine did not answer {request['op']} within {self._timeout_s:g} s;"
                " stopped it"
            ) from None

    def _discard(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process = None


def _plain_mapping(value: object) -> dict[str, object]:
    """orjson writes dicts only; a Bundle may be any Mapping."""
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def _parameter_json(value: ParameterValue) -> JsonValue:
    """Dates travel as ISO 8601 strings; serve.mjs converts them by the declared CQL type."""
    if isinstance(value, datetime):
        return value.isoformat(timespec="milliseconds")
    if isinstance(value, date):
        return value.isoformat()
    return value


def _outcome(item: object) -> PatientOutcome:
    if not isinstance(item, dict):
        raise EngineError("the CQL engine answered evaluate with a result that is not an object")
    patient_id = item.get("patientId")
    if "error" in item:
        return PatientFailure(
            patient_id if isinstance(patient_id, str) else None, str(item["error"])
        )
    values = item.get("values")
    if not isinstance(patient_id, str) or not isinstance(values, dict):
        raise EngineError("the CQL engine answered evaluate with a malformed patient result")
    return PatientValues(patient_id, cast(dict[str, JsonValue], values))


def translate_cql(
    source_dirs: Sequence[Path] = (CQL_DIR,),
    out_dir: Path = DEFAULT_ELM_DIR,
    *,
    force: bool = False,
    node: str = "node",
    timeout_s: float = DEFAULT_TRANSLATE_TIMEOUT_S,
) -> Path:
    """Translate every ``*.cql`` file in ``source_dirs`` to ELM JSON in ``out_dir``.

    Includes resolve across all the directories. Nothing is redone when no source changed
    (unless ``force``). Returns ``out_dir``; raises TranslationError listing each error as
    ``path/File.cql:LINE:COL: message`` (paths relative to the checkout where possible).
    """
    executable = shutil.which(node)
    if executable is None:
        raise EngineError(f"cannot run the CQL translator: {node!r} is not on PATH")
    command = [executable, str(_TRANSLATE_SCRIPT), "--out", str(out_dir)]
    command += ["--force"] if force else []
    command += [str(d) for d in source_dirs]
    try:
        done = subprocess.run(  # noqa: S603 -- fixed script, resolved node binary
            command,
            cwd=PROJECT_DIR,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise EngineError(f"the CQL translator did not finish within {timeout_s:g} s") from None
    except OSError as exc:
        raise EngineError(f"cannot run the CQL translator: {exc}") from exc
    if done.returncode == 0:
        return out_dir
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    located = [line for line in lines if _LOCATED.match(line)]
    if done.returncode == 1 and located:
        raise TranslationError(located)
    if done.returncode == 2:  # bad usage, such as a source directory that does not exist
        raise TranslationError(lines[-1:])
    raise EngineError(
        f"the CQL translator failed (exit status {done.returncode}): "
        f"{' / '.join(lines[-3:]) or 'no message'}"
    )


def _library_closure(library: str, version: str | None, elm_dir: Path) -> list[dict[str, Any]]:
    """The ELM of a translated library and of every library it includes, each once."""
    libraries = {}
    for path in elm_dir.glob("[!.]*.json"):  # not the translator's .manifest.json
        elm = json.loads(path.read_text(encoding="utf-8"))["library"]
        identifier = elm["identifier"]
        libraries[(identifier["id"], identifier.get("version"))] = elm
    found: list[dict[str, Any]] = []
    pending = [(library, version)]
    seen: set[tuple[str, str | None]] = set()
    while pending:
        key = pending.pop()
        if key in seen:
            continue
        seen.add(key)
        match = libraries.get(key) or next(
            (elm for (name, _), elm in libraries.items() if name == key[0] and key[1] is None),
            None,
        )
        if match is None:
            raise ConfigError(f"no translated library {key[0]} {key[1] or ''} in {elm_dir}")
        found.append(match)
        pending.extend(
            (d["path"], d.get("version")) for d in (match.get("includes") or {}).get("def", [])
        )
    return found


def value_sets_used(
    library: str, version: str | None = None, elm_dir: Path = DEFAULT_ELM_DIR
) -> frozenset[str]:
    """The URLs of every value set a translated library and its includes declare."""
    return frozenset(
        d["id"]
        for elm in _library_closure(library, version, elm_dir)
        for d in (elm.get("valueSets") or {}).get("def", [])
    )


_FHIR_TYPE = re.compile(r'"dataType":\s*"\{http://hl7.org/fhir\}([A-Za-z]+)"')


def retrieved_types(
    library: str, version: str | None = None, elm_dir: Path = DEFAULT_ELM_DIR
) -> frozenset[str]:
    """The FHIR resource types a translated library and its includes retrieve: what a
    patient's record must hold for the rules, so discovery fetches these and no others."""
    return frozenset(
        name
        for elm in _library_closure(library, version, elm_dir)
        for name in _FHIR_TYPE.findall(json.dumps(elm.get("statements") or {}))
    )
