#!/bin/sh
# Container entrypoint.
#   - exports a default for every variable supervisord.conf expands (it refuses unset ones);
#   - LATIGO_ROLE=scheduler|executor|all picks which programs supervisord starts;
#   - LATIGO_MIGRATE=1 runs `latigo db upgrade` first;
#   - with arguments, runs them instead of supervisord (`docker run IMAGE latigo status`,
#     or one process per pod on Kubernetes); otherwise supervisord in the foreground.
set -eu

: "${LATIGO_ROLE:=all}"
: "${LATIGO_EXECUTORS:=2}"
: "${LATIGO_METRICS_BASE_PORT:=9100}"
: "${LATIGO_RUN_DIR:=/tmp/latigo}"
here=$(cd "$(dirname "$0")" && pwd)
: "${LATIGO_SUPERVISORD_CONF:=$here/../supervisord.conf}"

case "$LATIGO_ROLE" in
    all) LATIGO_SCHEDULER_AUTOSTART=true; LATIGO_EXECUTOR_AUTOSTART=true ;;
    scheduler) LATIGO_SCHEDULER_AUTOSTART=true; LATIGO_EXECUTOR_AUTOSTART=false ;;
    executor) LATIGO_SCHEDULER_AUTOSTART=false; LATIGO_EXECUTOR_AUTOSTART=true ;;
    *)
        echo "entrypoint: LATIGO_ROLE must be scheduler, executor or all, not '$LATIGO_ROLE'" >&2
        exit 2
        ;;
esac
case "$LATIGO_EXECUTORS" in
    '' | *[!0-9]* | 0)
        echo "entrypoint: LATIGO_EXECUTORS must be a whole number of at least 1, not '$LATIGO_EXECUTORS'" >&2
        exit 2
        ;;
esac
export LATIGO_ROLE LATIGO_EXECUTORS LATIGO_METRICS_BASE_PORT LATIGO_RUN_DIR LATIGO_SUPERVISORD_CONF
export LATIGO_SCHEDULER_AUTOSTART LATIGO_EXECUTOR_AUTOSTART
mkdir -p "$LATIGO_RUN_DIR"

if [ "${LATIGO_MIGRATE:-0}" = 1 ]; then
    latigo db upgrade
fi

if [ "$#" -gt 0 ]; then
    exec "$@"
fi
exec supervisord -n -c "$LATIGO_SUPERVISORD_CONF"
