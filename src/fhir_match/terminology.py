"""Value-set membership and drug-name lookup, built once from the FHIR resources in mappings/.

Every coding of every patient passes through here, so the value sets are compiled into
dictionaries up front: a code is looked up exactly, and for hierarchical systems (ICD-10,
ICD-10-CM, ICD-10-PCS, ATC) once per prefix of its normalised form, so `D69.300x001` is found
under the `is-a D69.3` filter without scanning the filters. Drug names are found in free text by
two precompiled alternations (English on word boundaries, Chinese as substrings) plus the
name patterns of the drug-name CodeSystem (e.g. "...mab").

Only `load_terminology` touches the file system; everything else is pure.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

from fhir_match.errors import ConfigError

__all__ = [
    "ATC",
    "DRUG_NAME",
    "HIERARCHICAL_SYSTEMS",
    "ICD10",
    "ICD10CM",
    "ICD10PCS",
    "SNOMED",
    "Coding",
    "Terminology",
    "build_terminology",
    "canonical_system",
    "load_terminology",
    "system_spellings",
]

ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
ICD10PCS = "http://www.cms.gov/Medicare/Coding/ICD10"
ATC = "http://www.whocc.no/atc"
DRUG_NAME = "https://fhir-match.org/fhir/CodeSystem/drug-name"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CPT = "http://www.ama-assn.org/go/cpt"
UCUM_SYSTEM = "http://unitsofmeasure.org"

_OIDS = {
    "2.16.840.1.113883.6.96": SNOMED,
    "2.16.840.1.113883.6.1": LOINC,
    "2.16.840.1.113883.6.88": RXNORM,
    "2.16.840.1.113883.6.90": ICD10CM,
    "2.16.840.1.113883.6.3": ICD10,
    "2.16.840.1.113883.6.4": ICD10PCS,
    "2.16.840.1.113883.6.12": CPT,
    "2.16.840.1.113883.6.73": ATC,
    "2.16.840.1.113883.6.8": UCUM_SYSTEM,
}
"""The OIDs HL7 Terminology (THO) registers for the systems the mappings use: C-CDA-derived
FHIR often names a code system as ``urn:oid:<oid>``."""
_SPELLINGS = {
    **{uri.removeprefix("http://").lower(): uri for uri in _OIDS.values()},
    # THO's stub URIs for the ICD editions (its NamingSystems list them as other identifiers)
    "terminology.hl7.org/codesystem/icd10": ICD10,
    "terminology.hl7.org/codesystem/icd10cm": ICD10CM,
    "terminology.hl7.org/codesystem/icd10pcs": ICD10PCS,
}
_SNOMED_EDITION = re.compile(r"snomed\.info/sct/\d+(/version/\d+)?")
"""An edition (module) URI written into the system, e.g. http://snomed.info/sct/731000124108."""

HIERARCHICAL_SYSTEMS = frozenset({ICD10CM, ICD10, ICD10PCS, ATC})
"""Systems whose codes nest by prefix, so `is-a X` means "X or any code starting with X"."""

Coding = tuple[str, str]
"""A (system, code) pair, the code as written in the data or in the mappings."""

_Rule = tuple[str, bool]
"""(value-set url, True when the rule is an exclude)."""

_ASCII_WORD_EDGE = "[a-z0-9]"
_NEVER = re.compile("(?!)")
_CACHE_SIZE = 1 << 16
_LONGEST_CACHED_CODE = 64
"""Longer than any real code (SNOMED CT's are at most 18 digits): a hostile file's huge codes
are looked up without being remembered, so the cache stays small."""


@lru_cache(maxsize=1024)
def canonical_system(system: str) -> str:
    """The system URI the mappings use for a spelling of it that real records send: an OID
    (``urn:oid:2.16.840.1.113883.6.90``), https, a trailing slash, another case, a SNOMED
    edition URI. Any other system is returned as it is."""
    folded = system.strip().lower()
    if folded.startswith("urn:oid:"):
        return _OIDS.get(folded.removeprefix("urn:oid:"), system)
    folded = folded.removeprefix("https://").removeprefix("http://").rstrip("/")
    if _SNOMED_EDITION.fullmatch(folded):
        return SNOMED
    return _SPELLINGS.get(folded, system)


def system_spellings(system: str) -> tuple[str, ...]:
    """``system`` and its OID form (``urn:oid:...``): what a server's token search must be
    given to find both, as it matches systems exactly and records send either."""
    return (system, *(f"urn:oid:{oid}" for oid, uri in _OIDS.items() if uri == system))


def _normalise(system: str, code: str) -> str:
    """Make codes comparable: ICD and ATC data arrive with or without dots and in either case."""
    code = code.strip()
    if system in HIERARCHICAL_SYSTEMS:
        return code.upper().replace(".", "")
    return code


