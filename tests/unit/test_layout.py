"""The suite collects as one run: `make test` runs unit and integration tests from one rootdir."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_no_two_test_modules_share_a_basename() -> None:
    """pytest's default import mode refuses a second ``test_x.py`` in another folder ("import file
    mismatch"), which stopped the integration run once: tests/unit and tests/integration both had one."""
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert [n for n, c in names.items() if c > 1] == []
