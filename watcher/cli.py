"""The ``watcher`` command: run the watcher, replay recordings, author and test rule packs, read incidents.

The testbed, the demo and the evaluations are not part of the product: ``python -m testbed`` in a
checkout (see :mod:`testbed.cli`).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, BinaryIO, TypeVar

import typer

from watcher import __version__

if TYPE_CHECKING:
    from watcher.rulepack.compile import RuleSet

T = TypeVar("T")

app = typer.Typer(
    no_args_is_help=True, add_completion=True, help="serving-watcher: catch model servers before they fail."
)
# `watcher run` exit statuses besides 0/1 (2: configuration or rule packs), from sysexits.h
EXIT_STORE_UNUSABLE = 74  # EX_IOERR: the store is read-only, cannot be opened, or the disk is full
EXIT_STORE_LOCKED = 75  # EX_TEMPFAIL: another watcher holds the store

rules_app = typer.Typer(no_args_is_help=True, help="Rule packs: lint, test, schema, explain.")
app.add_typer(rules_app, name="rules")


def _default_packs() -> list[Path]:
    """The shipped packs (package data)."""
    from watcher.rules import shipped_packs

    return shipped_packs()


def _load_or_exit(paths: list[Path]) -> RuleSet:
    """The packs compiled as ``watcher run`` would compile them, or every error and exit 1."""
    from watcher.rulepack.compile import compile_packs
    from watcher.rulepack.loader import RulePackError

    try:
        return compile_packs(paths or _default_packs())
    except RulePackError as exc:
        for error in exc.errors:
            typer.echo(str(error), err=True)
        raise typer.Exit(1) from None


@rules_app.command("lint")
def rules_lint(packs: Annotated[list[Path], typer.Argument(help="pack files or directories")]) -> None:
    """Report every error of every pack at once as file:line:col: message; exit 1 if any.

    Lint is the compile ``watcher run`` does: a pack that lints clean builds an engine."""
    from watcher.rulepack.compile import lint

    errors = lint(packs)
    for error in errors:
        typer.echo(str(error))
    if errors:
        raise typer.Exit(1)
    typer.echo(f"ok: {len(packs)} path(s), no errors", err=True)


@rules_app.command("schema")
def rules_schema(
    out: Annotated[Path | None, typer.Option(help="write to this file instead of stdout")] = None,
) -> None:
    """JSON Schema of the rule-pack format, for editor completion."""
    from watcher.rulepack.schema import schema_json

    text = json.dumps(schema_json(), indent=2, sort_keys=True) + "\n"
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)


@rules_app.command("explain")
def rules_explain(
    packs: Annotated[list[Path], typer.Argument(help="pack files or directories")],
    log: Annotated[Path, typer.Option(help="log file to classify, one line per input line; - for standard input")],
    container: Annotated[str, typer.Option(help="container name the lines come from")] = "explain",
) -> None:
    """One JSON object per input line: which rules match it, what it predicts, its lifecycle tag.

    Lines end at ``\n`` only (a ``\r`` inside a line is part of it, one ``\r\n`` ending is one
    ending), as the watcher's log sources split them; a missing or unreadable file is an error, exit 2."""
    import sys

    from watcher.clock import ManualClock
    from watcher.engine import Engine
    from watcher.model import LogRecord, Target

    engine = Engine(_load_or_exit(packs), ManualClock())
    target = Target(container)
    name = "standard input" if str(log) == "-" else str(log)
    try:
        with contextlib.nullcontext(sys.stdin.buffer) if str(log) == "-" else log.open("rb") as f:
            for n, line in enumerate(_log_lines(f), 1):
                c = engine.classify(LogRecord(target, 0.0, line))
                row = {"line": n, "rules": list(c.rules), "predicts": [p.value for p in c.predicts]}
                row["lifecycle"] = [t.value for t in c.lifecycle]
                typer.echo(json.dumps(row))
    except OSError as exc:
        typer.echo(f"error: {name}: cannot read: {exc.strerror or exc}", err=True)
        raise typer.Exit(2) from None


