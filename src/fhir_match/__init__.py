"""fhir-match: find clinical-trial candidates in an EHR over FHIR R4, with evidence."""

__all__ = ["__version__"]

__version__ = "0.1.0"
