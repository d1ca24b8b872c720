"""FHIR JSON from files and folders: Bundles of any type, single resources, and NDJSON.

Every resource comes out with its references made local (``Patient/123``), whatever form the
file used (``urn:uuid:`` full URLs in a transaction, absolute URLs in a searchset). A file or
line that cannot be read becomes a DataIssue, and reading goes on with the next one.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import orjson

from fhir_match.records import DataIssue, Json

__all__ = [
    "FHIR_SUFFIXES",
    "fhir_files",
    "loads",
    "localise_references",
    "map_references",
    "read_resources",
    "read_text_resources",
    "references_in_text",
]

FHIR_SUFFIXES = (".json", ".ndjson", ".jsonl", ".json.gz", ".ndjson.gz", ".jsonl.gz")
_LOCAL_REF = re.compile(r"(?:^|/)([A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")
_REFERENCE = re.compile(r'"reference"\s*:\s*"([^"\\]*)"')

OnIssue = Callable[[DataIssue], None]


def fhir_files(path: Path) -> list[Path]:
    """The FHIR files at ``path``: the file itself, or every FHIR file below a folder, sorted."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"no such file or folder: {path}")
    return sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(FHIR_SUFFIXES))


def _open(path: Path) -> IO[str]:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def read_resources(paths: Iterable[Path], on_issue: OnIssue) -> Iterator[Json]:
    """Every resource in ``paths``, Bundles unpacked, in file order."""
    for path in paths:
        try:
            with _open(path) as stream:
                ndjson = path.name.removesuffix(".gz").endswith((".ndjson", ".jsonl"))
                yield from read_text_resources(stream, str(path), ndjson, on_issue)
        except (OSError, UnicodeDecodeError, EOFError) as exc:
            on_issue(DataIssue(str(path), f"cannot read file: {type(exc).__name__}: {exc}"))


def read_text_resources(
    stream: IO[str], name: str, ndjson: bool, on_issue: OnIssue
) -> Iterator[Json]:
    """The resources in one text stream: one JSON document, or one per line (NDJSON)."""
    if not ndjson:
        yield from _document(stream.read(), name, on_issue)
        return
    for number, line in enumerate(stream, start=1):
        if line.strip():
            yield from _document(line, f"{name}:{number}", on_issue)


def loads(text: str | bytes) -> Any:
    """JSON by orjson (several times faster than json); what orjson refuses (invalid JSON, NaN)
    goes to json, which accepts what it always did and says where the error is."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def references_in_text(text: str | bytes) -> list[str] | None:
    """Every ``reference`` string of a JSON text, read from the text itself (a regular expression
    is far cheaper than walking the parsed document); None when the text may hold one that the
    expression cannot read exactly (an escape sequence, a "reference" that is not a string key)."""
    if isinstance(text, bytes):
        text = text.decode()
    if "\\" in text:
        return None
    found: list[str] = _REFERENCE.findall(text)
    return found if len(found) == text.count('"reference"') else None


def _document(text: str, where: str, on_issue: OnIssue) -> Iterator[Json]:
    try:
        data = loads(text)
    except json.JSONDecodeError as exc:
        on_issue(
            DataIssue(where, f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")
        )
        return
    problem = _not_a_resource(data)
    if problem:
        on_issue(DataIssue(where, problem))
    elif data["resourceType"] == "Bundle":
        yield from _bundle(data, where, on_issue)
    elif _all_local(text):
        yield data  # localising would change nothing: the resource is not walked
    else:
        yield localise_references(data, {})


def _not_a_resource(data: Any) -> str:
    if not isinstance(data, dict):
        return f"not a FHIR resource: a JSON {type(data).__name__}, not an object"
    kind = data.get("resourceType")
    if not isinstance(kind, str) or not kind[:1].isupper():
        return "not a FHIR resource: no resourceType"
    resource_id = data.get("id")
    if resource_id is not None and not (
        isinstance(resource_id, str) and re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", resource_id)
    ):
        return f"invalid {kind}.id (FHIR ids are 1-64 letters, digits, '-' and '.')"
    return ""


def _bundle(bundle: Json, where: str, on_issue: OnIssue) -> Iterator[Json]:
    """Unpack a Bundle of any type; give id-less entries the id of their ``urn:uuid:`` full URL
    and rewrite references to full URLs into local ``Type/id`` references."""
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        on_issue(DataIssue(where, "invalid Bundle: entry is not a list"))
        return
    aliases: dict[str, str] = {}
    resources: list[tuple[int, Json]] = []
    for index, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if resource is None:
            continue  # e.g. a DELETE in a transaction, or a response without a body
        problem = _not_a_resource(resource)
        if problem:
            on_issue(DataIssue(f"{where} entry {index}", problem))
            continue
        full_url = entry.get("fullUrl")
        if isinstance(full_url, str):
            if "id" not in resource and full_url.startswith("urn:uuid:"):
                resource["id"] = full_url.removeprefix("urn:uuid:")
            if "id" in resource:
                aliases[full_url] = f"{resource['resourceType']}/{resource['id']}"
        resources.append((index, resource))
    for index, resource in resources:
        if resource["resourceType"] == "Bundle":
            yield from _bundle(resource, f"{where} entry {index}", on_issue)
        else:
            yield localise_references(resource, aliases)


def map_references(value: Any, change: Callable[[str], str]) -> Any:
    """Replace, in place, every ``reference`` string inside ``value`` by ``change(reference)``."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "reference" and isinstance(item, str):
                value[key] = change(item)
            elif isinstance(item, dict | list):
                map_references(item, change)
    elif isinstance(value, list):
        for item in value:
            map_references(item, change)
    return value


def localise_references(value: Any, aliases: dict[str, str]) -> Any:
    """Rewrite every ``reference`` to ``Type/id`` where it can be done without guessing:
    a known full URL, an absolute URL ending in ``Type/id``, or a ``_history`` suffix."""
    return map_references(value, lambda reference: _local(reference, aliases))


def _all_local(text: str) -> bool:
    """Whether every reference in a single resource's text is already local."""
    found = references_in_text(text)
    return found is not None and all(_local(r, {}) == r for r in found)


def _local(reference: str, aliases: dict[str, str]) -> str:
    if reference in aliases:
        return aliases[reference]
    if reference.startswith("#") or reference.startswith("urn:"):
        return reference
    match = _LOCAL_REF.search(reference)
    return match.group(1) if match else reference
