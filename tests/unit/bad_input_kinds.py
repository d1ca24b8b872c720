"""Kinds of bad input, and of awkward but valid FHIR, for `fhir-match screen`: each one is built
into a folder of its own, next to a good population, usually around a copy of one good patient.

A kind either must be read as if it were plain (``read``: the copy's results are the original's,
nothing is reported) or costs only itself (``skip``: it is reported with its file, and line
where it has one, and the copy's results are still the original's). Poisoned text carries
MARKER, which must never appear in a message or in the output.
"""

from __future__ import annotations

import codecs
import gzip
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

MARKER = "ZZPOISON"
PLATELETS = {"coding": [{"system": "http://loinc.org", "code": "26515-7"}]}
ITP = {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "D69.3"}]}
Json = dict[str, Any]
Expect = Literal["skip", "read"]


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


@dataclass
class Case:
    """One kind's folder and the copy of a good patient it may use."""

    folder: Path
    tag: str
    """The copy's patient id; its resources' ids start with it."""
    clone: list[Json]
    where: list[str] = field(default_factory=list)
    """What the issue about this kind must name: a path, or path:line."""
    cloned: bool = False
    """Whether the copy was written, so its results are compared with the original's."""

    @property
    def patient(self) -> str:
        return f"Patient/{self.tag}"

    def clone_lines(self) -> list[str]:
        self.cloned = True
        return [dumps(r) for r in self.clone]

    def write(self, name: str, data: str | bytes) -> Path:
        path = self.folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path

    def poisoned(self, poison: str | bytes, name: str = "clone.ndjson") -> None:
        """The copy as NDJSON with one poisoned line in the middle: the lines after it are read."""
        lines: list[bytes] = [line.encode() for line in self.clone_lines()]
        middle = len(lines) // 2
        lines.insert(middle, poison.encode() if isinstance(poison, str) else poison)
        path = self.write(name, b"\n".join(lines) + b"\n")
        self.where.append(f"{path}:{middle + 1}")

    def obs(self, **fields: Any) -> Json:
        """An extra platelet count of the copy (it would change inc-3 if it were read)."""
        resource: Json = {
            "resourceType": "Observation",
            "id": f"{self.tag}-poison",
            "status": "final",
            "code": PLATELETS,
            "subject": {"reference": self.patient},
            "effectiveDateTime": "2026-05-20",
            "valueQuantity": {"value": 20, "unit": "10*9/L"},
            "note": [{"text": MARKER}],
        }
        resource.update(fields)
        return {k: v for k, v in resource.items() if v != "@drop"}

    def condition(self, **fields: Any) -> Json:
        """An extra ITP diagnosis of the copy (it would change inc-2 if it were read)."""
        resource: Json = {
            "resourceType": "Condition",
            "id": f"{self.tag}-poison",
            "code": ITP,
            "subject": {"reference": self.patient},
            "onsetDateTime": "2026-01-10",
            "note": [{"text": MARKER}],
        }
        resource.update(fields)
        return {k: v for k, v in resource.items() if v != "@drop"}

    def raw(self, resource: Json, placeholder: str, text: str) -> str:
        """The resource's JSON with the string placeholder replaced by raw JSON text."""
        return dumps(resource).replace(f'"{placeholder}"', text)

    def bundle(self, kind: str = "collection", full_urls: str = "") -> Json:
        self.cloned = True
        entries = []
        for resource in self.clone:
            entry: Json = {"resource": resource}
            if full_urls:
                entry["fullUrl"] = f"{full_urls}{resource['resourceType']}/{resource['id']}"
            entries.append(entry)
        return {"resourceType": "Bundle", "type": kind, "entry": entries}

    def changed(self, change: Callable[[Json], Json]) -> list[str]:
        """The copy's lines, each resource changed."""
        self.cloned = True
        return [dumps(change(r)) for r in self.clone]

    def with_references(self, change: Callable[[str], str]) -> list[str]:
        """The copy's lines with every reference to its patient changed."""
        self.cloned = True
        return [
            line.replace(f'"reference": "{self.patient}"', f'"reference": "{change(self.patient)}"')
            for line in [dumps(r) for r in self.clone]
        ]


