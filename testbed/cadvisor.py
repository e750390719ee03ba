"""A stand-in for cAdvisor's container memory series, for a testbed without cAdvisor.

cAdvisor is not packaged for Debian, so it cannot run here. What the shipped ``foresight`` pack
reads of it is two series, ``container_memory_working_set_bytes`` and
``container_spec_memory_limit_bytes`` (names and labels as the kubelet's cAdvisor endpoint gives
them: ``pod``, ``namespace``, ``container``, ``image``). This exporter serves those two for pods
whose working set the test sets -- a steady value or a leak of so many bytes per second -- so a real
Prometheus scrapes them and a real watcher queries them, as in a cluster.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from testbed.ports import LOOPBACK


@dataclass
class PodMemory:
    pod: str
    limit_bytes: float
    base_bytes: float
    leak_bytes_per_s: float = 0.0
    leak_since: float | None = None  # wall time the leak began; None: steady

    def working_set(self, now: float) -> float:
        grown = self.leak_bytes_per_s * max(0.0, now - self.leak_since) if self.leak_since is not None else 0.0
        return min(self.limit_bytes, self.base_bytes + grown)


class CadvisorStandIn:
    """``GET /metrics`` in Prometheus' text format, on 127.0.0.1 only."""

    def __init__(self, port: int, namespace: str = "serving", image: str = "tensorflow/serving:2.18.0") -> None:
        self.port = port
        self.namespace = namespace
        self.image = image
        self.pods: dict[str, PodMemory] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def set_pod(self, pod: PodMemory) -> None:
        with self._lock:
            self.pods[pod.pod] = pod

    def leak(self, pod: str, bytes_per_s: float) -> None:
        with self._lock:
            p = self.pods[pod]
            p.base_bytes, p.leak_bytes_per_s, p.leak_since = p.working_set(time.time()), bytes_per_s, time.time()

    def render(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        lines = [
            "# TYPE container_memory_working_set_bytes gauge",
            "# TYPE container_spec_memory_limit_bytes gauge",
        ]
        with self._lock:
            pods = list(self.pods.values())
        for p in pods:
            labels = f'container="server",image="{self.image}",namespace="{self.namespace}",pod="{p.pod}"'
            lines.append(f"container_memory_working_set_bytes{{{labels}}} {p.working_set(now):.0f}")
            lines.append(f"container_spec_memory_limit_bytes{{{labels}}} {p.limit_bytes:.0f}")
        return "\n".join(lines) + "\n"

    def start(self) -> CadvisorStandIn:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = owner.render().encode()
                self.send_response(200 if self.path.split("?")[0] == "/metrics" else 404)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer((LOOPBACK, self.port), Handler)
        threading.Thread(target=self._server.serve_forever, name="cadvisor-standin", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
