"""FHIR JSON from files and folders: Bundles of any type, single resources, and NDJSON.

Every resource comes out with its references made local (``Patient/123``), whatever form the
file used (``urn:uuid:`` full URLs in a transaction, absolute URLs in a searchset). A file or
line that cannot be read becomes a DataIssue, and reading goes on with the next one.
"""

from __future__ import annotations

import codecs
import gzip
import os
import re
import stat
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from fhir_match.records import DataIssue, Json

__all__ = [
    "FHIR_SUFFIXES",
    "Keep",
    "Located",
    "fhir_files",
    "loads",
    "localise_references",
    "map_references",
    "read_located",
    "read_resources",
    "references_in_text",
]

FHIR_SUFFIXES = (".json", ".ndjson", ".jsonl", ".json.gz", ".ndjson.gz", ".jsonl.gz")
_LOCAL_REF = re.compile(r"(?:^|/)([A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")
_REFERENCE = re.compile(r'"reference"\s*:\s*"([^"\\]*)"')
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)

OnIssue = Callable[[DataIssue], None]
Keep = Callable[[Json], bool]
"""Which resources a reader passes on; asked only once a resource is known to be well formed,
so that what it leaves out is never input that would have been reported."""


class Located(NamedTuple):
    """A resource and where it was read (``file:line``, ``file entry 3``): what a DataIssue
    about it names, as its content may not be shown."""

    resource: Json
    where: str


def fhir_files(path: Path) -> list[Path]:
    """The FHIR files at ``path``: the file itself, or every entry with a FHIR file name below a
    folder, sorted, sub-folders behind symbolic links included (each folder once, so a link
    loop ends) and each file once. Entries that may not be readable (a dangling link, a FIFO)
    are listed too: reading reports them."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"no such file or folder: {path}")
    found: dict[str, Path] = {}
    seen_folders: set[tuple[int, int]] = set()
    for folder, subfolders, names in os.walk(path, followlinks=True):
        info = os.stat(folder)
        if (info.st_dev, info.st_ino) in seen_folders:
            subfolders.clear()
            continue
        seen_folders.add((info.st_dev, info.st_ino))
        for name in names:
            if name.endswith(FHIR_SUFFIXES):
                entry = Path(folder) / name
                found.setdefault(os.path.realpath(entry), entry)
    return sorted(found.values())


def read_resources(paths: Iterable[Path], on_issue: OnIssue) -> Iterator[Json]:
    """Every resource in ``paths``, Bundles unpacked, in file order."""
    for located in read_located(paths, on_issue):
        yield located.resource


def read_located(
    paths: Iterable[Path], on_issue: OnIssue, keep: Keep | None = None
) -> Iterator[Located]:
    """Every resource in ``paths`` with where it was read, Bundles unpacked, in file order;
    with ``keep``, only those it accepts (it sees a single resource before its references are
    made local, so that one it refuses costs no more than its parse).
    A file that cannot be read, or stops being readable part way (a truncated or corrupt
    gzip), costs what could not be read, and is reported."""
    for path in paths:
        problem = _not_a_regular_file(path)
        if problem:
            on_issue(DataIssue(str(path), f"cannot read file: {problem}"))
            continue
        ndjson = path.name.removesuffix(".gz").endswith((".ndjson", ".jsonl"))
        try:
            with _open(path) as stream:
                if ndjson:
                    yield from _lines(stream, str(path), on_issue, keep)
                else:
                    yield from _whole(stream.read(), str(path), on_issue, keep)
        except (OSError, EOFError, zlib.error) as exc:
            on_issue(DataIssue(str(path), f"cannot read file (further): {_os_reason(exc)}"))


def _not_a_regular_file(path: Path) -> str:
    """Why ``path`` cannot be opened for reading without risk (a FIFO would block), or ""."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        return _os_reason(exc)
    return "" if stat.S_ISREG(mode) else "not a regular file"


