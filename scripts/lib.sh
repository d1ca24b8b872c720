# Shared helpers for the stack scripts; sourced, never run.
# Everything the stack writes stays under var/ (gitignored): run/ pid files, log/ logs, data.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VAR="$ROOT/var"
mkdir -p "$VAR/run" "$VAR/log"

# Environment names shared with docker-compose.yml and the Python settings.
: "${FHIR_PORT:=8080}"
: "${FHIR_BASE_URL:=http://127.0.0.1:$FHIR_PORT/fhir}"
: "${REDIS_PORT:=6379}"
: "${REDIS_URL:=redis://127.0.0.1:$REDIS_PORT/0}"
: "${KEYCLOAK_PORT:=8180}"
: "${KEYCLOAK_URL:=http://127.0.0.1:$KEYCLOAK_PORT}"
export FHIR_PORT FHIR_BASE_URL REDIS_PORT REDIS_URL KEYCLOAK_PORT KEYCLOAK_URL

say() { printf '[%s] %s\n' "$(basename "$0")" "$*"; }

# pid_alive PIDFILE: true if the file names a live process.
pid_alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND once a second until it succeeds.
wait_for() {
  local limit=$1 what=$2; shift 2
  local start=$SECONDS
  until "$@" >/dev/null 2>&1; do
    if (( SECONDS - start >= limit )); then
      say "$what: not ready after ${limit}s"
      return 1
    fi
    sleep 1
  done
}

# stop_pid PIDFILE NAME: TERM, up to 30 s grace, then KILL; silent if not running.
stop_pid() {
  local pidfile=$1 name=$2
  if ! pid_alive "$pidfile"; then
    rm -f "$pidfile"
    say "$name: not running"
    return 0
  fi
  local pid; pid=$(cat "$pidfile")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 30); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 1
  done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  rm -f "$pidfile"
  say "$name: stopped"
}
