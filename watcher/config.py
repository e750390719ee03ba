"""Configuration: a YAML file plus ``WATCHER_*`` environment variables, validated at start.

With no configuration at all on a Docker host the watcher does something useful and safe: it
watches containers carrying ``watcher.enable=true`` on the local engine, uses Docker stats when no
Prometheus is configured, loads the shipped rule packs, and runs in dry-run until actions are
enabled (``WATCHER_ACTIONS_ENABLED=true``). Environment variables override the file. Errors name
the setting (and the file) and say what was expected — never a traceback.
"""

from __future__ import annotations

import ipaddress
import os
import re
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from watcher.redact import url_secrets
from watcher.rules import SHIPPED_RULES


class ConfigError(ValueError):
    """Invalid configuration; ``str()`` is a list of `setting: problem` lines for the operator."""


SHIPPED_CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "watcher.yaml"
"""deploy/watcher.yaml: the one shipped settings file (Compose mounts it, the Kubernetes ConfigMap
carries it, the demo and the chaos benchmark read it). Its values equal :class:`Settings`' defaults
(tests/unit/test_shipped_config.py). Present in a source checkout, not in the installed wheel."""

SHIPPED_PACKS = "shipped"
"""The word that stands for the rule packs inside the installed package (``packs: [shipped]``): a
settings file cannot name a path inside site-packages."""

