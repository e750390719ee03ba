"""Loads the real sample lines kept beside these tests (``samples/<kind>.log``)."""

from __future__ import annotations

from pathlib import Path

SAMPLES = Path(__file__).parent / "samples"


def sample_lines(kind: str) -> list[str]:
    """Non-comment, non-empty lines of ``samples/<kind>.log``."""
    text = (SAMPLES / f"{kind}.log").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line and not line.startswith("#")]
