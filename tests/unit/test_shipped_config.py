"""deploy/watcher.yaml is THE configuration: the code's defaults equal it, and Compose, Kubernetes,
the demo and the chaos benchmark all run it, changing only where things are (issue #15)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from watcher.cli import app
from watcher.config import SHIPPED_CONFIG, SITE_KEYS, ConfigError, Settings, effective_config, load_settings

DEPLOY = SHIPPED_CONFIG.parent


@pytest.fixture(autouse=True)
def _no_watcher_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("WATCHER_"):
            monkeypatch.delenv(name)


def test_code_defaults_equal_the_shipped_file_key_by_key() -> None:
    raw = yaml.safe_load(SHIPPED_CONFIG.read_text())
    assert set(raw) == set(Settings.model_fields), "keys in one but not the other"
    from_file = load_settings(SHIPPED_CONFIG).model_dump()
    defaults = Settings().model_dump()
    for key in Settings.model_fields:
        assert from_file[key] == defaults[key], key


def test_every_shipped_key_is_documented_by_a_comment() -> None:
    lines = SHIPPED_CONFIG.read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^[a-z_]+:", line):
            block = i
            while block > 0 and not lines[block - 1].startswith("#") and re.match(r"^[a-z_]+:", lines[block - 1]):
                block -= 1  # a run of related keys shares the comment above it
            assert block > 0 and lines[block - 1].startswith("#"), f"line {i + 1}: {line} has no comment"


def _substitute(value: str) -> str:
    """Compose's ${VAR:-default} with nothing set in the environment."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def compose_view() -> tuple[dict[str, str], Path]:
    """The watcher service's environment in deploy/compose.yaml, and the host file it mounts as WATCHER_CONFIG."""
    service = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["watcher"]
    env = {k: _substitute(str(v)) for k, v in service["environment"].items()}
    for volume in service["volumes"]:
        source, target = volume.split(":")[:2]
        if target == env["WATCHER_CONFIG"]:
            return env, (DEPLOY / source).resolve()
    raise AssertionError("compose does not mount the file WATCHER_CONFIG names")


def k8s_view() -> tuple[dict[str, str], str]:
    """The Deployment's environment (ConfigMap) and the text of the settings file it mounts at WATCHER_CONFIG."""
    docs = [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "serving-watcher.yaml").read_text()) if d]
    maps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    deployment = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    container = deployment["containers"][0]
    env: dict[str, str] = {}
    for ref in container.get("envFrom", []):
        env.update(maps[ref["configMapRef"]["name"]])
    config = Path(env["WATCHER_CONFIG"])
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(config.parent))
    volume = next(v for v in deployment["volumes"] if v["name"] == mount["name"])
    return env, maps[volume["configMap"]["name"]][config.name]


