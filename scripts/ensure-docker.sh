#!/usr/bin/env bash
# Make sure a Docker engine answers. If none does, start one (loopback-safe flags: no bridge,
# no iptables) with a PID file and a log file, and wait for it. Never stops an engine it did
# not start: the PID file records only engines started here.
set -euo pipefail
STATE_DIR="${WATCHER_STATE_DIR:-/var/tmp/serving-watcher}"
mkdir -p "$STATE_DIR"
PIDFILE="$STATE_DIR/dockerd.pid"
LOGFILE="$STATE_DIR/dockerd.log"

if docker info >/dev/null 2>&1; then
  exit 0
fi
if ! command -v dockerd >/dev/null 2>&1; then
  echo "ensure-docker: dockerd not installed; run scripts/install-system.sh first" >&2
  exit 1
fi
echo "ensure-docker: starting dockerd (log: $LOGFILE)"
# setsid: the engine must outlive the make/pytest process group that started it.
setsid dockerd --bridge=none --iptables=false --ip-masq=false --pidfile "$STATE_DIR/dockerd.own.pid" \
  >"$LOGFILE" 2>&1 < /dev/null &
echo $! > "$PIDFILE"
for _ in $(seq 1 120); do
  if docker info >/dev/null 2>&1; then
    echo "ensure-docker: engine answers (pid $(cat "$PIDFILE"))"
    exit 0
  fi
  if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    echo "ensure-docker: dockerd exited; last log lines:" >&2
    tail -n 30 "$LOGFILE" >&2
    exit 1
  fi
  sleep 0.5
done
echo "ensure-docker: dockerd did not answer within 60 s; see $LOGFILE" >&2
exit 1
