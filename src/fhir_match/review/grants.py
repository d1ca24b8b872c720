"""What the token allows: SMART scopes read as permissions per resource type.

The app asks for no more than it needs and then shows only what the server granted: a
type it may not read is not fetched, a decision it may not write is not offered.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Grant", "requested_scopes"]

_V1 = {"read": "rs", "write": "cud", "*": "cruds"}
_ALL_TYPES = "*"
_STORED = ("Group", "Provenance", "ResearchStudy", "ResearchSubject")
"""What discovery writes: in the EHR, or in a write store of its own."""


@dataclass(frozen=True)
class Grant:
    """Permissions (letters of ``cruds``) per resource type, from ``user/`` scopes.

    Scopes with a query (``user/Observation.rs?category=...``) narrow a permission to some
    resources; the app cannot tell which, so it treats them as not granted.
    ``patient/`` scopes are not used: the app reviews many patients, not the launch patient.
    """

    permissions: tuple[tuple[str, str], ...] = ()
    unrestricted: bool = False
    """A FHIR server without authorization: everything it serves may be shown."""

    @classmethod
    def from_scope(cls, scope: str) -> Grant:
        found: dict[str, set[str]] = {}
        for item in scope.split():
            if not item.startswith("user/") or "?" in item or "." not in item:
                continue
            resource_type, _, letters = item.removeprefix("user/").partition(".")
            found.setdefault(resource_type, set()).update(_V1.get(letters, letters))
        return cls(tuple(sorted((t, "".join(sorted(p))) for t, p in found.items())))

    def allows(self, resource_type: str, letter: str) -> bool:
        if self.unrestricted:
            return True
        return any(
            t in (resource_type, _ALL_TYPES) and letter in letters
            for t, letters in self.permissions
        )

    def can_read(self, resource_type: str) -> bool:
        return self.allows(resource_type, "r") and self.allows(resource_type, "s")

    def with_store(self) -> Grant:
        """This grant on the EHR, and the lists fhir-match wrote to a store of its own: the
        app reaches that store with fhir-match's credentials, so a signed-in coordinator may
        read the lists and record decisions there."""
        store = tuple((t, "crus") for t in _STORED)
        kept = tuple(p for p in self.permissions if p[0] not in _STORED)
        return Grant(tuple(sorted(kept + store)), self.unrestricted)

    def can_decide(self) -> bool:
        """Recording a decision updates the ResearchSubject and creates its Provenance."""
        return self.allows("ResearchSubject", "u") and self.allows("Provenance", "c")


def requested_scopes(evidence_types: frozenset[str], ehr_launch: bool, store: bool = False) -> str:
    """The scopes to ask for: who the user is, the lists fhir-match wrote, the resources
    they cite as evidence, and the right to record a decision; nothing else. With a
    ``store`` of its own the lists are not in the EHR: only patients and evidence are."""
    reads = {"Patient", "Medication"} | (set() if store else set(_STORED))
    scopes = ["openid", "fhirUser", "profile"]
    if ehr_launch:
        scopes.append("launch")
    scopes += [f"user/{t}.rs" for t in sorted(reads | evidence_types)]
    if not store:
        scopes += ["user/ResearchSubject.u", "user/Provenance.c"]
    return " ".join(scopes)