SITE_KEYS = frozenset(
    {
        # addresses and ports
        "engines", "prometheus_url", "alertmanager_url", "webhook_url", "external_url", "api_listen",
        # paths
        "store", "log_files", "nginx_upstreams_file", "nginx_pid_file", "nginx_conf", "nginx_binary",
        "nginx_error_log", "haproxy_socket", "model_repo", "cgroup_root",
        # which containers and load balancer this site has, and whether its operator allows actions
        "label_selector", "prometheus_target_label", "lb", "lb_log_files", "nginx_container", "haproxy_backend",
        "actions_enabled",
        # secrets
        "api_token", "webhook_token",
    }
)  # fmt: skip
"""The settings a deployment (Compose, Kubernetes, the testbed) may set on top of the shipped file:
where things are and what this site has — never how or how fast the watcher detects. ``watcher
config show`` masks them, so two deployments of the same file print the same configuration."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WATCHER_", extra="forbid", env_nested_delimiter="__")

    # what to watch
    engines: dict[str, str] = Field(default_factory=lambda: {"local": ""}, description="name -> Docker URL ('' = env)")
    label_selector: list[str] = Field(default_factory=lambda: ["watcher.enable=true"])
    service_label: str = "watcher.service"
    upstream_label: str = "watcher.upstream"
    model_label: str = "watcher.model"
    protocol_label: str = "watcher.protocol"
    packs: list[Path] = Field(
        default_factory=lambda: [Path(SHIPPED_PACKS)],
        validate_default=True,
        description=f"rule pack files or directories; {SHIPPED_PACKS!r} = the packs shipped in the package",
    )
    log_files: dict[str, Path] = Field(default_factory=dict, description="target name -> host log file to follow")
    lb_log_files: list[str] = Field(
        default_factory=lambda: ["nginx"],
        description="names in log_files that are the load balancer's own logs: only their lines name a replica",
    )
    prometheus_url: str | None = None
    prometheus_target_label: str = "replica"
    prometheus_interval_s: float = Field(default=5.0, gt=0, description="how often the packs' queries run")
    prometheus_window: str = Field(
        default="30s", description="rate window replacing $window in series queries (>= 4 scrape intervals)"
    )
    prometheus_blind_after_s: float = Field(
        default=30.0, gt=0, description="alert 'watcher blind' once every Prometheus query has failed this long"
    )
    stats_interval_s: float = Field(default=5.0, ge=0, description="Docker stats period; 0 = off")
    memory_near_interval_s: float = Field(
        default=0.5,
        ge=0,
        description="memory period for a replica at 40 % of its limit or more (the runway's points near it); 0 = off",
    )
    cgroup_root: Path | None = Field(
        default=Path("/sys/fs/cgroup"),
        description="the host's cgroup tree, read instead of Docker stats where the containers' files are there",
    )
    probe_interval_s: float = Field(
        default=0.5,
        ge=0,
        description="active probe period per replica (its own status call); 0 = off; at most one in flight each",
    )
    probe_timeout_s: float = Field(
        default=0.3, gt=0, description="a probe not answered within this is failed (well below the proxy timeout)"
    )
    # memory
    store: Path = Path("watcher.db")
    # acting
    actions_enabled: bool = False
    lb: Literal["nginx", "haproxy", "none"] = "none"
    nginx_upstreams_file: Path | None = None
    nginx_pid_file: Path | None = None
    nginx_container: str | None = None
    nginx_conf: Path | None = None
    nginx_binary: str = "nginx"
    nginx_error_log: Path | None = Field(
        default=None,
        description="host Nginx's error_log file: a refused reload is seen at once, with its [emerg] line",
    )
    haproxy_socket: Path | None = None
    haproxy_backend: str = ""
    model_repo: Path | None = None
    pinned_versions: dict[str, str] = Field(default_factory=dict)
    alertmanager_url: str | None = None
    webhook_url: str | None = None
    webhook_token: SecretStr | None = None
    alert_queue_max: int = Field(
        default=1000,
        ge=1,
        description="alerts queued per receiver while it is down; when full the oldest non-critical go",
    )
    alert_resend_s: float = Field(
        default=60.0,
        gt=0,
        le=100.0,
        description="an open incident's alert is re-sent this often; each delivery stays active for 3 periods "
        "(keep it well inside Alertmanager's resolve_timeout, 5m by default)",
    )
    external_url: str | None = Field(
        default=None,
        pattern=r"^https?://",
        description="the API's address as people reach it, for alert links (<external_url>/incidents/<id>); "
        "default: http://<api_listen> (set it when the API listens on 0.0.0.0: people cannot follow that)",
    )
    cooldown_override_s: float | None = Field(
        default=None, ge=0, description="replaces every pack's defaults.cooldown (seconds); unset: the packs' own"
    )
    restart_backoff_s: float = Field(
        default=30.0,
        ge=0,
        description="wait after a replica's first restart in its budget window before the next (doubles each time)",
    )
    restart_takes_s: float = Field(
        default=10.0,
        gt=0,
        description="how long a restart takes until the replica serves, until the journal has measured one: "
        "a finding with a shorter ETA is drained at once, and held drained when its restart is refused",
    )
    # the service itself
    api_listen: str = "127.0.0.1:9108"
    api_token: SecretStr | None = None
    heartbeat_s: float = Field(default=60.0, gt=0)
    reload_poll_s: float = Field(default=2.0, gt=0)
    shutdown_grace_s: float = Field(default=20.0, ge=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("packs")
    @classmethod
    def _shipped_packs(cls, value: list[Path]) -> list[Path]:
        return [SHIPPED_RULES if str(p) == SHIPPED_PACKS else p for p in value]

    @field_validator("prometheus_window")
    @classmethod
    def _promql_duration(cls, value: str) -> str:
        if not re.fullmatch(r"([0-9]+(ms|s|m|h|d|w|y))+", value):
            raise ValueError(f"expected a PromQL duration such as 30s, 1m or 1m30s, got {value!r}")
        return value

    @field_validator("haproxy_backend")
    @classmethod
    def _haproxy_name(cls, value: str) -> str:
        """Sent to HAProxy's runtime API as a command argument: only a name HAProxy could have."""
        from watcher.actions.haproxy import HAPROXY_NAME

        if value and not HAPROXY_NAME.fullmatch(value):
            raise ValueError(f"expected a HAProxy backend name (letters, digits, - _ . : only), got {value!r}")
        return value

    @field_validator("api_listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected host:port such as 127.0.0.1:9108, got {value!r}")
        return value

    @property
    def dry_run(self) -> bool:
        return not self.actions_enabled

    @property
    def secrets(self) -> list[str]:
        """Every part of the configuration that must never be printed (status, logs, alerts):
        tokens, URL passwords and query strings, and the webhook's path (often the token itself)."""
        found = url_secrets(self.prometheus_url) + url_secrets(self.alertmanager_url)
        found += url_secrets(self.webhook_url, keep_path=False)
        for url in self.engines.values():
            found += url_secrets(url)
        for secret in (self.api_token, self.webhook_token):
            if secret is not None and secret.get_secret_value():
                found.append(secret.get_secret_value())
        return found

    @property
    def api_loopback_only(self) -> bool:
        """True when the API listens on a loopback address only (then only local processes reach it)."""
        host = self.api_address[0]
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:  # a host name: it may resolve to anything
            return False

    @property
    def api_url(self) -> str:
        """Where alerts link to: ``external_url``, else the API's listen address."""
        if self.external_url:
            return self.external_url.rstrip("/")
        host, port = self.api_address
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}"

    @property
    def api_address(self) -> tuple[str, int]:
        host, _, port = self.api_listen.rpartition(":")
        return host.strip("[]"), int(port)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # environment first: it overrides the file (passed as init values)
        return _PlainEnvSource(settings_cls), init_settings

    @property
    def effective_stats_interval_s(self) -> float | None:
        """Docker stats period as the service runs it: off only when 0. Measured (issue #15): with stats
        off whenever Prometheus was configured, a 4 MB/s leak under 256 MB was first seen 5.2 s before the
        OOM kill and only by log rules -- cAdvisor's working set, scraped every 10 s, comes too late and
        too coarse for the memory runway. So stats stay on beside Prometheus, and the Prometheus source
        leaves the series Docker stats give to them (:class:`watcher.live.LiveWatcher`)."""
        return self.stats_interval_s or None