@dataclass(frozen=True)
class Kind:
    name: str
    expect: Expect
    build: Callable[[Case], object]


def _skip_poison(name: str, poison: Callable[[Case], str | bytes]) -> Kind:
    return Kind(name, "skip", lambda case: case.poisoned(poison(case)))


def _obs(name: str, **fields: Any) -> Kind:
    return _skip_poison(name, lambda case: dumps(case.obs(**fields)))


def _cond(name: str, **fields: Any) -> Kind:
    return _skip_poison(name, lambda case: dumps(case.condition(**fields)))


def _raw_obs(name: str, text: str, **fields: Any) -> Kind:
    return _skip_poison(name, lambda case: case.raw(case.obs(**fields), "@raw", text))


def _file(name: str, filename: str, data: Callable[[Case], bytes], line: int | None = None) -> Kind:
    """A file of its own; the issue names it (and the line, when given)."""

    def build(case: Case) -> None:
        path = case.write(filename, data(case))
        case.where.append(f"{path}:{line}" if line else str(path))

    return Kind(name, "skip", build)


def _read(name: str, build: Callable[[Case], object]) -> Kind:
    return Kind(name, "read", build)


def _deep(levels: int) -> str:
    return "[" * levels + '"' + MARKER + '"' + "]" * levels


def _gzip_truncated(case: Case) -> bytes:
    data = gzip.compress(("\n".join(case.clone_lines()) + "\n").encode())
    case.cloned = False  # its end is lost: the copy is not compared
    return data[: len(data) // 2]


def _gzip_bad_crc(case: Case) -> bytes:
    data = bytearray(gzip.compress(b'{"resourceType": "Basic", "id": "b1"}\n'))
    data[-8] ^= 0xFF
    return bytes(data)


def _fifo(case: Case) -> None:
    path = case.folder / "pipe.ndjson"
    case.folder.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    case.where.append(str(path))


def _link(case: Case, name: str, target: str) -> None:
    case.folder.mkdir(parents=True, exist_ok=True)
    (case.folder / name).symlink_to(target)
    case.where.append(str(case.folder / name))


def _lines(case: Case, name: str, lines: Sequence[str], sep: str = "\n") -> Path:
    return case.write(name, sep.join(lines) + sep)


def _by_identifier(case: Case) -> None:
    token = f"https://fhir-match.org/synthetic/patient|{case.tag}"
    _lines(case, "a.ndjson", case.with_references(lambda ref: f"Patient?identifier={token}"))


def _identifier_only(case: Case) -> None:
    identifier = {"system": "https://fhir-match.org/synthetic/patient", "value": case.tag}
    lines = case.changed(
        lambda r: {**r, "subject": {"identifier": identifier}} if "subject" in r else r
    )
    _lines(case, "a.ndjson", lines)


def _drug_contained(resource: Json) -> Json:
    """A coded drug moved into a contained Medication referenced by #id."""
    concept = resource.get("medicationCodeableConcept")
    if concept is None:
        return resource
    moved = {k: v for k, v in resource.items() if k != "medicationCodeableConcept"}
    moved["contained"] = [{"resourceType": "Medication", "id": "m", "code": concept}]
    moved["medicationReference"] = {"reference": "#m"}
    return moved


def _contained_drug(case: Case) -> None:
    _lines(case, "a.ndjson", case.changed(_drug_contained))


def _symlinked_folder(case: Case) -> None:
    outside = case.folder.parent.parent / f"outside-{case.tag}"
    outside.mkdir(parents=True)
    (outside / "a.ndjson").write_text("\n".join(case.clone_lines()) + "\n")
    case.folder.mkdir(parents=True, exist_ok=True)
    (case.folder / "linked").symlink_to(outside, target_is_directory=True)


def _loop(case: Case) -> None:
    _lines(case, "a.ndjson", case.clone_lines())
    (case.folder / "loop").symlink_to(case.folder, target_is_directory=True)


def _mixed_duplicates(case: Case) -> None:
    lines = case.clone_lines()
    first = json.loads(lines[1])
    _lines(case, "a.ndjson", lines)
    changed = dumps({**first, "note": [{"text": MARKER}]})
    path = case.write("b.ndjson", changed + "\n")
    case.where.append(f"{path}:1")


def _conflicting_medication(case: Case) -> None:
    """A Medication id meaning two drugs in two files, used by a patient of its own."""
    medication = {"resourceType": "Medication", "id": f"{case.tag}-med"}
    one = {
        **medication,
        "code": {"coding": [{"system": "http://www.whocc.no/atc", "code": "L04AX02"}]},
    }
    two = {
        **medication,
        "code": {"coding": [{"system": "http://www.whocc.no/atc", "code": "H02AB07"}]},
    }
    case.write("a.ndjson", dumps(one) + "\n")
    path = case.write("b.ndjson", dumps(two) + "\n")
    use = {
        "resourceType": "MedicationRequest",
        "id": f"{case.tag}-use",
        "status": "active",
        "intent": "order",
        "medicationReference": {"reference": f"Medication/{case.tag}-med"},
        "subject": {"reference": f"Patient/{case.tag}-solo"},
        "authoredOn": "2026-05-01",
    }
    case.write(
        "c.ndjson",
        dumps({"resourceType": "Patient", "id": f"{case.tag}-solo"}) + "\n" + dumps(use) + "\n",
    )
    case.where.append(f"{path}:1")


def _bad_patient(**fields: Any) -> Callable[[Case], str]:
    """A Patient of its own with a bad element: evaluated without it, reported."""

    def poison(case: Case) -> str:
        return dumps({"resourceType": "Patient", "id": f"{case.tag}-solo", **fields})

    return poison


def _surrogate_name(case: Case) -> str:
    patient = {"resourceType": "Patient", "id": f"{case.tag}-solo", "name": [{"family": "@raw"}]}
    return case.raw(patient, "@raw", '"' + MARKER + '\\ud800"')


def _long_drug_text(case: Case) -> list[str]:
    """An extra drug use named by 1 MB of letters (no drug's name): linear to search."""
    use = {
        "resourceType": "MedicationStatement",
        "id": f"{case.tag}-long",
        "status": "active",
        "subject": {"reference": case.patient},
        "medicationCodeableConcept": {"text": "x" * 1_000_000},
    }
    return [*case.clone_lines(), dumps(use)]


def _many_references(case: Case) -> list[str]:
    """An extra, unread result citing 40,000 results (more than one query may look up)."""
    members = [{"reference": f"Observation/{case.tag}-m{i}"} for i in range(40_000)]
    panel = case.obs(code={"text": "panel"}, hasMember=members, note="@drop")
    return [*case.clone_lines(), dumps(panel)]


def _long_system(case: Case) -> list[str]:
    """An extra result coded in a 1 MB system URI."""
    coding = {"system": "http://snomed.info/sct/" + "9" * 1_000_000, "code": "1"}
    return [*case.clone_lines(), dumps(case.obs(code={"coding": [coding]}, note="@drop"))]


KINDS: tuple[Kind, ...] = (
    # values of the wrong type or out of range, in an extra platelet count
    _obs("platelet value true", valueQuantity={"value": True, "unit": "10*9/L"}),
    _obs("platelet value false", valueQuantity={"value": False, "unit": "10*9/L"}),
    _obs("platelet value a string", valueQuantity={"value": MARKER, "unit": "10*9/L"}),
    _obs("platelet value 1e20", valueQuantity={"value": 1e20, "unit": "10*9/L"}),
    _obs("platelet value -1e25", valueQuantity={"value": -1e25, "unit": "10*9/L"}),
    _raw_obs("platelet value 5000 digits", "9" * 5000, valueQuantity={"value": "@raw"}),
    _raw_obs("platelet value NaN", "NaN", valueQuantity={"value": "@raw", "unit": "10*9/L"}),
    _raw_obs("platelet value Infinity", "Infinity", valueQuantity={"value": "@raw"}),
    _obs("platelet value null", valueQuantity={"value": None, "unit": "10*9/L"}),
    _obs("platelet value an object", valueQuantity={"value": {"v": MARKER}, "unit": "10*9/L"}),
    _obs("platelet value a list", valueQuantity={"value": [20], "unit": "10*9/L"}),
    _obs("platelet unit a number", valueQuantity={"value": 20, "unit": 109}),
    _obs("platelet unit a list", valueQuantity={"value": 20, "unit": ["10*9/L", MARKER]}),
    _obs("platelet unit an object", valueQuantity={"value": 20, "unit": {"u": MARKER}}),
    _obs("platelet code a number", valueQuantity={"value": 20, "code": 9, "system": "x"}),
    _obs("platelet system a list", valueQuantity={"value": 20, "code": "10*9/L", "system": []}),
    _obs("platelet comparator unknown", valueQuantity={"value": 20, "comparator": "~"}),
    _obs("valueQuantity a string", valueQuantity=f"20 {MARKER}"),
    _obs("valueQuantity a list", valueQuantity=[{"value": 20, "unit": "10*9/L"}]),
    _obs("valueQuantity null", valueQuantity=None),
    _obs("valueInteger a float", valueQuantity="@drop", valueInteger=20.5),
    _obs("valueInteger beyond 32 bits", valueQuantity="@drop", valueInteger=2**40),
    _obs("valueInteger a string", valueQuantity="@drop", valueInteger=MARKER),
    _obs("valueInteger true", valueQuantity="@drop", valueInteger=True),
    _obs("valueDecimal beyond CQL", valueQuantity="@drop", valueDecimal=1e30),
    _obs("referenceRange low a string", referenceRange=[{"low": MARKER}]),
    # codes of the wrong shape
    _obs(
        "code.coding an object", code={"coding": {"system": "http://loinc.org", "code": "26515-7"}}
    ),
    _obs("code.coding a string", code={"coding": MARKER}),
    _obs("code.coding a list of strings", code={"coding": [MARKER]}),
    _obs("coding.code a number", code={"coding": [{"system": "http://loinc.org", "code": 265157}]}),
    _obs(
        "coding.system a list",
        code={"coding": [{"system": ["http://loinc.org"], "code": "26515-7"}]},
    ),
    _obs(
        "coding.display an object",
        code={
            "coding": [{"system": "http://loinc.org", "code": "26515-7", "display": {"t": MARKER}}]
        },
    ),
    _obs("code a number", code=26515),
    _obs("code a list", code=[PLATELETS]),
    _obs("code.text a list", code={**PLATELETS, "text": [MARKER]}),
    _cond("condition code.coding a number", code={"coding": 7}),
    _cond("condition clinicalStatus a number", clinicalStatus=3),
    _cond("condition category a string", category=MARKER),
    # dates
    _obs("date 2026-13-45", effectiveDateTime="2026-13-45"),
    _obs("date year 0000", effectiveDateTime="0000-01-01"),
    _obs("date year 99999", effectiveDateTime="99999-01-01"),
    _obs("date 30 February", effectiveDateTime="2026-02-30"),
    _obs("date a number", effectiveDateTime=20260101),
    _obs("date words", effectiveDateTime=f"yesterday {MARKER}"),
    _obs("date hour 25", effectiveDateTime="2026-05-01T25:00:00Z"),
    _obs("date bad zone", effectiveDateTime="2026-05-01T10:00:00+99:00"),
    _obs("period start bad", effectiveDateTime="@drop", effectivePeriod={"start": "2026-99-01"}),
    _obs("issued not a date", issued=MARKER),
    _cond("onset 2026-00-10", onsetDateTime="2026-00-10"),
    _cond("recordedDate a list", recordedDate=["2026-01-01"]),
    _skip_poison("birth date out of range", _bad_patient(birthDate="1800-02-31")),
    _skip_poison("birth date a number", _bad_patient(birthDate=1980)),
    # nulls
    _obs("status null", status=None),
    _obs("subject reference null", subject={"reference": None}),
    _obs("a coding null", code={"coding": [None]}),
    _obs("note null", note=None),
    _cond("condition code null", code=None),
    _skip_poison("a line that is null", lambda case: "null"),
    # not resources
    _skip_poison("no resourceType", lambda case: dumps({"id": "x", "note": MARKER})),
    _skip_poison("resourceType a number", lambda case: dumps({"resourceType": 7})),
    _skip_poison(
        "resourceType lower case", lambda case: dumps(case.obs(resourceType="observation"))
    ),
    _skip_poison(
        "resourceType with a space", lambda case: dumps(case.obs(resourceType="Obs ervation"))
    ),
    _obs("id with a space", id=f"a {MARKER}"),
    _obs("id of 65 characters", id="x" * 65),
    _obs("id a number", id=17),
    _skip_poison("a JSON array line", lambda case: dumps([case.obs()])),
    _skip_poison("a JSON string line", lambda case: dumps(MARKER)),
    _skip_poison("a JSON number line", lambda case: "42"),
    _skip_poison("an empty object", lambda case: "{}"),
    # patient references that cannot be resolved
    _obs("subject display only", subject={"display": MARKER}),
    _obs("subject a Group", subject={"reference": "Group/g1"}),
    _obs("subject contained", subject={"reference": "#p1"}),
    _obs(
        "subject a dangling urn:uuid",
        subject={"reference": "urn:uuid:6d3c9c52-0b7e-4b8e-9f0e-3f1d2c4b5a69"},
    ),
    _obs(
        "subject by an identifier no Patient has",
        subject={"reference": "Patient?identifier=x|nobody"},
    ),
    _obs(
        "subject by identifier only, nobody's",
        subject={"identifier": {"system": "x", "value": "nobody"}},
    ),
    _obs(
        "subject by a conditional with two parameters",
        subject={"reference": "Patient?identifier=x|y&name=z"},
    ),
    _obs("subject a string", subject="Patient/x"),
    _obs("subject an empty Patient id", subject={"reference": "Patient/"}),
    _obs("subject a Patient id with a space", subject={"reference": f"Patient/a {MARKER}"}),
    _obs("subject a list", subject=[{"reference": "Patient/x"}]),
    _obs("no subject", subject="@drop"),
    _skip_poison(
        "a Patient without id",
        lambda case: dumps({"resourceType": "Patient", "name": [{"family": MARKER}]}),
    ),
    _skip_poison("a lone surrogate in a name", _surrogate_name),
    _skip_poison(
        "a lone surrogate in a note",
        lambda case: case.raw(case.obs(note=[{"text": "@raw"}]), "@raw", '"\\udc00' + MARKER + '"'),
    ),
    # structure
    _obs("contained an object", contained={"resourceType": "Medication", "id": "m"}),
    _obs("component an object", component={"code": PLATELETS}),
    _obs("component a list of numbers", component=[1, 2]),
    _obs("interpretation an object", interpretation={"text": MARKER}),
    _obs("extension an object", extension={"url": "x", "valueString": MARKER}),
    _obs("status a list", status=["final"]),
    _obs("text a string", text=MARKER),
    _obs("subject.reference a number", subject={"reference": 7}),
    _skip_poison(
        "medication ingredient an object",
        lambda case: dumps(
            {
                "resourceType": "MedicationRequest",
                "id": f"{case.tag}-poison",
                "status": "active",
                "intent": "order",
                "subject": {"reference": case.patient},
                "medicationReference": {"reference": "#m"},
                "contained": [
                    {
                        "resourceType": "Medication",
                        "id": "m",
                        "ingredient": {"itemCodeableConcept": {"text": MARKER}},
                    }
                ],
            }
        ),
    ),
    _skip_poison(
        "allergy reaction an object",
        lambda case: dumps(
            {
                "resourceType": "AllergyIntolerance",
                "id": f"{case.tag}-poison",
                "patient": {"reference": case.patient},
                "reaction": {"substance": {"text": MARKER}},
            }
        ),
    ),
    _skip_poison(
        "R5 medication (CodeableReference)",
        lambda case: dumps(
            {
                "resourceType": "MedicationRequest",
                "id": f"{case.tag}-poison",
                "status": "active",
                "intent": "order",
                "subject": {"reference": case.patient},
                "medication": {"concept": {"text": "rituximab"}},
                "authoredOn": "2026-05-01",
            }
        ),
    ),
    _skip_poison(
        "R5 procedure occurrence",
        lambda case: dumps(
            {
                "resourceType": "Procedure",
                "id": f"{case.tag}-poison",
                "status": "completed",
                "subject": {"reference": case.patient},
                "code": {"text": "splenectomy"},
                "occurrenceDateTime": "2026-01-01",
            }
        ),
    ),
    _skip_poison(
        "nested 100 levels",
        lambda case: case.raw(
            case.obs(extension=[{"url": "x", "valueString": "@raw"}]), "@raw", _deep(100)
        ),
    ),
    _skip_poison(
        "nested 300 levels", lambda case: case.raw(case.obs(extension="@raw"), "@raw", _deep(300))
    ),
    _skip_poison("nested 5000 levels", lambda case: _deep(5000)),
    _skip_poison("truncated line", lambda case: dumps(case.obs())[:60]),
    _skip_poison("trailing comma", lambda case: dumps(case.obs())[:-1] + ",}"),
    _skip_poison("single quotes", lambda case: dumps(case.obs()).replace('"', "'")),
    _skip_poison("a comment", lambda case: "// " + MARKER),
    _skip_poison(
        "two documents on one line", lambda case: dumps(case.obs()) + " " + dumps(case.obs())
    ),
    _skip_poison(
        "a Latin-1 line",
        lambda case: dumps(case.obs(note=[{"text": MARKER + "é"}])).encode("latin-1"),
    ),
    _skip_poison("a NUL byte", lambda case: b'{"resourceType": "Obs\x00"}'),
    _skip_poison("binary garbage line", lambda case: bytes(range(256)).replace(b"\n", b"")),
    _skip_poison("a 3 MB line of garbage", lambda case: "{" + MARKER * 300_000),
    Kind("duplicate id, different content", "skip", _mixed_duplicates),
    Kind("a Medication id meaning two drugs", "skip", _conflicting_medication),
    # whole files
    _file("binary file", "x.json", lambda case: bytes(range(256)) * 64),
    _file("empty .json file", "x.json", lambda case: b""),
    _file(
        "truncated Bundle",
        "x.json",
        lambda case: dumps(
            {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": case.obs()}]}
        )[:-30].encode(),
    ),
    _file(
        "Latin-1 Bundle",
        "x.json",
        lambda case: dumps(
            {"resourceType": "Patient", "id": f"{case.tag}-solo", "name": [{"text": MARKER + "é"}]}
        ).encode("latin-1"),
        1,
    ),
    _file(
        "UTF-16 without byte order mark",
        "x.ndjson",
        lambda case: dumps(case.obs()).encode("utf-16-le"),
        1,
    ),
    _file(
        "gzip header then garbage",
        "x.ndjson.gz",
        lambda case: b"\x1f\x8b\x08\x00" + bytes(range(256)),
    ),
    _file("gzip cut mid-stream", "x.ndjson.gz", _gzip_truncated),
    _file("gzip with a bad checksum", "x.ndjson.gz", _gzip_bad_crc),
    _file("not gzip at all", "x.json.gz", lambda case: dumps(case.obs()).encode()),
    _file(
        "Bundle entry not a list",
        "x.json",
        lambda case: dumps(
            {"resourceType": "Bundle", "type": "collection", "entry": {"resource": case.obs()}}
        ).encode(),
    ),
    _file(
        "Bundle entry a string",
        "x.json",
        lambda case: dumps(
            {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": MARKER}]}
        ).encode(),
    ),
    _file(
        "Bundle entry without resourceType",
        "x.json",
        lambda case: dumps(
            {
                "resourceType": "Bundle",
                "type": "collection",
                "entry": [{"resource": {"id": MARKER}}],
            }
        ).encode(),
    ),
    _file(
        "two JSON documents in a file",
        "x.json",
        lambda case: (dumps(case.obs()) + "\n" + dumps(case.obs())).encode(),
    ),
    Kind("a FIFO with no writer", "skip", _fifo),
    Kind(
        "a dangling symbolic link",
        "skip",
        lambda case: _link(case, "gone.ndjson", "nowhere.ndjson"),
    ),
    Kind("a symbolic link to itself", "skip", lambda case: _link(case, "self.json", "self.json")),
    # valid FHIR in every shape: read as if it were plain
    _read("plain NDJSON", lambda case: _lines(case, "a.ndjson", case.clone_lines())),
    _read(
        "UTF-8 byte order mark, NDJSON",
        lambda case: case.write(
            "a.ndjson", codecs.BOM_UTF8 + "\n".join(case.clone_lines()).encode()
        ),
    ),
    _read(
        "UTF-8 byte order mark, Bundle",
        lambda case: case.write("a.json", codecs.BOM_UTF8 + dumps(case.bundle()).encode()),
    ),
    _read(
        "UTF-16 LE with byte order mark, NDJSON",
        lambda case: case.write("a.ndjson", "\n".join(case.clone_lines()).encode("utf-16")),
    ),
    _read(
        "UTF-16 BE with byte order mark, Bundle",
        lambda case: case.write(
            "a.json", codecs.BOM_UTF16_BE + dumps(case.bundle()).encode("utf-16-be")
        ),
    ),
    _read("CRLF line ends", lambda case: _lines(case, "a.ndjson", case.clone_lines(), "\r\n")),
    _read(
        "blank and white lines",
        lambda case: _lines(
            case, "a.ndjson", [x for line in case.clone_lines() for x in (line, "", "  \t")]
        ),
    ),
    _read(".jsonl", lambda case: _lines(case, "a.jsonl", case.clone_lines())),
    _read(
        ".ndjson.gz",
        lambda case: case.write(
            "a.ndjson.gz", gzip.compress("\n".join(case.clone_lines()).encode())
        ),
    ),
    _read(
        ".json.gz Bundle",
        lambda case: case.write("a.json.gz", gzip.compress(dumps(case.bundle()).encode())),
    ),
    _read("collection Bundle", lambda case: case.write("a.json", dumps(case.bundle()))),
    _read(
        "searchset with absolute full URLs",
        lambda case: case.write(
            "a.json", dumps(case.bundle("searchset", "https://ehr.example/fhir/"))
        ),
    ),
    _read(
        "transaction with urn:uuid references",
        lambda case: case.write(
            "a.json",
            dumps(case.bundle("transaction", "urn:uuid:")).replace(
                f'"reference": "{case.patient}"', f'"reference": "urn:uuid:Patient/{case.tag}"'
            ),
        ),
    ),
    _read(
        "Bundle inside a Bundle",
        lambda case: case.write(
            "a.json",
            dumps(
                {
                    "resourceType": "Bundle",
                    "type": "collection",
                    "entry": [{"resource": case.bundle()}],
                }
            ),
        ),
    ),
    _read(
        "pretty-printed Bundle",
        lambda case: case.write("a.json", json.dumps(case.bundle(), indent=4, ensure_ascii=False)),
    ),
    _read(
        "versioned references",
        lambda case: _lines(
            case, "a.ndjson", case.with_references(lambda ref: ref + "/_history/3")
        ),
    ),
    _read(
        "absolute references",
        lambda case: _lines(
            case, "a.ndjson", case.with_references(lambda ref: "http://ehr.example/fhir/" + ref)
        ),
    ),
    _read(
        "absolute versioned references",
        lambda case: _lines(
            case,
            "a.ndjson",
            case.with_references(lambda ref: "https://ehr.example/r4/" + ref + "/_history/1"),
        ),
    ),
    _read("conditional references by identifier", _by_identifier),
    _read("identifier-only references", _identifier_only),
    _read(
        "escaped slashes in references",
        lambda case: _lines(
            case, "a.ndjson", [line.replace("/", "\\/") for line in case.clone_lines()]
        ),
    ),
    _read("contained Medication by #id", _contained_drug),
    _read(
        "the same patient in two files",
        lambda case: [_lines(case, name, case.clone_lines()) for name in ("a.ndjson", "b.ndjson")],
    ),
    _read(
        "every line twice",
        lambda case: _lines(
            case, "a.ndjson", [x for line in case.clone_lines() for x in (line, line)]
        ),
    ),
    _read(
        "the Patient last",
        lambda case: _lines(case, "a.ndjson", [*case.clone_lines()[1:], case.clone_lines()[0]]),
    ),
    _read(
        "one file per resource",
        lambda case: [
            _lines(case, f"r{i}.ndjson", [line]) for i, line in enumerate(case.clone_lines())
        ],
    ),
    _read("a folder behind a symbolic link", _symlinked_folder),
    _read("a symbolic link loop", _loop),
    _read(
        "a folder named like a file",
        lambda case: _lines(case, "odd.ndjson/a.ndjson", case.clone_lines()),
    ),
    _read(
        "an empty NDJSON file",
        lambda case: [_lines(case, "a.ndjson", case.clone_lines()), case.write("b.ndjson", b"")],
    ),
    _read(
        "an empty Bundle",
        lambda case: [
            _lines(case, "a.ndjson", case.clone_lines()),
            case.write("b.json", dumps({"resourceType": "Bundle", "type": "collection"})),
        ],
    ),
    _read(
        "transaction DELETE entries",
        lambda case: [
            _lines(case, "a.ndjson", case.clone_lines()),
            case.write(
                "b.json",
                dumps(
                    {
                        "resourceType": "Bundle",
                        "type": "transaction",
                        "entry": [{"request": {"method": "DELETE", "url": "Patient/gone"}}],
                    }
                ),
            ),
        ],
    ),
    _read(
        "an unknown element",
        lambda case: _lines(
            case, "a.ndjson", case.changed(lambda r: {**r, "zzUnknown": {"a": [1, 2]}})
        ),
    ),
    _read(
        "primitive extensions",
        lambda case: _lines(
            case,
            "a.ndjson",
            case.changed(lambda r: {**r, "_id": {"extension": [{"url": "x", "valueString": "y"}]}}),
        ),
    ),
    _read(
        "an Encounter and an unknown type of the patient",
        lambda case: _lines(
            case,
            "a.ndjson",
            [
                *case.clone_lines(),
                dumps(
                    {
                        "resourceType": "Encounter",
                        "id": f"{case.tag}-e",
                        "status": "finished",
                        "subject": {"reference": case.patient},
                    }
                ),
                dumps(
                    {
                        "resourceType": "Zzunknown",
                        "id": f"{case.tag}-z",
                        "subject": {"reference": case.patient},
                    }
                ),
            ],
        ),
    ),
    _read(
        "a 1 MB ICD-10 code",
        lambda case: _lines(
            case,
            "a.ndjson",
            [
                *case.clone_lines(),
                dumps(
                    case.condition(
                        code={
                            "coding": [
                                {
                                    "system": "http://hl7.org/fhir/sid/icd-10",
                                    "code": "Z" + "9" * 1_000_000,
                                }
                            ]
                        },
                        note="@drop",
                    )
                ),
            ],
        ),
    ),
    _read(
        "a result citing 40,000 others",
        lambda case: _lines(case, "a.ndjson", _many_references(case)),
    ),
    _read("a 1 MB drug text", lambda case: _lines(case, "a.ndjson", _long_drug_text(case))),
    _read("a 1 MB code system", lambda case: _lines(case, "a.ndjson", _long_system(case))),
    _read(
        "a 1 MB note on an unread result",
        lambda case: _lines(
            case,
            "a.ndjson",
            [
                *case.clone_lines(),
                dumps(
                    case.obs(
                        code={"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
                        note=[{"text": "n" * 1_000_000}],
                    )
                ),
            ],
        ),
    ),
    _read(
        "100,000 unread codings",
        lambda case: _lines(
            case,
            "a.ndjson",
            [
                *case.clone_lines(),
                dumps(
                    case.obs(
                        code={
                            "coding": [
                                {"system": "http://loinc.org", "code": f"zz-{i}"}
                                for i in range(100_000)
                            ]
                        },
                        note="@drop",
                    )
                ),
            ],
        ),
    ),
    _read(
        "Chinese text and emoji",
        lambda case: _lines(
            case,
            "a.ndjson",
            [*case.clone_lines(), dumps(case.obs(code={"text": "血红蛋白 🩸"}, note="@drop"))],
        ),
    ),
    _read(
        "a Practitioner and a Medication alone",
        lambda case: [
            _lines(case, "a.ndjson", case.clone_lines()),
            _lines(
                case,
                "b.ndjson",
                [
                    dumps({"resourceType": "Practitioner", "id": f"{case.tag}-dr"}),
                    dumps({"resourceType": "Medication", "id": f"{case.tag}-unused"}),
                ],
            ),
        ],
    ),
)
