"""The Celery side of fhir-match: the app, its tasks, and (later) the beat schedule."""
