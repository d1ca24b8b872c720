"""Synthetic hospital populations in FHIR R4, with the screening answers each patient was made
to give."""

from fhir_match.synth.generate import (
    DEFAULT_AS_OF,
    DEFAULT_ITP_SHARE,
    Format,
    GenerationSummary,
    generate,
)

__all__ = ["DEFAULT_AS_OF", "DEFAULT_ITP_SHARE", "Format", "GenerationSummary", "generate"]
