"""The wheel a user installs is the product: the shipped packs inside, the testbed and evaluations not."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    from setuptools import build_meta

    out = tmp_path_factory.mktemp("wheel")
    import os

    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        name = build_meta.build_wheel(str(out))
    finally:
        os.chdir(cwd)
    return zipfile.ZipFile(out / name)


def test_the_wheel_carries_the_shipped_packs_their_tests_and_schema(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    shipped = {p.name for p in (REPO / "watcher" / "rules").glob("*.yaml")}
    assert shipped >= {"tfserving.yaml", "nginx.yaml", "docker.yaml"}
    assert {f"watcher/rules/{n}" for n in shipped} <= names
    assert any(n.startswith("watcher/rules/tests/") and n.endswith("_test.yaml") for n in names)
    assert "watcher/rules/schema/rulepack.json" in names


def test_the_wheel_has_no_testbed_evaluations_or_tests(wheel: zipfile.ZipFile) -> None:
    tops = {n.split("/", 1)[0] for n in wheel.namelist()}
    assert "watcher" in tops
    assert not {"testbed", "benchmarks", "tests", "scripts"} & tops
    assert not [n for n in wheel.namelist() if "/testbed/" in n or "/eval/" in n or "simulator" in n]


def test_replay_outside_a_checkout_uses_the_packaged_packs(tmp_path: Path) -> None:
    """It used to find no packs without ``rules/`` beside it and report 0 findings with exit 0."""
    import subprocess
    import sys

    recording = REPO / "recordings" / "leak-4mb.jsonl.gz"
    proc = subprocess.run(
        [sys.executable, "-m", "watcher.cli", "replay", str(recording)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ""},
    )
    assert proc.returncode == 0, proc.stderr
    predicts = [line for line in proc.stdout.splitlines() if '"predicts": "oom"' in line]
    assert predicts, proc.stdout[-2000:] + proc.stderr[-2000:]
