"""The coordinator's review app: a SMART on FHIR web app over the candidate lists
discovery wrote (``fhir-match review``)."""

import warnings

from authlib.deprecate import AuthlibDeprecationWarning

# Authlib 1.9 prefers its httpx2 fork and warns when it falls back to httpx, which the rest
# of fhir-match uses (pinned); one HTTP library is enough. Set after authlib's own filters.
warnings.filterwarnings(
    "ignore", message="The httpx module is deprecated", category=AuthlibDeprecationWarning
)