def _log_lines(f: BinaryIO) -> Iterator[str]:
    """The lines of a binary stream split at ``\n`` alone, decoded as UTF-8 (bad bytes replaced).

    A line longer than the engine reads is cut (its rest skipped, still one line), so one endless
    line cannot take the memory: the engine matches only the first ``MAX_LINE_BYTES`` anyway."""
    from watcher.model import MAX_LINE_BYTES

    limit = 4 * MAX_LINE_BYTES  # MAX_LINE_BYTES characters of UTF-8
    while chunk := f.readline(limit):
        if not chunk.endswith(b"\n"):
            while (rest := f.readline(limit)) and not rest.endswith(b"\n"):
                pass
        line = chunk[:-1] if chunk.endswith(b"\n") else chunk
        if line.endswith(b"\r"):
            line = line[:-1]
        yield line.decode("utf-8", errors="replace")


@rules_app.command("test")
def rules_test(
    paths: Annotated[list[Path] | None, typer.Argument(help="rule test files or directories")] = None,
) -> None:
    """Run promtool-style rule tests (inputs over time -> expected findings)."""
    from watcher.rulepack.testing import main as run_tests

    raise typer.Exit(run_tests(paths or None))


@app.command()
def replay(
    inputs: Annotated[list[Path], typer.Argument(help="recorded signals (.jsonl) or plain log files")],
    pack: Annotated[list[Path] | None, typer.Option(help="rule packs (default: the shipped ones)")] = None,
    container: Annotated[str, typer.Option(help="container name for plain log files")] = "replay",
    step: Annotated[float, typer.Option(help="evaluation step in simulated seconds (> 0)")] = 1.0,
) -> None:
    """Replay recorded logs/events/series through the engine on a simulated clock; findings as JSON lines."""
    import math
    from itertools import chain

    from watcher.model import Signal, Target, finding_to_json
    from watcher.replay import ReplayInputError, is_recording, read_jsonl, read_log_file
    from watcher.replay import replay as run_replay

    if not (math.isfinite(step) and step > 0):
        typer.echo(f"error: --step must be a positive number of seconds, got {step:g}", err=True)
        raise typer.Exit(2)
    packs = _load_or_exit(pack or [])
    streams: list[Iterable[Signal]] = []
    for path in inputs:
        if not path.is_file():
            typer.echo(f"error: {path}: no such file", err=True)
            raise typer.Exit(2)
        streams.append(read_jsonl(path) if is_recording(path) else read_log_file(path, Target(container)))
    try:
        result = run_replay(packs, chain.from_iterable(streams), step_s=step)
    except ReplayInputError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except OSError as exc:  # a plain log file that went away or cannot be read
        typer.echo(f"error: {exc.filename or 'input'}: cannot read: {exc.strerror or exc}", err=True)
        raise typer.Exit(2) from None
    for finding in result.findings:
        typer.echo(json.dumps(finding_to_json(finding)))
    typer.echo(f"{result.signals} signals, {len(result.findings)} findings", err=True)


