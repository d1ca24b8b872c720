# The fhir-match worker image for docker-compose.yml: Python, and Node for the CQL engine.
FROM python:3.11-slim-bookworm
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends nodejs npm \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY . .
RUN pip install --no-cache-dir -c constraints.txt -e . \
    && if [ -f node/package-lock.json ]; then cd node && npm ci --omit=dev --no-audit --no-fund; fi
USER nobody
