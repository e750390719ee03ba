"""`watcher pause|resume|dry-run|silence` against a real in-process API; `--version`; shell completion."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from watcher import __version__
from watcher.api import Api
from watcher.cli import app
from watcher.control import parse_duration

TOKEN = "cli-t0ken-for-tests"
runner = CliRunner()


class Calls:
    def __init__(self) -> None:
        self.got: list[tuple[str, dict[str, Any]]] = []

    def handler(self, name: str) -> Any:
        def handle(body: dict[str, Any]) -> dict[str, Any]:
            if name == "silence" and body["duration_s"] > 30 * 86400:
                raise ValueError("duration_s: at most 2592000 seconds")
            self.got.append((name, body))
            return {"ok": name}

        return handle


@pytest.fixture
def calls() -> Calls:
    return Calls()


def _api(calls: Calls, token: str | None) -> Api:
    mutations = {name: calls.handler(name) for name in ("silence", "pause", "resume", "dry-run")}
    status = lambda: {}  # noqa: E731
    return Api(("127.0.0.1", 0), CollectorRegistry(), lambda: (True, {}), lambda: (True, {}), status, mutations, token)


@pytest.fixture
def api(calls: Calls) -> Iterator[Api]:
    server = _api(calls, TOKEN).start()
    yield server
    server.stop()


def invoke(args: list[str], token: str | None = TOKEN) -> Any:
    env = {"WATCHER_API_TOKEN": token} if token is not None else {}
    return runner.invoke(app, args, env=env)


def test_version_option_and_shell_completion() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == __version__
    completion = runner.invoke(app, ["--show-completion", "bash"], prog_name="watcher")
    assert completion.exit_code == 0, completion.output
    assert "complete" in completion.stdout and "_WATCHER_COMPLETE" in completion.stdout


def test_each_command_sends_its_body_with_the_token(api: Api, calls: Calls, tmp_path: Path) -> None:
    where = ["--api", f"127.0.0.1:{api.port}"]
    assert invoke(["pause", *where]).exit_code == 0
    assert invoke(["resume", *where]).exit_code == 0
    result = invoke(["dry-run", "off", *where])
    assert result.exit_code == 0 and '"ok": "dry-run"' in result.stdout
    assert invoke(["dry-run", "on", *where]).exit_code == 0
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    args = ["silence", "target=local/tfs-1", "rule=oom*", "--duration", "1h30m", "--comment", "deploy"]
    silenced = invoke([*args, *where, "--token-file", str(token_file)], token=None)
    assert silenced.exit_code == 0, silenced.output
    assert calls.got == [
        ("pause", {}),
        ("resume", {}),
        ("dry-run", {"enabled": False}),
        ("dry-run", {"enabled": True}),
        ("silence", {"matchers": {"target": "local/tfs-1", "rule": "oom*"}, "duration_s": 5400.0, "comment": "deploy"}),
    ]


def test_the_address_comes_from_the_settings(api: Api, calls: Calls) -> None:
    result = runner.invoke(
        app, ["pause"], env={"WATCHER_API_TOKEN": TOKEN, "WATCHER_API_LISTEN": f"0.0.0.0:{api.port}"}
    )
    assert result.exit_code == 0, result.output
    assert calls.got == [("pause", {})]


def test_refusals_are_one_line_each(api: Api, calls: Calls) -> None:
    where = ["--api", f"http://127.0.0.1:{api.port}"]
    wrong = invoke(["pause", *where], token="not-the-token")
    assert wrong.exit_code == 1 and "Traceback" not in wrong.output
    assert "401: missing or wrong bearer token" in wrong.output and "WATCHER_API_TOKEN" in wrong.output
    assert len(wrong.output.strip().splitlines()) == 1
    empty = invoke(["pause", *where], token=None)
    assert empty.exit_code == 1 and "401" in empty.output
    # the server's own 4xx text reaches the operator (here the handler refuses an empty silence)
    server_says = invoke(["silence", "target=x", "--duration", "60d", *where])
    assert server_says.exit_code == 1 and "400: duration_s: at most 2592000 seconds" in server_says.output
    assert invoke(["silence", "target=", *where]).exit_code == 2
    assert invoke(["dry-run", "maybe", *where]).exit_code == 2
    assert invoke(["silence", "target=x", "--duration", "soon", *where]).exit_code == 2
    assert calls.got == []


def test_a_server_refusal_prints_its_json_error(calls: Calls) -> None:
    server = _api(calls, None).start()  # no token configured: mutations are refused outright (403)
    try:
        result = invoke(["resume", "--api", f"127.0.0.1:{server.port}"])
    finally:
        server.stop()
    assert result.exit_code == 1
    assert "403: mutations are disabled: set WATCHER_API_TOKEN" in result.output


def test_no_watcher_there_is_connection_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        result = invoke(["pause", "--api", f"127.0.0.1:{port}"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"cannot reach the watcher at http://127.0.0.1:{port}/pause: connection refused" in result.output


def test_missing_token_file_is_one_line(tmp_path: Path) -> None:
    result = invoke(["pause", "--api", "127.0.0.1:1", "--token-file", str(tmp_path / "nope")])
    assert result.exit_code == 1 and "cannot read the token file" in result.output


@pytest.mark.parametrize(("text", "seconds"), [("3600", 3600.0), ("30m", 1800.0), ("1h30m", 5400.0), ("2d", 172800.0)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "-5", "1x", "h", "1h 30m"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)