@app.command()
def record(
    out: Annotated[Path, typer.Option("--out", help="recording to write (.jsonl or .jsonl.gz)")],
    since: Annotated[str, typer.Option(help="start: a duration before now (2h), an ISO time or epoch seconds")] = "1h",
    until: Annotated[str, typer.Option(help="end: same forms; default now")] = "0s",
    config: Annotated[Path | None, typer.Option(envvar="WATCHER_CONFIG", help="YAML settings file")] = None,
    max_lines: Annotated[int, typer.Option(min=1, help="refuse to record more log lines than this")] = 2_000_000,
    max_samples: Annotated[int, typer.Option(min=1, help="refuse to record more samples than this")] = 2_000_000,
) -> None:
    """Record the configured fleet's logs, events and Prometheus series of a past stretch, for `watcher replay`.

    Docker logs and events of the selected containers with Docker's timestamps, and a range query
    for every series and PromQL rule of the configured packs at its own step. Exit 2 on a bad
    configuration or range, 3 when a bound is hit (nothing is written then)."""
    from watcher.config import ConfigError, load_settings
    from watcher.inventory import LabelNames
    from watcher.record import RecordError, RecordLimitError, RecordLimits, RecordSources, parse_when
    from watcher.record import record as run_record
    from watcher.redact import redact_text
    from watcher.rulepack.loader import RulePackError
    from watcher.service import load_or_explain

    try:
        settings = load_settings(config)
    except ConfigError as exc:
        typer.echo(f"configuration error:\n{exc}", err=True)
        raise typer.Exit(2) from None
    try:
        ruleset = load_or_explain(settings)
    except RulePackError:
        raise typer.Exit(2) from None
    now = time.time()
    sources = RecordSources(
        ruleset=ruleset,
        engines=settings.engines,
        labels=LabelNames(
            tuple(settings.label_selector),
            settings.service_label,
            settings.upstream_label,
            settings.model_label,
            settings.protocol_label,
        ),
        prometheus_url=settings.prometheus_url,
        prometheus_interval_s=settings.prometheus_interval_s,
        secrets=settings.secrets,
    )
    try:
        summary = run_record(
            sources, out, parse_when(since, now), parse_when(until, now), RecordLimits(max_lines, max_samples)
        )
    except RecordLimitError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(3) from None
    except RecordError as exc:
        typer.echo(f"error: {redact_text(str(exc), settings.secrets)}", err=True)
        raise typer.Exit(2) from None
    except Exception as exc:  # Docker unreachable and the like: one line, no trace, no secret
        typer.echo(f"error: {redact_text(f'{type(exc).__name__}: {exc}', settings.secrets)}", err=True)
        raise typer.Exit(1) from None
    typer.echo(
        f"{summary.path}: {len(summary.containers)} containers, {summary.lines} lines, {summary.events} events, "
        f"{summary.samples} samples, {len(summary.failures)} failures",
        err=True,
    )


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _main(
    show_version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    """serving-watcher: catch model servers before they fail."""


@app.command()
def run(
    config: Annotated[Path | None, typer.Option(envvar="WATCHER_CONFIG", help="YAML settings file")] = None,
) -> None:
    """Run the watcher: follow the fleet, predict failures, act within guard rails (dry-run by default)."""
    from watcher.config import ConfigError, load_settings
    from watcher.rulepack.loader import RulePackError
    from watcher.service import ApiListenError
    from watcher.service import run as run_service
    from watcher.store import StoreError, StoreLocked

    try:
        settings = load_settings(config)
    except ConfigError as exc:
        typer.echo(f"configuration error:\n{exc}", err=True)
        raise typer.Exit(2) from None
    try:
        raise typer.Exit(run_service(settings))
    except RulePackError:
        raise typer.Exit(2) from None
    except ApiListenError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except StoreLocked as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_STORE_LOCKED) from None
    except StoreError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_STORE_UNUSABLE) from None


@app.command()
def incidents(
    store: Annotated[Path, typer.Option(envvar="WATCHER_STORE", help="the watcher's SQLite store")] = Path(
        "watcher.db"
    ),
    as_json: Annotated[bool, typer.Option("--json", help="one JSON document with every incident")] = False,
    open_only: Annotated[bool, typer.Option("--open", help="only incidents still running")] = False,
) -> None:
    """Incidents with their timeline: finding, steps, outcomes, verification, durations.

    Read-only: opens the store with SQLite's ``mode=ro`` and never creates it (exit 2 when missing)."""
    from watcher.journal import Journal

    found = _read_store(store, lambda s: Journal(s).incidents(open_only=open_only))
    if as_json:
        typer.echo(json.dumps([i.to_json() for i in found], indent=2))
        return
    if not found:
        typer.echo("no incidents")
    for incident in found:
        d = incident.to_json()
        took = f"{d['duration_s']:.1f}s" if d["duration_s"] is not None else "running"
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(incident.opened))
        typer.echo(
            f"#{incident.id} {when}Z {incident.target} {incident.predicts} ({incident.rule_id}) -> "
            f"{incident.state.value} [{took}]{' DRY RUN' if incident.dry_run else ''}"
        )
        if incident.note:
            typer.echo(f"    note: {incident.note}")
        for step in d["steps"]:
            took = f"{step['duration_s']:.1f}s" if step["duration_s"] is not None else "..."
            detail = f" - {step['detail']}" if step["detail"] else ""
            typer.echo(f"    {step['idx']:>2} {step['name']:<15} {step['status']:<8} {took:>7}{detail}")


