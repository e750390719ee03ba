"""Real model servers (MLServer, KServe) run as host processes on loopback, serving models the
project builds itself. The files here run inside the servers' own virtualenv
(``scripts/install-oip-servers.sh``), not the watcher's: they import nothing from ``watcher``."""
