"""The status page in a real browser: the real `watcher run` against the testbed, one replica made
to answer 500s, and Debian's headless Chromium loading ``/`` while the incident runs.

Chromium, not an HTML parser, because what matters is what a person's browser shows under the
page's Content-Security-Policy (a stylesheet refused by the CSP would still parse). Only loopback
URLs; Chromium's background networking is off (this machine has no network to reach)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from testbed.loadgen import LoadGenerator
from testbed.stack import Testbed, TestbedConfig
from tests.integration.running import Running, wait_for

pytestmark = pytest.mark.integration

CHROMIUM_FLAGS = (
    "--headless",
    "--disable-gpu",
    "--no-sandbox",  # root in CI: Chromium's sandbox refuses to start as root
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
)


def chromium(tmp: Path, url: str, *args: str) -> str:
    """Run headless Chromium once on ``url`` (a loopback URL) and return what it printed."""
    assert url.startswith("http://127.0.0.1:"), url
    binary = shutil.which("chromium")
    assert binary, "Debian's chromium is missing: scripts/install-system.sh installs it"
    profile = tmp / f"chromium-{len(list(tmp.glob('chromium-*')))}"
    done = subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture
def bed(docker_client: docker.DockerClient) -> Iterator[Testbed]:
    with Testbed(TestbedConfig(replicas=2, weights=(2, 1), memory_limit="160m")) as bed:
        yield bed


def test_the_status_page_shows_an_incident_in_a_real_browser(bed: Testbed, tmp_path: Path) -> None:
    w = Running(bed, tmp_path)
    try:
        sick = bed.replicas[0]
        sick.set_faults({"error_ramp": {"start": 1.0, "end": 1.0, "over_s": 1}})
        gen = LoadGenerator(bed.url, "half_plus_two", 20, 8, 5.0, [1.0])
        gen.start()

        def incident() -> Any:
            doc = w.get("/status").json()
            return [i for i in doc["recent_incidents"] if i["target"].endswith(sick.name) and i["steps"]]

        [seen, *_] = wait_for(incident, 45, "an incident with steps for the sick replica")
        url = f"http://127.0.0.1:{w.port}/"
        shot = tmp_path / "status-page.png"
        chromium(tmp_path, url, f"--screenshot={shot}", "--window-size=1280,1000", "--hide-scrollbars")
        dom = chromium(tmp_path, url, "--dump-dom")
        gen.result()
    finally:
        assert w.stop() == 0
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank one
    if os.environ.get("WATCHER_STATUSPAGE_SHOT"):  # how docs/status-page.png is refreshed
        shutil.copy(shot, os.environ["WATCHER_STATUSPAGE_SHOT"])
    # the replica, the incident (linked to its JSON) and its steps, as the browser built the page
    assert f"<strong>{sick.name}</strong>" in dom
    assert f'href="/incidents/{seen["id"]}"' in dom
    assert "<code>drain</code>" in dom and "http_5xx" in dom
    assert "<h2>Policy</h2>" in dom and "restart budget" in dom
    assert "<script" not in dom