@app.command()
def findings(
    store: Annotated[Path, typer.Option(envvar="WATCHER_STORE", help="the watcher's SQLite store")] = Path(
        "watcher.db"
    ),
    as_json: Annotated[bool, typer.Option("--json", help="one JSON document with every finding")] = False,
    target: Annotated[str | None, typer.Option(help="only this target (engine/container)")] = None,
    limit: Annotated[int, typer.Option(min=1, help="the newest N findings")] = 1000,
) -> None:
    """Findings the watcher recorded (raised and resolved), oldest first, with their evidence.

    Read-only, like ``watcher incidents``: what a detector saw, whether or not it led to an incident."""
    rows = _read_store(store, lambda s: s.findings(target=target, limit=limit))
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo("no findings")
    for row in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(row["ts"]))
        state = "resolved" if row["resolved"] else "raised"
        eta = f" eta {row['eta_s']:.0f}s" if row.get("eta_s") is not None else ""
        typer.echo(f"{when}Z {row['target']} {row['predicts']} ({row['rule_id']}) {state}{eta}")


def _read_store(store: Path, read: Callable[[Any], T]) -> T:
    """Open the store read-only (SQLite ``mode=ro``, never created) and read from it; a missing or
    foreign file is one line and exit 2."""
    import sqlite3

    from watcher.store import Store, StoreError, StoreMissing

    try:
        return read(Store(store, read_only=True))
    except StoreMissing as exc:
        typer.echo(f"error: {exc} (set --store or WATCHER_STORE)", err=True)
        raise typer.Exit(2) from None
    except StoreError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except sqlite3.Error as exc:  # a store the watcher never wrote to (no such table)
        typer.echo(f"error: {store}: not a watcher store: {exc}", err=True)
        raise typer.Exit(2) from None


# -- talking to a running watcher (issue #19): silence, pause, resume, dry-run -----------------------------
ConfigOption = Annotated[
    Path | None, typer.Option("--config", envvar="WATCHER_CONFIG", help="the watcher's YAML settings file")
]
ApiOption = Annotated[
    str | None, typer.Option("--api", help="the watcher's API, host:port or URL (default: api_listen from settings)")
]
TokenFileOption = Annotated[
    Path | None, typer.Option("--token-file", help="file holding the API token (default: WATCHER_API_TOKEN)")
]


def _control(
    endpoint: str, body: dict[str, object], config: Path | None, api: str | None, token_file: Path | None
) -> None:
    """POST to the running watcher and print its answer as one JSON line; every failure one line, exit 1.

    The token is ``--token-file``, else ``WATCHER_API_TOKEN`` / the settings' ``api_token``; the address
    ``--api``, else the settings' ``api_listen``. Settings are read only when one of them is needed."""
    from watcher.config import ConfigError, load_settings
    from watcher.control import ControlError, api_base, post, read_token

    try:
        token = read_token(token_file) if token_file is not None else None
        if api is None or token is None:
            try:
                settings = load_settings(config)
            except ConfigError as exc:
                typer.echo(f"configuration error:\n{exc}", err=True)
                raise typer.Exit(2) from None
            api = api or settings.api_listen
            if token is None and settings.api_token is not None:
                token = settings.api_token.get_secret_value() or None
        answer = post(api_base(api), endpoint, body, token)
    except ControlError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(answer, sort_keys=True))


@app.command()
def pause(config: ConfigOption = None, api: ApiOption = None, token_file: TokenFileOption = None) -> None:
    """Pause the running watcher's actions (it keeps watching and alerting) until ``watcher resume``."""
    _control("pause", {}, config, api, token_file)


@app.command()
def resume(config: ConfigOption = None, api: ApiOption = None, token_file: TokenFileOption = None) -> None:
    """Let the running watcher act again after ``watcher pause`` (or a replaced store)."""
    _control("resume", {}, config, api, token_file)


