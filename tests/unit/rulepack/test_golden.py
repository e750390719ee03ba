"""Golden files: every good pack loads, every bad pack yields exactly its ``.errors`` lines.

A bad case is a stem: ``<stem>.yaml`` alone, or ``<stem>.1.yaml``, ``<stem>.2.yaml``... linted
together (for errors across files). Regenerate nothing automatically: a changed message is a
reviewed change to the golden file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from watcher.rulepack import RulePackError, lint, load_packs

GOLDEN = Path(__file__).parent / "golden"
GOOD = sorted((GOLDEN / "good").glob("*.yaml"))
BAD_CASES = sorted((GOLDEN / "bad").glob("*.errors"))


def _files_for(errors_file: Path) -> list[Path]:
    stem = errors_file.name.removesuffix(".errors")
    single = errors_file.with_name(f"{stem}.yaml")
    if single.exists():
        return [Path(single.name)]
    return [Path(p.name) for p in sorted(errors_file.parent.glob(f"{stem}.*.yaml"))]


def test_there_are_enough_cases() -> None:
    assert len(GOOD) >= 2
    assert len(BAD_CASES) >= 12
    for yaml_file in (GOLDEN / "bad").glob("*.yaml"):
        stem = yaml_file.name.split(".")[0]
        assert (GOLDEN / "bad" / f"{stem}.errors").exists(), f"{yaml_file.name} has no .errors file"


@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.name)
def test_good_pack_lints_clean_and_loads(path: Path) -> None:
    assert [str(e) for e in lint([path])] == []
    (pack,) = load_packs([path])
    assert pack.rules
    for rule in pack.rules:
        assert rule.origin is not None and rule.origin.file == str(path)


def test_good_packs_load_together() -> None:
    packs = load_packs(GOOD)
    assert sorted(p.pack for p in packs) == ["minimal", "tfserving"]


@pytest.mark.parametrize("errors_file", BAD_CASES, ids=lambda p: p.stem)
def test_bad_pack_reports_exact_errors(errors_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(errors_file.parent)
    files = _files_for(errors_file)
    assert files, f"no yaml for {errors_file.name}"
    expected = errors_file.read_text().splitlines()
    assert [str(e) for e in lint(files)] == expected
    with pytest.raises(RulePackError) as caught:
        load_packs(files)
    assert [str(e) for e in caught.value.errors] == expected
