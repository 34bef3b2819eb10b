#!/bin/sh
# The influxdb stand-in's entrypoint: with INFLUXDB_DB and no metadata yet (a first start), start
# influxd on loopback, create the database, stop it; then run the given command (influxd).
set -eu

if [ "${1#-}" != "${1:-}" ]; then
    set -- influxd "$@"
fi

if [ "${1:-}" = influxd ] && [ -n "${INFLUXDB_DB:-}" ] && [ ! -d /var/lib/influxdb/meta ]; then
    INFLUXDB_HTTP_BIND_ADDRESS=127.0.0.1:8086 "$@" &
    pid=$!
    tries=0
    until curl -sf http://127.0.0.1:8086/ping; do
        tries=$((tries + 1))
        if [ "$tries" -gt 60 ]; then
            echo "influxdb: the init server did not answer within 30 s" >&2
            exit 1
        fi
        sleep 0.5
    done
    curl -sf -XPOST http://127.0.0.1:8086/query --data-urlencode "q=CREATE DATABASE \"$INFLUXDB_DB\"" >/dev/null
    kill -TERM "$pid"
    wait "$pid" || true
    echo "influxdb: created database $INFLUXDB_DB"
fi

exec "$@"
