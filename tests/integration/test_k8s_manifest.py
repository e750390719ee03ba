"""deploy/k8s/serving-watcher.yaml run as a cluster would run it, without a cluster.

The shipped image (built offline, as in test_deploy.py) runs with the manifest's own environment
(ConfigMap + env, the secret from a test value), its user, read-only root file system, dropped
capabilities and volumes (the PVC becomes a bind-mounted temp dir, the emptyDir a tmpfs) -- and, as
in a pod, no Docker socket and no DOCKER_HOST. Only addresses are swapped: Prometheus, Alertmanager
and the API listen address go to loopback (real Prometheus and Alertmanager from testbed.services).

It must stay up (no crash loop), say on /readyz what it can watch (Prometheus) and what it cannot
(Docker: not configured, observe-and-alert only), and alert through the real Alertmanager: its
heartbeat (ServingWatcherWatchdog), then a finding from Prometheus series alone -- a pod whose
cAdvisor working set (testbed.cadvisor: cAdvisor's names and labels; cAdvisor itself has no Debian
package) leaks towards its limit is alerted under its ``pod`` label, as a dry run nothing acts on.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import docker
import pytest
import requests
import yaml

from testbed.cadvisor import CadvisorStandIn, PodMemory
from testbed.ports import free_port
from testbed.services import Alertmanager, Prometheus, ScrapeTarget
from tests.integration.test_deploy import watcher_image  # noqa: F401  (the offline-built image fixture)

pytestmark = pytest.mark.integration

MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "serving-watcher.yaml"
LABEL = "serving-watcher.k8s-test"
SECRET_VALUE = "k8s-test-api-token"
MB = 1024 * 1024


def _docs() -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in yaml.safe_load_all(MANIFEST.read_text()) if d}


def _configmaps() -> dict[str, dict[str, Any]]:
    """Every ConfigMap by name (the manifest has two: site values for the environment, the settings file)."""
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d and d["kind"] == "ConfigMap"]
    return {d["metadata"]["name"]: d for d in docs}


def _pod_spec() -> tuple[dict[str, Any], dict[str, Any]]:
    pod = _docs()["Deployment"]["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "watcher"]
    return pod, container


def manifest_env() -> dict[str, str]:
    """The watcher container's environment as the kubelet would assemble it: envFrom, then env."""
    maps = _configmaps()
    _, container = _pod_spec()
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source["configMapRef"]["name"]
        assert ref in maps, ref
        env.update({k: str(v) for k, v in maps[ref]["data"].items()})
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        else:
            assert "secretKeyRef" in item["valueFrom"], item
            env[item["name"]] = SECRET_VALUE
    return env


