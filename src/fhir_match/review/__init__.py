"""The coordinator's review app: a SMART on FHIR web app over the candidate lists
discovery wrote (``fhir-match review``)."""
