"""The NAB scorer on constructed detectors whose official scores are known, and a subset run.

The corpus-level reference values come from ``SCORING.md`` §9 (computed there with NAB's official
scorer); the small synthetic corpus checks each rule of §5 and §7 in isolation.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from testbed.eval import nab
from testbed.eval.nab import DEFAULT_PROFILES, CostProfile, probation_rows, row_weights, score_corpus

NAB_DIR = Path(__file__).resolve().parents[4] / "shared" / "nab"
needs_nab = pytest.mark.skipif(not (NAB_DIR / "labels").exists(), reason="NAB data not in ../shared/nab")
STANDARD = DEFAULT_PROFILES["standard"]


def test_probation_is_fifteen_percent_capped_at_750() -> None:
    assert probation_rows(1000) == 150
    assert probation_rows(4032) == 604
    assert probation_rows(15000) == 750


def test_row_weights_follow_the_scaled_sigmoid() -> None:
    weights, window = row_weights(100, [(40, 49)], STANDARD)
    assert weights[40] == pytest.approx(1.0)  # first row of a window earns A_TP
    assert weights[49] == pytest.approx(0.248, abs=1e-3)  # last row of a 10-row window
    assert weights[45] == pytest.approx(0.860, abs=1e-3)  # halfway (y = -0.5)
    assert weights[39] == pytest.approx(-0.11)  # before the first window: full FP cost
    assert -0.11 < weights[50] < 0  # just after: mostly forgiven
    assert weights[49 + 9 * 3 + 1] == pytest.approx(-0.11)  # beyond three widths: full cost
    assert list(np.flatnonzero(window >= 0)) == list(range(40, 50))


def _synthetic() -> tuple[list[int], list[list[tuple[int, int]]]]:
    # Two files: one with two windows, one without any (an anomaly-free file).
    return [1000, 800], [[(300, 339), (700, 739)], []]


def test_perfect_and_null_detectors_score_100_and_0() -> None:
    lengths, windows = _synthetic()
    perfect = [np.zeros(n) for n in lengths]
    for s, wins in zip(perfect, windows, strict=True):
        for a, _ in wins:
            s[a] = 1.0
    null = [np.full(n, 0.5) for n in lengths]
    for name in DEFAULT_PROFILES:
        assert score_corpus(lengths, windows, perfect)[name].score == pytest.approx(100.0)
        assert score_corpus(lengths, windows, null)[name].score == pytest.approx(0.0)
        assert score_corpus(lengths, windows, null)[name].threshold == 1.1


def test_only_the_first_detection_in_a_window_counts_and_fps_add_up() -> None:
    lengths, windows = _synthetic()
    scores = [np.zeros(n) for n in lengths]
    scores[0][300:340] = 1.0  # a plateau over the whole first window: credited once, at its start
    scores[0][700] = 1.0
    scores[1][500] = 1.0  # one FP in the anomaly-free file
    result = score_corpus(lengths, windows, scores)["standard"]
    assert result.raw == pytest.approx(2.0 - 0.11)
    assert result.threshold == 1.0
    assert (result.tp, result.fp) == (41, 1)


def test_late_detection_earns_less_and_optimiser_can_choose_silence() -> None:
    lengths, windows = _synthetic()
    scores = [np.zeros(n) for n in lengths]
    scores[0][339] = 0.9  # last row of a 40-row window: S(-1/40)/S(-1) ≈ 0.063
    scores[1][100:200] = 0.9  # a 100-row plateau of false alarms at the same level
    result = score_corpus(lengths, windows, scores)["standard"]
    assert result.threshold == 1.1 and result.score == 0.0  # alarming at 0.9 costs more than it earns


def test_threshold_ties_keep_the_higher_threshold() -> None:
    lengths, windows = _synthetic()
    scores = [np.zeros(n) for n in lengths]
    scores[0][300] = 0.8
    scores[0][700] = 0.8
    scores[1][300] = 0.6  # a lower level adds nothing: FP cost 0, it is in probation? no: row 300 > 120
    profile = {"standard": CostProfile(tp=1.0, fp=0.0, fn=1.0)}
    result = score_corpus(lengths, windows, scores, profile)["standard"]
    assert result.threshold == 0.8


def test_results_must_have_one_row_per_data_row() -> None:
    with pytest.raises(ValueError, match="rows"):
        score_corpus([100], [[]], [np.zeros(99)])


@needs_nab
def test_reference_values_of_the_official_scorer() -> None:
    """SCORING.md §9: synthetic detectors on the real corpus, as NAB's own scorer scores them."""
    corpus = nab.load_corpus(NAB_DIR)
    lengths = [len(f.values) for f in corpus]
    windows = [f.windows for f in corpus]
    assert sum(map(len, windows)) == 116
    assert sum(lengths) - sum(f.probation for f in corpus) == 332842

    def build(rows: str) -> list[np.ndarray]:
        out = []
        for f in corpus:
            s = np.zeros(len(f.values))
            for a, b in f.windows:
                s[a if rows != "last" else b] = 1.0
            if rows == "first+P":
                s[f.probation] = 1.0
            out.append(s)
        return out

    expected = {
        "first": (100.0, 100.0, 100.0),
        "first+P": (97.25, 94.50, 98.17),
        "last": (50.90, 50.90, 67.27),
    }
    for rows, want in expected.items():
        got = score_corpus(lengths, windows, build(rows), nab.load_profiles(NAB_DIR))
        assert [round(got[p].score, 2) for p in nab.PROFILES] == list(want)
    assert score_corpus(lengths, windows, build("last"))["standard"].raw == pytest.approx(2.0960, abs=1e-4)


@needs_nab
def test_subset_run_writes_nab_layout(tmp_path: Path) -> None:
    report = nab.run_nab(NAB_DIR, tmp_path, files=list(nab.SUBSET), processes=1)
    assert not report.full_corpus and set(report.scores) == set(nab.PROFILES)
    windows = json.loads((NAB_DIR / "labels" / "combined_windows.json").read_text())
    for name in nab.SUBSET:
        category, filename = name.split("/")
        out = tmp_path / "watcher" / category / f"watcher_{filename}"
        with out.open() as fh:
            rows = list(csv.reader(fh))
        with (NAB_DIR / "data" / name).open() as fh:
            data = list(csv.reader(fh))
        assert rows[0] == ["timestamp", "value", "anomaly_score", "label"]
        assert len(rows) == len(data)
        assert [r[0] for r in rows[1:]] == [d[0] for d in data[1:]]
        scores = [float(r[2]) for r in rows[1:]]
        assert all(0.0 <= s <= 1.0 for s in scores)
        labelled = sum(int(r[3]) for r in rows[1:])
        assert (labelled > 0) == bool(windows[name])
    for p in nab.PROFILES:
        assert 0.0 <= report.scores[p].score <= 100.0
    assert "watcher (this run)" in report.format()


@needs_nab
def test_cli_subset_prints_the_three_profiles_beside_the_scoreboard(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from testbed.cli import app

    result = CliRunner().invoke(app, ["eval", "nab", "--data", str(NAB_DIR), "--out", str(tmp_path), "--subset"])
    assert result.exit_code == 0, result.output
    assert "reward_low_FP_rate" in result.stdout and "numentaTM" in result.stdout
    assert list(tmp_path.glob("watcher/*/watcher_*.csv"))
    bad = CliRunner().invoke(app, ["eval", "nab", "--data", str(tmp_path), "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "not a NAB data folder" in bad.output