def run_options(data_dir: Path) -> dict[str, Any]:
    """docker run options from the pod's securityContext and volumes (no cluster needed)."""
    pod, container = _pod_spec()
    pod_sc, sc = pod.get("securityContext", {}), container.get("securityContext", {})
    uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
    gid = sc.get("runAsGroup", pod_sc.get("runAsGroup", uid))
    assert uid not in (None, 0) and (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot"))
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    tmpfs: dict[str, str] = {}
    binds: dict[str, dict[str, str]] = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "emptyDir" in volume:
            tmpfs[mount["mountPath"]] = f"uid={uid},gid={gid},mode=0700"
        elif "configMap" in volume:  # the kubelet writes each key as a file: so does the test
            files = data_dir.parent / f"configmap-{mount['name']}"
            files.mkdir(exist_ok=True)
            for key, value in _configmaps()[volume["configMap"]["name"]]["data"].items():
                (files / key).write_text(str(value))
                (files / key).chmod(0o644)
            files.chmod(0o755)
            binds[str(files)] = {"bind": mount["mountPath"], "mode": "ro"}
        else:  # the PVC: a fresh directory the pod's fsGroup could write
            assert "persistentVolumeClaim" in volume, volume
            data_dir.mkdir(mode=0o777, exist_ok=True)
            data_dir.chmod(0o777)
            binds[str(data_dir)] = {"bind": mount["mountPath"], "mode": "rw"}
    return {
        "user": f"{uid}:{gid}",
        "read_only": bool(sc.get("readOnlyRootFilesystem")),
        "cap_drop": list(sc.get("capabilities", {}).get("drop", [])),
        "security_opt": [] if sc.get("allowPrivilegeEscalation", True) else ["no-new-privileges"],
        "tmpfs": tmpfs,
        "volumes": binds,
    }


def _logs(container: Any) -> str:
    return str(container.logs().decode(errors="replace"))[-3000:]


def test_manifest_env_starts_observe_and_alert_only(
    docker_client: docker.DockerClient,
    watcher_image: str,  # noqa: F811
    tmp_path: Path,
    http: requests.Session,
) -> None:
    env = manifest_env()
    options = run_options(tmp_path / "data")
    assert options["read_only"] and options["cap_drop"] == ["ALL"] and "/tmp" in options["tmpfs"]
    assert env["WATCHER_ACTIONS_ENABLED"] == "false" and env["WATCHER_API_TOKEN"] == SECRET_VALUE
    api_port = free_port()
    am = Alertmanager(tmp_path / "am", free_port()).start()
    # the pods' memory as the kubelet's cAdvisor gives it (labels pod, namespace, container, image)
    cadvisor = CadvisorStandIn(free_port()).start()
    for pod in ("tfs-0", "tfs-1"):
        cadvisor.set_pod(PodMemory(pod, limit_bytes=256 * MB, base_bytes=60 * MB))
    scrape = [ScrapeTarget("kubelet-cadvisor", f"127.0.0.1:{cadvisor.port}")]
    prom = Prometheus(tmp_path / "prom", free_port(), scrape_interval_s=5.0, targets=scrape).start()
    # addresses only: the cluster's service names become loopback
    env |= {
        "WATCHER_PROMETHEUS_URL": prom.url,
        "WATCHER_ALERTMANAGER_URL": am.url,
        "WATCHER_API_LISTEN": f"127.0.0.1:{api_port}",
    }
    container = docker_client.containers.run(
        watcher_image,
        detach=True,
        network_mode="host",  # loopback services; no Docker socket is mounted, DOCKER_HOST unset
        environment=env,
        labels={LABEL: uuid.uuid4().hex[:10]},
        **options,
    )
    try:
        deadline = time.monotonic() + 45
        ready: requests.Response | None = None
        while time.monotonic() < deadline:
            container.reload()
            assert container.status in ("created", "running"), f"the watcher died:\n{_logs(container)}"
            try:
                ready = http.get(f"http://127.0.0.1:{api_port}/readyz", timeout=2)
                if ready.status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.5)
        assert ready is not None and ready.status_code == 200, (ready.text if ready else "", _logs(container))
        watching = ready.json()["watching"]
        assert watching["docker"].startswith("not configured") and "observe-and-alert only" in watching["docker"]
        assert watching["prometheus"] == "connected"
        assert watching["actions"].startswith("none possible")
        assert set(ready.json()["sources"]) == {"prometheus"}  # no Docker source was even started

        seen: list[str] = []
        while time.monotonic() < deadline and "ServingWatcherWatchdog" not in seen:
            seen = [a["labels"]["alertname"] for a in am.alerts()]
            time.sleep(0.5)
        assert "ServingWatcherWatchdog" in seen, (seen, _logs(container))

        # from Prometheus series alone to an alert: a pod leaking 4 MB/s towards its limit
        cadvisor.leak("tfs-0", 4 * MB)
        deadline = time.monotonic() + 60
        raised: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not raised:
            raised = [a for a in am.alerts() if a["labels"]["alertname"] == "ServingWatcher"]
            time.sleep(1)
        assert raised, _logs(container)
        [alert] = raised
        assert alert["labels"]["pod"] == "tfs-0" and alert["labels"]["rule"] == "memory-runway"
        assert alert["labels"]["predicts"] == "oom" and alert["labels"]["severity"] == "critical"
        assert "observe-and-alert" in alert["annotations"]["summary"]

        time.sleep(3)  # still up a moment later: no crash loop, no traceback
        container.reload()
        assert container.status == "running" and container.attrs["RestartCount"] == 0, _logs(container)
        assert "Traceback" not in _logs(container)
    finally:
        container.remove(force=True)
        prom.stop()
        am.stop()
        cadvisor.stop()
