#!/bin/sh
# Entrypoint of the Residency Scheduler stand-in (same behaviour as the real image):
#   no arguments      -> refuse unsafe production settings, `alembic upgrade head`, then uvicorn
#   any other command -> exec it (e.g. `celery -A app.core.celery_app worker`, `alembic downgrade -1`)
# UVICORN_WORKERS (default 1) sets uvicorn's worker processes; with more than one, metrics are
# collected through PROMETHEUS_MULTIPROC_DIR (default /tmp/prometheus-multiproc), emptied here.
set -eu
# The image keeps the app in /app; a source checkout runs backend/entrypoint.sh in place.
here="$(cd "$(dirname "$0")" && pwd)"
if [ -f "$here/alembic.ini" ]; then cd "$here"; else cd /app; fi

if [ -n "${PROMETHEUS_MULTIPROC_DIR:-}" ]; then
    mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
fi

if [ "$#" -gt 0 ]; then
    exec "$@"
fi

workers="${UVICORN_WORKERS:-1}"
if [ "$workers" -gt 1 ]; then
    export PROMETHEUS_MULTIPROC_DIR="${PROMETHEUS_MULTIPROC_DIR:-/tmp/prometheus-multiproc}"
    mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
fi
if [ -n "${PROMETHEUS_MULTIPROC_DIR:-}" ]; then
    # Samples of an earlier run would be added to this run's counters.
    find "$PROMETHEUS_MULTIPROC_DIR" -mindepth 1 -delete
fi

python -m app.core.config
alembic upgrade head
log_level="$(printf '%s' "${LOG_LEVEL:-INFO}" | tr '[:upper:]' '[:lower:]')"
exec uvicorn app.main:app --host 0.0.0.0 --port "${PORT:-8000}" \
    --workers "$workers" --log-level "$log_level"
