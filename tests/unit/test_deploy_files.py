"""The deploy/ files hang together: compose, Nginx, Prometheus, Grafana, k8s, models (no services)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from watcher.actions.nginx import UpstreamFile

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
REPLICAS = ("tfs-1", "tfs-2", "tfs-3")
# WATCHER_* names the deploy files pass that are not Settings fields (accepted aliases)
ALIASES: set[str] = {"CONFIG"}  # WATCHER_CONFIG: the settings file `watcher run` reads (its --config)


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_replicas_are_real_tfserving_with_health_metrics_limits_and_labels() -> None:
    services = _compose()["services"]
    for name in REPLICAS:
        svc = services[name]
        assert "tensorflow/serving" in svc["image"]
        assert svc["container_name"] == name
        assert any(a.startswith("--monitoring_config_file=") for a in svc["command"])
        assert svc["mem_limit"]
        check = " ".join(svc["healthcheck"]["test"])
        assert "GET /v1/models/half_plus_two" in check and "AVAILABLE" in check
        assert "curl" not in check  # the tensorflow/serving image has none
        assert svc["labels"] == {
            "watcher.enable": "true",
            "watcher.service": "half_plus_two",
            "watcher.model": "half_plus_two",
            "watcher.upstream": f"{name}:8501",
        }
        assert "../models:/models:ro" in svc["volumes"]
    monitoring = (DEPLOY / "prometheus" / "tfserving_monitoring.config").read_text()
    assert 'path: "/monitoring/prometheus/metrics"' in monitoring and "enable: true" in monitoring


def test_nginx_upstreams_match_replica_labels() -> None:
    upstreams = UpstreamFile((DEPLOY / "nginx" / "upstreams.conf").read_text())
    assert {s.address: s.weight for s in upstreams.servers} == {"tfs-1:8501": 3, "tfs-2:8501": 2, "tfs-3:8501": 1}
    assert {s.upstream for s in upstreams.servers} == {"half_plus_two"}
    conf = (DEPLOY / "nginx" / "nginx.conf").read_text()
    assert "include /etc/nginx/upstreams/upstreams.conf;" in conf
    assert "proxy_pass http://half_plus_two;" in conf


def test_watcher_reaches_docker_only_through_the_socket_proxy() -> None:
    services = _compose()["services"]
    watcher = services["watcher"]
    assert watcher["environment"]["DOCKER_HOST"] == "tcp://socket-proxy:2375"
    mounts_socket = {n for n, s in services.items() if any("docker.sock" in v for v in s.get("volumes", []))}
    assert "watcher" not in mounts_socket
    assert mounts_socket <= {"socket-proxy", "cadvisor"}
    assert _compose()["networks"]["docker-api"]["internal"] is True
    assert set(services["socket-proxy"]["networks"]) == {"docker-api"}
    # the guard lets per-container calls through only for the replicas' selector and the Nginx container
    proxy = services["socket-proxy"]
    assert proxy["entrypoint"] == ["python", "-m", "watcher.guard_proxy"]
    allowed = [a.removeprefix("--allow-label=") for a in proxy["command"] if a.startswith("--allow-label=")]
    selectors = [set(a.split(",")) for a in allowed]  # each one must be matched whole (all pairs)
    from watcher.config import SHIPPED_CONFIG, load_settings

    assert "WATCHER_LABEL_SELECTOR" not in watcher["environment"]  # the shipped file's selector, then:
    assert watcher["environment"]["WATCHER_CONFIG"] == "/etc/watcher/watcher.yaml"
    assert set(load_settings(SHIPPED_CONFIG).label_selector) in selectors
    assert any(s <= {f"{k}={v}" for k, v in services["nginx"]["labels"].items()} for s in selectors)
    # the upstream file is shared (a directory volume: the watcher replaces the file by rename)
    assert "nginx-upstreams:/etc/nginx/upstreams" in services["nginx"]["volumes"]
    assert "nginx-upstreams:/etc/nginx/upstreams" in watcher["volumes"]
    assert watcher["environment"]["WATCHER_NGINX_CONTAINER"] == services["nginx"]["container_name"]
    assert "exec nginx" in " ".join(services["nginx"]["command"])  # nginx is PID 1: HUP reloads it


def test_published_ports_bind_loopback() -> None:
    for name, svc in _compose()["services"].items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on all interfaces"


def _env_names() -> set[str]:
    names = set(_compose()["services"]["watcher"]["environment"])
    for doc in yaml.safe_load_all((DEPLOY / "k8s" / "serving-watcher.yaml").read_text()):
        if doc["kind"] == "ConfigMap":
            names |= set(doc["data"])
    names |= set(re.findall(r"\b(WATCHER_[A-Z_]+)=", (DEPLOY / "Dockerfile").read_text()))
    return {n for n in names if n.startswith("WATCHER_")}


def test_every_watcher_env_var_is_a_setting() -> None:
    config = pytest.importorskip("watcher.config")
    fields = {name.upper() for name in config.Settings.model_fields}
    unknown = {n for n in _env_names() if n.removeprefix("WATCHER_") not in fields | ALIASES}
    assert not unknown, f"deploy files pass settings watcher.config does not know: {sorted(unknown)}"


def test_prometheus_scrapes_tfserving_on_its_metrics_path() -> None:
    cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    tfs = jobs["tfserving"]
    assert tfs["metrics_path"] == "/monitoring/prometheus/metrics"
    seen = {sc["labels"]["replica"]: sc["targets"] for sc in tfs["static_configs"]}
    assert seen == {name: [f"{name}:8501"] for name in REPLICAS}
    assert jobs["watcher"]["static_configs"][0]["targets"] == ["watcher:9108"]
    assert jobs["cadvisor"]["static_configs"][0]["targets"] == ["cadvisor:8080"]
    assert cfg["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]


def test_grafana_dashboard_uses_the_provisioned_datasource() -> None:
    ds = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    uid = ds["datasources"][0]["uid"]
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "serving-watcher.json").read_text())
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    for needle in ("container_spec_memory_limit_bytes", ":tensorflow:serving:request_count", "watcher_findings_total"):
        assert needle in exprs
    assert {p["datasource"]["uid"] for p in dash["panels"]} == {uid}


def test_k8s_manifests_least_privilege() -> None:
    """Observe-and-alert only (no Kubernetes driver): it calls no Kubernetes API, so it is granted no
    verb at all and its ServiceAccount token is not mounted."""
    docs = list(yaml.safe_load_all((DEPLOY / "k8s" / "serving-watcher.yaml").read_text()))
    kinds = [d["kind"] for d in docs]
    for kind in ("Namespace", "ServiceAccount", "ConfigMap", "Deployment", "Service"):
        assert kind in kinds
    assert not {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"} & set(kinds)
    account = next(d for d in docs if d["kind"] == "ServiceAccount")
    assert account["automountServiceAccountToken"] is False
    config = next(d for d in docs if d["kind"] == "ConfigMap")
    assert config["data"]["WATCHER_ENGINES"] == "{}"  # no Docker engine in a pod: observe-and-alert
    deploy = next(d for d in docs if d["kind"] == "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert deploy["spec"]["replicas"] == 1 and pod["securityContext"]["runAsNonRoot"] is True
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


@pytest.mark.parametrize(("version", "offset"), [(1, 2.0), (2, 3.0)])
def test_real_savedmodels_beside_the_simulator_files(version: int, offset: float) -> None:
    folder = REPO / "models" / "half_plus_two" / str(version)
    assert (folder / "saved_model.pb").stat().st_size > 1000
    assert (folder / "variables" / "variables.index").is_file()
    assert list((folder / "variables").glob("variables.data-*"))
    assert json.loads((folder / "model.json").read_text())["offset"] == offset
