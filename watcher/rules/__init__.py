"""The shipped rule packs, as package data: a ``pip install`` carries them, so ``watcher run`` and
``watcher replay`` have their default packs without a checkout beside them. Their promtool-style
rule tests (``tests/``) and the editor schema (``schema/rulepack.json``) ship with them."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

SHIPPED_RULES: Path = Path(str(files(__name__)))
SHIPPED_RULE_TESTS: Path = SHIPPED_RULES / "tests"


def shipped_packs() -> list[Path]:
    """The shipped pack files, in a stable order."""
    return sorted(SHIPPED_RULES.glob("*.yaml"))