@dataclass(frozen=True, eq=False)
class Terminology:
    """The compiled value sets and drug names; build it with `load_terminology`."""

    expansions: Mapping[str, tuple[Coding, ...]]
    """Each value set's exact codes as written in mappings/: listed concepts, the root code of
    each is-a filter, and the drug-name concepts, minus exclusions. A code that is a member only
    through the hierarchy (or only after normalisation) is not here: see hierarchy_additions."""

    _members: Mapping[str, frozenset[Coding]] = field(repr=False)
    _exact: Mapping[Coding, tuple[_Rule, ...]] = field(repr=False)
    _prefix: Mapping[Coding, tuple[_Rule, ...]] = field(repr=False)
    _includes: Mapping[str, tuple[str, ...]] = field(repr=False)
    _excludes: Mapping[str, tuple[str, ...]] = field(repr=False)
    _users: Mapping[str, frozenset[str]] = field(repr=False)
    _order: Mapping[str, int] = field(repr=False)
    _english: re.Pattern[str] = field(repr=False)
    _chinese: re.Pattern[str] = field(repr=False)
    _names: Mapping[str, frozenset[str]] = field(repr=False)
    _patterns: tuple[tuple[re.Pattern[str], str], ...] = field(repr=False)
    _cached: Callable[[str, str], frozenset[str]] = field(init=False, repr=False)
    _longest_prefix: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Patients share most of their codes, so remembered answers serve most lookups.
        object.__setattr__(self, "_cached", lru_cache(maxsize=_CACHE_SIZE)(self._lookup))
        # A code's prefixes are looked up only as far as the longest filter root: a very long
        # code costs no more than a short one.
        longest = max((len(code) for _, code in self._prefix), default=0)
        object.__setattr__(self, "_longest_prefix", longest)

    def value_sets_of(self, system: str, code: str) -> frozenset[str]:
        """The urls of every value set that contains this coding, through is-a filters,
        included value sets and exclusions."""
        if len(code) > _LONGEST_CACHED_CODE:  # no real code: not worth keeping in memory
            return self._lookup(system, code)
        return self._cached(system, code)

    def _lookup(self, system: str, code: str) -> frozenset[str]:
        norm = _normalise(system, code)
        rules = list(self._exact.get((system, norm), ()))
        if system in HIERARCHICAL_SYSTEMS:
            for end in range(1, min(len(norm), self._longest_prefix) + 1):
                rules.extend(self._prefix.get((system, norm[:end]), ()))
        included = {url for url, is_exclude in rules if not is_exclude}
        if not included:
            return frozenset()
        excluded = {url for url, is_exclude in rules if is_exclude}
        candidates = set(included)
        for url in included:
            candidates |= self._users[url]
        member: dict[str, bool] = {}
        for url in sorted(candidates, key=self._order.__getitem__):
            member[url] = (
                url in included or any(member.get(inner, False) for inner in self._includes[url])
            ) and not (
                url in excluded or any(member.get(inner, False) for inner in self._excludes[url])
            )
        return frozenset(url for url, is_member in member.items() if is_member)

    def drug_names_in(self, text: str) -> frozenset[str]:
        """The drug-name codes a free text or display names.

        English names match case-insensitively on ASCII word boundaries ("prednisone" is not
        found in "methylprednisolone" nor "prednisolone"); Chinese names match as substrings,
        leftmost-longest, so 泼尼松龙 names prednisolone and not also prednisone.
        """
        folded = text.casefold()
        found: set[str] = set()
        for alternation in (self._english, self._chinese):
            for match in alternation.finditer(folded):
                found |= self._names[match.group()]
        found.update(code for pattern, code in self._patterns if pattern.search(folded))
        return frozenset(found)

    def names_of(self, code: str) -> tuple[str, ...]:
        """The names (case-folded, English and Chinese) of one drug-name code, sorted."""
        return tuple(sorted(name for name, codes in self._names.items() if code in codes))

    def hierarchy_additions(self, codings: Iterable[Coding]) -> dict[str, list[Coding]]:
        """For codings seen in data, those that belong to a value set but are not in its exact
        expansion, per value set url: an exact-match engine (CQL) adds them to the expansion."""
        additions: dict[str, set[Coding]] = {}
        for coding in set(codings):
            for url in self.value_sets_of(*coding):
                if coding not in self._members[url]:
                    additions.setdefault(url, set()).add(coding)
        return {url: sorted(found) for url, found in sorted(additions.items())}


def load_terminology(mappings_dir: Path) -> Terminology:
    """Read mappings/valuesets/*.json and mappings/codesystems/drug-name.json."""
    value_sets = [_read_json(path) for path in sorted((mappings_dir / "valuesets").glob("*.json"))]
    drug_names = _read_json(mappings_dir / "codesystems" / "drug-name.json")
    return build_terminology(value_sets, drug_names)


