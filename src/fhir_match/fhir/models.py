"""FHIR R4 JSON to and from fhir.resources models, with errors that carry no patient data.

fhir.resources' top-level modules model R5; R4 data parses with ``fhir.resources.R4B``,
which differs from R4 in none of the resources fhir-match uses.
"""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.resource import Resource
from pydantic import ValidationError

from fhir_match.errors import DataError

__all__ = ["Resource", "parse_resource", "to_json"]

_MAX_PROBLEMS = 5


def _where(data: dict[str, Any]) -> str:
    kind = data.get("resourceType", "?")
    return f"{kind}/{data['id']}" if isinstance(data.get("id"), str) else str(kind)


def parse_resource(data: Any) -> Resource:
    """Validate one resource's JSON as FHIR R4.

    The DataError names the resource and the failing fields but never their values,
    which may be patient data.
    """
    if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
        raise DataError("not a FHIR resource: a JSON object with a resourceType is required")
    try:
        model_class = get_fhir_model_class(data["resourceType"])
    except (KeyError, ValueError):
        raise DataError(f"unknown resourceType {data['resourceType']!r}") from None
    try:
        resource = model_class.model_validate(data)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}"
            for err in exc.errors(include_input=False, include_context=False)
        ]
        more = f" (+{len(problems) - _MAX_PROBLEMS} more)" if len(problems) > _MAX_PROBLEMS else ""
        raise DataError(
            f"invalid {_where(data)}: {'; '.join(problems[:_MAX_PROBLEMS])}{more}"
        ) from None
    if not isinstance(resource, Resource):  # a data type's name, e.g. "HumanName"
        raise DataError(f"unknown resourceType {data['resourceType']!r}")
    return resource


def to_json(resource: Resource) -> dict[str, Any]:
    """The resource as FHIR JSON (no nulls), ready to send."""
    data: dict[str, Any] = resource.model_dump(mode="json", exclude_none=True, by_alias=True)
    return data
