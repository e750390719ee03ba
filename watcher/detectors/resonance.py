"""Fuzzy-ART memory of the shapes of a downsampled series: the resonance channel of the anomaly scorer.

Adaptive resonance theory (Carpenter, Grossberg & Rosen 1991, fuzzy ART) as used for anomaly
detection by ARTime on NAB, re-implemented from the published idea only. The series is cut into blocks
of ``downsample`` points, each block reduced to its mean; the last ``window`` such values, scaled to
[0, 1] and complement-coded, are the input. A *category* is a box in that space (its weight is the
lower corner and the complement of the upper one). An input resonates with a category by the share of
its mass inside the box, ``|I ∧ w| / |I|``; the best category that passes the vigilance learns (its
box grows to take the input in), and when none passes a new category is created. The memory never
forgets, so a shape seen once, however long ago, stays known, and a box grows only where inputs fell:
unlike the neighbour model (which keeps the last thousand subsequences) it answers "was anything like
this ever seen", on a scale of hours instead of points.

What it returns is the *mismatch* of each new window, 1 minus its best resonance with the categories
as they were before this input: the smallest size (sum of side lengths over the window length) of a
learnt box stretched to take the window in. A window inside a learnt box scores that box's size, at most
1 - vigilance; a window far from every box scores more. On a noisy series most windows sit near
1 - vigilance, so the level of the mismatch says little and the scorer uses its record ratio (with its
own rest).
"""

from __future__ import annotations

from typing import Any

import numpy as np


class Resonance:
    """Fuzzy ART over windows of block-reduced values in [0, 1]; :meth:`step` one value at a time."""

    def __init__(
        self, window: int, downsample: int, vigilance: float, beta: float, max_categories: int, alpha: float = 1e-3
    ) -> None:
        self.window = window
        self.downsample = max(1, downsample)
        self.vigilance = vigilance
        self.beta = beta
        self.max_categories = max_categories
        self.alpha = alpha
        self.block: list[float] = []
        self.values: list[float] = []  # last `window` block means
        self.w = np.zeros((0, 2 * window), dtype=np.float64)
        self.norm = np.zeros(0, dtype=np.float64)

    def step(self, x: float) -> float | None:
        """Feed one scaled value; the mismatch of the window when a block closes and the window is
        full, else ``None``."""
        self.block.append(min(max(x, 0.0), 1.0))
        if len(self.block) < self.downsample:
            return None
        # The block mean: an extreme-preserving reduction (the value farthest from the previous block's,
        # as ARTime does) scored lower on NAB; single-point spikes are the level channel's job anyway.
        self.values.append(sum(self.block) / len(self.block))
        self.block = []
        if len(self.values) > self.window:
            del self.values[0]
        if len(self.values) < self.window:
            return None
        a = np.asarray(self.values)
        inp = np.concatenate([a, 1.0 - a])
        size = float(self.window)  # |I| of a complement-coded input
        if len(self.norm) == 0:
            self.w = inp[None, :].copy()
            self.norm = np.array([size])
            return 1.0
        inter = np.minimum(self.w, inp).sum(axis=1)
        match = inter / size
        best = float(match.max())
        ok = match >= self.vigilance
        if ok.any():
            choice = np.where(ok, inter / (self.alpha + self.norm), -np.inf)
            j = int(np.argmax(choice))
            self.w[j] = self.beta * np.minimum(self.w[j], inp) + (1.0 - self.beta) * self.w[j]
            self.norm[j] = float(self.w[j].sum())
        elif len(self.norm) < self.max_categories:  # a bound on memory for endless noisy live series
            self.w = np.vstack([self.w, inp])
            self.norm = np.append(self.norm, size)
        return 1.0 - best

    def state(self) -> dict[str, Any]:
        return {
            "block": list(self.block),
            "values": list(self.values),
            "w": self.w.tolist(),
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.block = [float(v) for v in state["block"]]
        self.values = [float(v) for v in state["values"]]
        self.w = np.asarray(state["w"], dtype=np.float64).reshape(-1, 2 * self.window)
        self.norm = self.w.sum(axis=1)