def build_terminology(
    value_sets: Sequence[Mapping[str, Any]], drug_names: Mapping[str, Any]
) -> Terminology:
    """Compile FHIR ValueSet resources and the drug-name CodeSystem.

    Raises ConfigError for anything this module would otherwise misread: compose features
    it does not implement (intersections, filters other than `concept is-a` on a hierarchical
    system, whole-system includes), unknown value sets or drug-name codes, and cycles.
    """
    names, patterns, drug_codes = _compile_drug_names(drug_names)
    exact: dict[Coding, list[_Rule]] = {}
    prefix: dict[Coding, list[_Rule]] = {}
    includes: dict[str, tuple[str, ...]] = {}
    excludes: dict[str, tuple[str, ...]] = {}
    written: dict[str, list[Coding]] = {}
    for resource in value_sets:
        url = _value_set_url(resource, includes)
        compose = resource.get("compose")
        if not isinstance(compose, Mapping) or not compose.get("include"):
            raise ConfigError(f"value set {url}: compose.include is missing")
        written[url] = []
        for key, is_exclude in (("include", False), ("exclude", True)):
            nested: list[str] = []
            for element in compose.get(key, ()):
                try:
                    rules = _parse_element(url, element, drug_codes)
                except (KeyError, TypeError, AttributeError) as exc:
                    raise ConfigError(f"value set {url}: malformed {key} ({exc!r})") from exc
                nested.extend(rules.value_sets)
                for coding in rules.exact:
                    exact.setdefault(_key(coding), []).append((url, is_exclude))
                for coding in rules.prefixes:
                    prefix.setdefault(_key(coding), []).append((url, is_exclude))
                if not is_exclude:
                    written[url].extend(rules.exact + rules.prefixes)
            (excludes if is_exclude else includes)[url] = tuple(nested)
    order = _topological_order(includes, excludes)
    terminology = Terminology(
        expansions=MappingProxyType({}),
        _members=MappingProxyType({}),
        _exact=_freeze(exact),
        _prefix=_freeze(prefix),
        _includes=MappingProxyType(includes),
        _excludes=MappingProxyType(excludes),
        _users=MappingProxyType(_users_of(includes, excludes)),
        _order=MappingProxyType({url: position for position, url in enumerate(order)}),
        _english=_alternation(
            [name for name, language, _ in names if language != "zh"], word_boundaries=True
        ),
        _chinese=_alternation(
            [name for name, language, _ in names if language == "zh"], word_boundaries=False
        ),
        _names=MappingProxyType(_names_to_codes(names)),
        _patterns=patterns,
    )
    expansions = _expand(terminology, order, written)
    return replace(
        terminology,
        expansions=expansions,
        _members=MappingProxyType({url: frozenset(codes) for url, codes in expansions.items()}),
    )


@dataclass(frozen=True)
class _ElementRules:
    exact: list[Coding]
    prefixes: list[Coding]
    value_sets: list[str]


def _parse_element(
    url: str, element: Mapping[str, Any], drug_codes: frozenset[str]
) -> _ElementRules:
    """One compose.include or compose.exclude entry, as exact codes, is-a roots or value sets."""
    system = element.get("system")
    value_sets = list(element.get("valueSet", ()))
    if value_sets:
        if system is not None or len(value_sets) != 1:
            raise ConfigError(
                f"value set {url}: an element with several value sets, or a value set and a "
                "system, means an intersection; write one value set per element"
            )
        return _ElementRules([], [], value_sets)
    if not isinstance(system, str):
        raise ConfigError(f"value set {url}: an element has neither system nor valueSet")
    concepts = element.get("concept", ())
    filters = element.get("filter", ())
    if not concepts and not filters:
        raise ConfigError(f"value set {url}: including all of {system} is not supported")
    exact = [(system, str(concept["code"])) for concept in concepts]
    if system == DRUG_NAME:
        unknown = sorted(code for _, code in exact if code not in drug_codes)
        if unknown:
            raise ConfigError(f"value set {url}: drug-name codes not in the CodeSystem: {unknown}")
    if len(filters) > 1:
        raise ConfigError(f"value set {url}: several filters in one element mean an intersection")
    prefixes = []
    for filter_ in filters:
        if (filter_.get("property"), filter_.get("op")) != ("concept", "is-a"):
            raise ConfigError(f"value set {url}: only 'concept is-a' filters are supported")
        if system not in HIERARCHICAL_SYSTEMS:
            raise ConfigError(f"value set {url}: is-a on {system}, which is not hierarchical here")
        prefixes.append((system, str(filter_["value"])))
    return _ElementRules(exact, prefixes, [])