def _os_reason(exc: BaseException) -> str:
    """An OS or compression error in words of our own: without the file name (the issue names
    the file) and without the bytes some gzip errors quote."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, EOFError):
        return "the compressed data ends too early (truncated)"
    return "not gzip, or corrupt gzip data"


def _open(path: Path) -> Any:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")
    return path.open("rb")


def _lines(stream: Any, name: str, on_issue: OnIssue, keep: Keep | None) -> Iterator[Located]:
    """NDJSON: one resource per line; a line that is not UTF-8 costs that line only."""
    first = stream.readline()
    if first.startswith(_UTF16_BOMS):
        text = _decoded(first + stream.read(), name, on_issue)
        if text is not None:
            yield from _text_lines(text.splitlines(), name, on_issue, keep)
        return
    number = 0
    for number, line in enumerate(_chain(first, stream), start=1):
        if line.strip() and not (keep is not None and _refused(line, keep)):
            yield from _line(line, number, name, on_issue, keep)


def _refused(line: bytes, keep: Keep) -> bool:
    """Whether ``keep`` refuses the line's resource, decided on its bytes without what reading
    it costs besides the parse (decoding, references, Located). A line that is anything but a
    well-formed single resource, or that ``keep`` accepts, is read as usual: reported if it
    must be, so a refused line is never one that would have been reported."""
    try:
        data = loads(line)
    except orjson.JSONDecodeError:
        return False
    if _not_a_resource(data) or data["resourceType"] == "Bundle":
        return False
    return line.count(b"[") + line.count(b"{") <= _MAX_DEPTH and not keep(data)


def _chain(first: bytes, stream: Iterable[bytes]) -> Iterator[bytes]:
    yield first.removeprefix(codecs.BOM_UTF8)
    yield from stream


def _text_lines(
    lines: list[str], name: str, on_issue: OnIssue, keep: Keep | None
) -> Iterator[Located]:
    for number, line in enumerate(lines, start=1):
        if line.strip():
            yield from _document(line, f"{name}:{number}", on_issue, keep)


def _line(
    line: bytes, number: int, name: str, on_issue: OnIssue, keep: Keep | None
) -> Iterator[Located]:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        on_issue(DataIssue(f"{name}:{number}", "not UTF-8 text (FHIR JSON is UTF-8)"))
        return
    yield from _document(text, f"{name}:{number}", on_issue, keep)


def _whole(data: bytes, name: str, on_issue: OnIssue, keep: Keep | None) -> Iterator[Located]:
    text = _decoded(data, name, on_issue)
    if text is not None:
        yield from _document(text, name, on_issue, keep)


def _decoded(data: bytes, name: str, on_issue: OnIssue) -> str | None:
    """The text of a file: UTF-8 (a byte order mark dropped), or UTF-16 when it starts with
    one's byte order mark; anything else is reported at its first bad line, not guessed."""
    if data.startswith(_UTF16_BOMS):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            on_issue(DataIssue(name, "not valid UTF-16 text after a UTF-16 byte order mark"))
            return None
    try:
        return data.removeprefix(codecs.BOM_UTF8).decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        on_issue(DataIssue(f"{name}:{line}", "not UTF-8 text (FHIR JSON is UTF-8)"))
        return None


def loads(text: str | bytes) -> Any:
    """JSON by orjson, which also refuses what FHIR JSON may not hold and later stages could
    not write back: NaN, numbers beyond a double, lone surrogates, nesting beyond 1024."""
    return orjson.loads(text)


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


_MAX_DEPTH = 64
"""Deeper than any FHIR resource nests (contained resources and extensions included); deeper
documents are refused before anything walks them."""


def _document(text: str, where: str, on_issue: OnIssue, keep: Keep | None) -> Iterator[Located]:
    try:
        data = loads(text)
    except orjson.JSONDecodeError as exc:
        on_issue(DataIssue(where, f"invalid JSON: {exc}"))
        return
    problem = _not_a_resource(data)
    if problem:
        on_issue(DataIssue(where, problem))
    elif text.count("[") + text.count("{") > _MAX_DEPTH and _too_deep(data):
        on_issue(DataIssue(where, f"nested deeper than {_MAX_DEPTH} levels: not FHIR"))
    elif data["resourceType"] == "Bundle":
        yield from _bundle(data, where, on_issue, keep)
    elif keep is not None and not keep(data):
        return
    elif _all_local(text):
        yield Located(data, where)  # localising would change nothing: the resource is not walked
    else:
        yield Located(localise_references(data, {}), where)


def _too_deep(data: Any) -> bool:
    """Whether ``data`` nests deeper than _MAX_DEPTH; walked with a stack, not recursion."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > _MAX_DEPTH:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def _not_a_resource(data: Any) -> str:
    if not isinstance(data, dict):
        return f"not a FHIR resource: a JSON {type(data).__name__}, not an object"
    kind = data.get("resourceType")
    if not isinstance(kind, str) or not re.fullmatch(r"[A-Z][A-Za-z]{1,63}", kind):
        return "not a FHIR resource: no resourceType"
    resource_id = data.get("id")
    if resource_id is not None and not (
        isinstance(resource_id, str) and _ID.fullmatch(resource_id)
    ):
        return f"invalid {kind}.id (FHIR ids are 1-64 letters, digits, '-' and '.')"
    return ""


def _bundle(bundle: Json, where: str, on_issue: OnIssue, keep: Keep | None) -> Iterator[Located]:
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
            uuid = full_url.removeprefix("urn:uuid:")
            if "id" not in resource and full_url != uuid and _ID.fullmatch(uuid):
                resource["id"] = uuid
            if "id" in resource:
                aliases[full_url] = f"{resource['resourceType']}/{resource['id']}"
        resources.append((index, resource))
    for index, resource in resources:
        if resource["resourceType"] == "Bundle":
            yield from _bundle(resource, f"{where} entry {index}", on_issue, keep)
            continue
        localised = localise_references(resource, aliases)
        if keep is None or keep(localised):
            yield Located(localised, f"{where} entry {index}")


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
