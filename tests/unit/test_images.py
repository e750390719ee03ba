"""Image tags are hashes of their inputs: unchanged inputs never rebuild, changed ones always do."""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed import images


@pytest.fixture
def sim_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "Dockerfile").write_text("ARG BASE\nFROM ${BASE}\n")
    (tmp_path / "tfserving_sim.py").write_text("print('hi')\n")
    monkeypatch.setattr(images, "SIMULATOR_DIR", tmp_path)
    return tmp_path


def test_simulator_tag_is_stable_for_unchanged_inputs(sim_dir: Path) -> None:
    assert images.simulator_tag() == images.simulator_tag()
    assert images.simulator_tag().startswith("serving-watcher/tfsim:")


def test_simulator_tag_changes_with_any_input(sim_dir: Path) -> None:
    before = images.simulator_tag()
    (sim_dir / "tfserving_sim.py").write_text("print('changed')\n")
    edited = images.simulator_tag()
    assert edited != before
    (sim_dir / "extra.txt").write_text("x")
    assert images.simulator_tag() not in {before, edited}


def test_simulator_tag_follows_the_base_image(sim_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = images.simulator_tag()
    monkeypatch.setattr(images, "BASE_PACKAGES", (*images.BASE_PACKAGES, "jq"))
    assert images.simulator_tag() != before


def test_renaming_a_file_changes_the_tag(sim_dir: Path) -> None:
    before = images.simulator_tag()
    (sim_dir / "tfserving_sim.py").rename(sim_dir / "sim.py")
    assert images.simulator_tag() != before
