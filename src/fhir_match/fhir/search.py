"""A FHIR search as an immutable value: refine it freely; I/O happens only when a client runs it."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Search"]


@dataclass(frozen=True)
class Search:
    """``GET [base]/[resource_type]?params``; each refinement returns a new Search.

    Several values given to one :meth:`where` call are alternatives (joined by a comma,
    FHIR's OR); calling :meth:`where` again with the same name adds a second condition
    (FHIR's AND).
    """

    resource_type: str
    params: tuple[tuple[str, str], ...] = ()

    def where(self, name: str, *values: str) -> Search:
        if not values:
            raise ValueError(f"search parameter {name!r} needs at least one value")
        return Search(self.resource_type, (*self.params, (name, ",".join(values))))

    def count(self, page_size: int) -> Search:
        """Ask for pages of ``page_size`` entries (the server may cap it)."""
        return self.where("_count", str(page_size))

    def include(self, *paths: str) -> Search:
        """Add ``_include`` for each ``Type:param`` path."""
        return Search(self.resource_type, (*self.params, *(("_include", p) for p in paths)))

    def revinclude(self, *paths: str) -> Search:
        """Add ``_revinclude`` for each ``Type:param`` path."""
        return Search(self.resource_type, (*self.params, *(("_revinclude", p) for p in paths)))
