#!/usr/bin/env bash
# Stop the Docker engine only if scripts/ensure-docker.sh started it (by its PID file).
set -euo pipefail
STATE_DIR="${WATCHER_STATE_DIR:-/var/tmp/serving-watcher}"
PIDFILE="$STATE_DIR/dockerd.pid"
[ -f "$PIDFILE" ] || { echo "stop-docker: no engine started by us"; exit 0; }
pid=$(cat "$PIDFILE")
if kill -0 "$pid" 2>/dev/null; then
  kill -TERM "$pid"
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
fi
rm -f "$PIDFILE"
