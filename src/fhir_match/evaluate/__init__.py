"""Stage 3, EVALUATE: patient records in, criterion results out (no FHIR I/O, no Celery).

The CQL engine bridge lives in :mod:`fhir_match.evaluate.engine`.
"""

__all__: list[str] = []