class _PlainEnvSource(EnvSettingsSource):
    """``WATCHER_*`` variables, where a list or mapping may be written plainly as well as in JSON:
    ``WATCHER_LABEL_SELECTOR=watcher.enable=true,tier=gpu`` (comma-separated) and
    ``WATCHER_LOG_FILES=nginx=/var/log/nginx/access.log`` (``name=value`` pairs, comma-separated)."""

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        try:
            return super().decode_complex_value(field_name, field, value)
        except ValueError:
            if not isinstance(value, str):
                raise
        origin = typing.get_origin(field.annotation)
        parts = [part.strip() for part in value.split(",") if part.strip()]
        if origin is list:
            return parts
        if origin is dict:
            pairs = [part.partition("=") for part in parts]
            if any(not sep or not key.strip() for key, sep, _ in pairs):
                env = f"WATCHER_{field_name.upper()}"
                raise ValueError(
                    f"{env}: expected name=value pairs separated by commas (e.g. {env}=a=x,b=y) or a JSON object, "
                    f"got {value!r}"
                )
            return {key.strip(): val.strip() for key, _, val in pairs}
        raise ValueError(f"WATCHER_{field_name.upper()}: expected JSON, got {value!r}")


def effective_config(settings: Settings, mask_site: bool = True) -> dict[str, Any]:
    """The settings as the watcher runs them, as plain data, secrets masked; with ``mask_site``
    every :data:`SITE_KEYS` value too, so what is left is what decides detection and timing — the
    same for every deployment of one settings file (``watcher config show``)."""
    from watcher.redact import redact_doc

    doc = settings.model_dump(mode="json")
    doc["packs"] = [SHIPPED_PACKS if Path(p) == SHIPPED_RULES else p for p in doc["packs"]]
    doc["effective_stats_interval_s"] = settings.effective_stats_interval_s
    for name in ("api_token", "webhook_token"):
        if doc.get(name) is not None:
            doc[name] = "***"
    doc = dict(redact_doc(doc, settings.secrets))
    if mask_site:
        for name in SITE_KEYS:
            doc[name] = "<site>"
        # derived from prometheus_url (an address): whether a site has Prometheus is its own business
        doc["effective_stats_interval_s"] = "<site>"
    return doc


def load_settings(path: Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    data: dict[str, Any] = {}
    key_lines: dict[str, int] = {}
    if path is not None:
        try:
            text = path.read_text()
            loaded = yaml.safe_load(text) or {}
            key_lines = _top_level_key_lines(text)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
            raise ConfigError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of settings at the top level")
        # a setting the environment gives wins whole: pydantic-settings would deep-merge a mapping
        # (WATCHER_ENGINES='{}' could not empty the file's engines)
        loaded = {k: v for k, v in loaded.items() if f"WATCHER_{str(k).upper()}" not in os.environ}
        data.update(loaded)
    data.update(overrides or {})
    try:
        return Settings(**data)
    except SettingsError as exc:  # an environment variable that cannot be decoded: its own message
        cause = exc.__cause__
        raise ConfigError(str(cause) if isinstance(cause, ValueError) else str(exc)) from None
    except ValidationError as exc:
        from watcher.rulepack.loader import key_hint

        lines = []
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"]) or "(settings)"
            if err["type"] == "extra_forbidden":
                msg = "unknown setting" + key_hint(name, list(Settings.model_fields))
            else:
                msg = err["msg"]
            top = str(err["loc"][0]) if err["loc"] else ""
            line = key_lines.get(top)
            origin = f"{path}:{line}: " if path is not None and line else f"{path}: " if path is not None else ""
            lines.append(f"{origin}{name}: {msg} (env WATCHER_{name.split('.')[0].upper()})")
        raise ConfigError("\n".join(lines)) from None


def _top_level_key_lines(text: str) -> dict[str, int]:
    """Top-level setting -> the 1-based line it is on, so a bad value is reported as ``file:line``."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return {}
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {str(k.value): k.start_mark.line + 1 for k, _ in node.value if isinstance(k, yaml.ScalarNode)}
