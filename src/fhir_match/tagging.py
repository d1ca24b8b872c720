"""Run tags: a ``meta.tag`` that marks test data and everything written about it.

On a shared test server (the public HAPI sandbox) a tag is how one user's synthetic
patients are told from everyone else's: seeding adds it, discovery with a tag looks only
at resources carrying it and tags what it writes, and removal deletes by it.
"""

from __future__ import annotations

from fhir_match.records import Json

__all__ = ["TAG_SYSTEM", "tag_token", "tagged"]

TAG_SYSTEM = "https://fhir-match.org/fhir/CodeSystem/run-tag"


def tag_token(tag: str) -> str:
    """The ``_tag`` search value for a tag."""
    return f"{TAG_SYSTEM}|{tag}"


def tagged(resource: Json, tag: str) -> Json:
    """A copy of the resource carrying the tag (replacing any other run tag); unchanged
    when ``tag`` is empty."""
    if not tag:
        return resource
    meta = dict(resource.get("meta") or {})
    tags = [t for t in meta.get("tag") or [] if t.get("system") != TAG_SYSTEM]
    meta["tag"] = [*tags, {"system": TAG_SYSTEM, "code": tag}]
    return {**resource, "meta": meta}