def _value_set_url(resource: Mapping[str, Any], seen: Mapping[str, object]) -> str:
    url = resource.get("url")
    if resource.get("resourceType") != "ValueSet" or not isinstance(url, str):
        raise ConfigError(f"not a ValueSet with a url: {resource.get('id')!r}")
    if url in seen:
        raise ConfigError(f"value set {url} is defined twice")
    return url


def _key(coding: Coding) -> Coding:
    return coding[0], _normalise(*coding)


def _freeze(index: Mapping[Coding, list[_Rule]]) -> Mapping[Coding, tuple[_Rule, ...]]:
    return MappingProxyType({key: tuple(rules) for key, rules in index.items()})


def _topological_order(
    includes: Mapping[str, tuple[str, ...]], excludes: Mapping[str, tuple[str, ...]]
) -> list[str]:
    """Value sets ordered so that every referenced value set comes before its users."""
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(url: str, path: tuple[str, ...]) -> None:
        if state.get(url) == "done":
            return
        if state.get(url) == "visiting":
            raise ConfigError(f"value sets include each other: {' -> '.join((*path, url))}")
        if url not in includes:
            raise ConfigError(f"value set {path[-1]} refers to unknown value set {url}")
        state[url] = "visiting"
        for inner in (*includes[url], *excludes[url]):
            visit(inner, (*path, url))
        state[url] = "done"
        order.append(url)

    for url in includes:
        visit(url, ())
    return order


def _users_of(
    includes: Mapping[str, tuple[str, ...]], excludes: Mapping[str, tuple[str, ...]]
) -> dict[str, frozenset[str]]:
    """For each value set, every value set that refers to it, directly or through others."""
    direct: dict[str, set[str]] = {url: set() for url in includes}
    for url in includes:
        for inner in (*includes[url], *excludes[url]):
            direct[inner].add(url)
    users: dict[str, frozenset[str]] = {}
    for url in includes:
        found: set[str] = set()
        pending = list(direct[url])
        while pending:
            user = pending.pop()
            if user not in found:
                found.add(user)
                pending.extend(direct[user])
        users[url] = frozenset(found)
    return users


def _expand(
    terminology: Terminology, order: Sequence[str], written: Mapping[str, list[Coding]]
) -> Mapping[str, tuple[Coding, ...]]:
    expansions: dict[str, tuple[Coding, ...]] = {}
    for url in order:
        candidates = list(written[url])
        for inner in terminology._includes[url]:
            candidates.extend(expansions[inner])
        expansions[url] = tuple(
            coding
            for coding in dict.fromkeys(candidates)
            if url in terminology.value_sets_of(*coding)
        )
    return MappingProxyType(expansions)


def _compile_drug_names(
    code_system: Mapping[str, Any],
) -> tuple[list[tuple[str, str, str]], tuple[tuple[re.Pattern[str], str], ...], frozenset[str]]:
    """The names (folded name, language, code), the name patterns and the set of codes."""
    if code_system.get("url") != DRUG_NAME:
        raise ConfigError(f"expected the CodeSystem {DRUG_NAME}, got {code_system.get('url')!r}")
    names: list[tuple[str, str, str]] = []
    patterns: list[tuple[re.Pattern[str], str]] = []
    try:
        for concept in code_system["concept"]:
            code = str(concept["code"])
            for designation in concept.get("designation", ()):
                name = str(designation["value"]).casefold()
                names.append((name, str(designation.get("language", "en")), code))
            for prop in concept.get("property", ()):
                if prop["code"] == "pattern":
                    patterns.append((re.compile(prop["valueString"], re.IGNORECASE), code))
    except (KeyError, TypeError, AttributeError, re.error) as exc:
        raise ConfigError(f"CodeSystem {DRUG_NAME} is malformed ({exc!r})") from exc
    codes = frozenset(str(concept["code"]) for concept in code_system["concept"])
    return names, tuple(patterns), codes


def _alternation(names: Iterable[str], *, word_boundaries: bool) -> re.Pattern[str]:
    """One regex for all names, longest first so each position takes its longest name."""
    unique = sorted(set(names), key=lambda name: (-len(name), name))
    if not unique:
        return _NEVER
    body = "|".join(re.escape(name) for name in unique)
    if word_boundaries:
        return re.compile(f"(?<!{_ASCII_WORD_EDGE})(?:{body})(?!{_ASCII_WORD_EDGE})")
    return re.compile(body)


def _names_to_codes(names: Iterable[tuple[str, str, str]]) -> dict[str, frozenset[str]]:
    codes: dict[str, set[str]] = {}
    for name, _, code in names:
        codes.setdefault(name, set()).add(code)
    return {name: frozenset(found) for name, found in codes.items()}


def _read_json(path: Path) -> Mapping[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} does not hold a JSON object")
    return data