def _effective(env: dict[str, str], config: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What `watcher config show` prints for this environment and file."""
    with monkeypatch.context() as m:
        for name, value in env.items():
            if name.startswith("WATCHER_") and name != "WATCHER_CONFIG":
                m.setenv(name, value)
        result = CliRunner().invoke(app, ["config", "show", "--config", str(config)])
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.output))


def test_compose_mounts_the_shipped_file_and_sets_only_site_values(monkeypatch: pytest.MonkeyPatch) -> None:
    env, mounted = compose_view()
    assert mounted == SHIPPED_CONFIG
    overridden = {k.removeprefix("WATCHER_").lower() for k in env if k.startswith("WATCHER_")} - {"config"}
    assert overridden <= SITE_KEYS, overridden - SITE_KEYS
    assert _effective(env, mounted, monkeypatch) == _effective({}, SHIPPED_CONFIG, monkeypatch)


def test_kubernetes_carries_the_shipped_file_and_sets_only_site_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env, text = k8s_view()
    assert text == SHIPPED_CONFIG.read_text(), "the ConfigMap's watcher.yaml is not a copy of deploy/watcher.yaml"
    overridden = {k.removeprefix("WATCHER_").lower() for k in env if k.startswith("WATCHER_")} - {"config"}
    assert overridden <= SITE_KEYS, overridden - SITE_KEYS
    carried = tmp_path / "watcher.yaml"
    carried.write_text(text)
    assert _effective(env, carried, monkeypatch) == _effective({}, SHIPPED_CONFIG, monkeypatch)


class _Bed:
    """What HarnessSpec.for_testbed reads of a running testbed (loopback addresses, temp paths)."""

    run_id = "r1"
    model_repo = Path("/tmp/bed/models")

    class nginx:
        workdir = Path("/tmp/bed/nginx")

        @staticmethod
        def binary_path() -> str:
            return "/usr/sbin/nginx"

    haproxy = None

    @property
    def config(self) -> Any:
        from testbed.stack import TestbedConfig

        return TestbedConfig(model="half_plus_two")

    class alertmanager:
        port = 19093

    class prometheus:
        url = "http://127.0.0.1:19090"


def test_the_demo_and_benchmark_harness_run_the_shipped_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from testbed.harness import HarnessSpec

    spec = HarnessSpec.for_testbed(_Bed(), tmp_path / "w.db", dry_run=False)  # as benchmarks/chaos.py does
    assert Path(spec.config) == SHIPPED_CONFIG
    overrides = spec.site_overrides()
    assert set(overrides) <= SITE_KEYS, set(overrides) - SITE_KEYS
    settings = spec.settings()
    assert effective_config(settings) == effective_config(load_settings(SHIPPED_CONFIG))
    assert _effective({}, SHIPPED_CONFIG, monkeypatch) == effective_config(settings)


def test_a_timing_change_in_an_environment_shows_in_the_effective_configuration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The diff above can fail: a deployment that changes how often Prometheus is asked differs."""
    assert _effective({"WATCHER_PROMETHEUS_INTERVAL_S": "15"}, SHIPPED_CONFIG, monkeypatch) != _effective(
        {}, SHIPPED_CONFIG, monkeypatch
    )


def test_plain_strings_for_lists_and_mappings_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHER_LABEL_SELECTOR", "watcher.enable=true")
    monkeypatch.setenv("WATCHER_LB_LOG_FILES", "nginx, edge")
    monkeypatch.setenv("WATCHER_LOG_FILES", "nginx=/var/log/nginx/access.log,edge=/var/log/edge.log")
    monkeypatch.setenv("WATCHER_PINNED_VERSIONS", '{"half_plus_two": "123"}')  # JSON still works
    settings = load_settings()
    assert settings.label_selector == ["watcher.enable=true"]
    assert settings.lb_log_files == ["nginx", "edge"]
    assert settings.log_files == {"nginx": Path("/var/log/nginx/access.log"), "edge": Path("/var/log/edge.log")}
    assert settings.pinned_versions == {"half_plus_two": "123"}


def test_a_mapping_in_the_environment_that_is_neither_pairs_nor_json_says_the_form(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WATCHER_LOG_FILES", "/var/log/nginx/access.log")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert str(err.value).startswith("WATCHER_LOG_FILES: expected name=value pairs separated by commas")
    assert "\n" not in str(err.value)


def test_a_typo_in_the_file_is_reported_at_its_line_with_did_you_mean(tmp_path: Path) -> None:
    config = tmp_path / "watcher.yaml"
    config.write_text("lb: nginx\nprometheus_intervall_s: 5\n")
    with pytest.raises(ConfigError) as err:
        load_settings(config)
    assert str(err.value) == (
        f"{config}:2: prometheus_intervall_s: unknown setting; did you mean 'prometheus_interval_s'? "
        "(env WATCHER_PROMETHEUS_INTERVALL_S)"
    )


def test_watcher_run_with_a_typo_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "watcher.yaml"
    config.write_text("stats_intervl_s: 5\n")
    result = CliRunner().invoke(app, ["run", "--config", str(config)])
    assert result.exit_code == 2
    assert "did you mean 'stats_interval_s'?" in result.output
    assert "Traceback" not in result.output


def test_an_environment_mapping_replaces_the_files_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Kubernetes ConfigMap sets WATCHER_ENGINES='{}' over the shipped file's local engine: the
    environment wins a setting whole (a deep merge kept the file's engine, and the pod crash-looped on it)."""
    monkeypatch.setenv("WATCHER_ENGINES", "{}")
    assert load_settings(SHIPPED_CONFIG).engines == {}


def test_the_benchmarks_deployed_watcher_sets_only_site_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The chaos benchmark's ``watcher`` strategy: `watcher run` with the shipped file and the
    testbed's site values in the environment, as a deployment sets them (testbed/deployed.py)."""
    from testbed.deployed import DeployedWatcher
    from testbed.harness import HarnessSpec

    watcher = DeployedWatcher(HarnessSpec.for_testbed(_Bed(), tmp_path / "w.db"), tmp_path / "run")
    assert Path(watcher.env["WATCHER_CONFIG"]) == SHIPPED_CONFIG and watcher.knobs == []
    overridden = {k.removeprefix("WATCHER_").lower() for k in watcher.env if k.startswith("WATCHER_")} - {"config"}
    assert overridden <= SITE_KEYS, overridden - SITE_KEYS
    assert _effective(watcher.env, SHIPPED_CONFIG, monkeypatch) == _effective({}, SHIPPED_CONFIG, monkeypatch)
    assert watcher.env["DOCKER_HOST"].startswith("tcp://127.0.0.1:")  # Docker only through the socket proxy
    knob = HarnessSpec.for_testbed(_Bed(), tmp_path / "w.db", stats_interval_s=1.0)
    assert DeployedWatcher(knob, tmp_path / "k").knobs == ["stats_interval_s"]  # a row that changes timing says so


def test_a_fleet_over_several_engines_is_watched_through_one_socket_proxy_per_engine(tmp_path: Path) -> None:
    """Each Docker host runs its own socket proxy: the watcher's ``engines`` names each through its
    proxy, never a socket directly; the in-process harness reaches the testbed's engines by socket."""
    import json

    from testbed.deployed import DeployedWatcher
    from testbed.harness import HarnessSpec

    sockets = {"local": "/var/run/docker.sock", "e1": "/tmp/wde-a/docker.sock", "e2": "/tmp/wde-b/docker.sock"}
    spec = HarnessSpec.for_testbed(_Bed(), tmp_path / "w.db", engine_sockets=sockets)
    assert spec.site_overrides()["engines"] == {
        "local": "",
        "e1": "unix:///tmp/wde-a/docker.sock",
        "e2": "unix:///tmp/wde-b/docker.sock",
    }
    watcher = DeployedWatcher(spec, tmp_path / "run")
    engines = json.loads(watcher.env["WATCHER_ENGINES"])
    assert set(engines) == set(sockets) == set(watcher.proxy_ports)
    assert {engines[n] for n in sockets} == {f"tcp://127.0.0.1:{watcher.proxy_ports[n]}" for n in sockets}
    assert len(set(watcher.proxy_ports.values())) == 3


def test_the_readme_says_which_signal_each_shipped_rule_reads() -> None:
    """The README's table of signals counts every shipped rule once, under what it reads."""
    import re

    from watcher.rulepack.compile import load_packs
    from watcher.rules import SHIPPED_RULES

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text.split("### What the shipped rules read, and how often", 1)[1].split("\n\n", 2)[1]
    rows = {line.split("|")[1].strip(): line.split("|")[4] for line in section.splitlines()[2:] if line}
    logs = {m[0]: int(m[1]) for m in re.findall(r"(\w+) (\d+)", rows["container log lines (stdout/stderr)"])}
    logs |= {m[0]: int(m[1]) for m in re.findall(r"(\w+) (\d+)", rows["the load balancer's logs"])}
    events = {
        m[0]: int(m[1])
        for m in re.findall(r"(\w+) (\d+)", rows["container lifecycle (`die`, `oom`, `health_status`, restarts)"])
    }
    series = " ".join(v for k, v in rows.items() if k.startswith(("memory", "error ratio", "the replica's own")))
    for pack in load_packs([SHIPPED_RULES]):
        log_rules = [r for r in pack.rules if getattr(r, "match", None) is not None]
        event_rules = [r for r in pack.rules if getattr(r, "event", None) is not None]
        detectors = [r for r in pack.rules if r not in log_rules and r not in event_rules]
        assert logs.get(pack.pack, 0) == len(log_rules), pack.pack
        assert events.get(pack.pack, 0) == len(event_rules), pack.pack
        for rule in detectors:
            assert f"`{rule.id}`" in series, rule.id