@app.command("dry-run")
def dry_run(
    state: Annotated[str, typer.Argument(help="on: plan and journal only; off: act", metavar="on|off")],
    config: ConfigOption = None,
    api: ApiOption = None,
    token_file: TokenFileOption = None,
) -> None:
    """Switch the running watcher's dry-run on or off (until its next start, which applies actions_enabled)."""
    if state not in ("on", "off"):
        typer.echo(f"error: expected on or off, got {state!r}", err=True)
        raise typer.Exit(2)
    _control("dry-run", {"enabled": state == "on"}, config, api, token_file)


@app.command()
def silence(
    matchers: Annotated[
        list[str], typer.Argument(help="label=value pairs, e.g. target=local/tfs-1", metavar="LABEL=VALUE...")
    ],
    duration: Annotated[str, typer.Option(help="how long: seconds or 30m, 1h, 1h30m, 2d")] = "1h",
    comment: Annotated[str, typer.Option(help="why (shown in /status)")] = "",
    config: ConfigOption = None,
    api: ApiOption = None,
    token_file: TokenFileOption = None,
) -> None:
    """Silence the running watcher's actions on what the matchers select (target, service, rule, predicts)."""
    from watcher.control import parse_duration

    pairs: dict[str, str] = {}
    for item in matchers:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            typer.echo(f"error: expected LABEL=VALUE, got {item!r}", err=True)
            raise typer.Exit(2)
        pairs[key] = value
    try:
        seconds = parse_duration(duration)
    except ValueError as exc:
        typer.echo(f"error: --duration: {exc}", err=True)
        raise typer.Exit(2) from None
    _control("silence", {"matchers": pairs, "duration_s": seconds, "comment": comment}, config, api, token_file)


# -- watcher doctor (issue #19) ----------------------------------------------------------------------------
@app.command()
def doctor(config: ConfigOption = None) -> None:
    """Check the configuration and every dependency it names; one line per problem, exit 0 only when none.

    Loads the settings and rule packs as ``watcher run`` does, prints them with secrets redacted, asks
    each Docker engine, Prometheus (every series query), Alertmanager, the load balancer and the model
    repository one read-only question, and says which watched containers cannot be remediated and why."""
    from watcher.config import ConfigError, load_settings
    from watcher.doctor import Doctor, effective_settings

    typer.echo(f"watcher {__version__} doctor" + (f": {config}" if config else ": environment only (no --config)"))
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        for line in str(exc).splitlines():
            typer.echo(f"problem: configuration: {line}")
        typer.echo("1 or more problems: fix the configuration first")
        raise typer.Exit(1) from None
    typer.echo("effective settings (secrets redacted):")
    for name, value in effective_settings(settings).items():
        typer.echo(f"  {name}: {json.dumps(value)}")
    problems = warnings = 0
    for found in Doctor(settings).run():
        typer.echo(str(found))
        problems += found.kind == "problem"
        warnings += found.kind == "warning"
    if problems:
        typer.echo(f"{problems} problem(s), {warnings} warning(s)")
        raise typer.Exit(1)
    typer.echo(f"all checks passed ({warnings} warning(s))")


# -- watcher config show (issue #15) -----------------------------------------------------------------------
config_app = typer.Typer(no_args_is_help=True, help="Settings: show the effective configuration.")
app.add_typer(config_app, name="config")


@config_app.command("show")
def config_show(
    config: ConfigOption = None,
    site: Annotated[
        bool,
        typer.Option("--site", help="also print addresses, ports, paths and other site values (secrets stay masked)"),
    ] = False,
) -> None:
    """Print the settings ``watcher run`` would use (file + WATCHER_* environment) as JSON, secrets
    masked and, unless --site, every site value (where things are) masked too: two deployments of one
    settings file print the same text."""
    from watcher.config import ConfigError, effective_config, load_settings

    try:
        settings = load_settings(config)
    except ConfigError as exc:
        typer.echo(f"configuration error:\n{exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(effective_config(settings, mask_site=not site), indent=2, sort_keys=True))


if __name__ == "__main__":
    app()
