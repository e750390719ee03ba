"""``python -m testbed eval nab``: the production anomaly detector on the Numenta Anomaly Benchmark, scored here.

Why score it ourselves: the benchmark's value lies in comparing with the published scoreboard, and
NAB's own scorer is not in the data folder (and needs no network if re-implemented). This module
follows the data folder's ``SCORING.md`` (a paraphrase of NAB v1.1's code) step by step:

* each file runs through a *fresh* :class:`~watcher.detectors.anomaly.AnomalyScorer`, one record at a
  time, with the file's min/max as the only look-ahead (files are independent, so they run in a
  process pool);
* results are written in NAB's own layout (``<out>/<detector>/<category>/<detector>_<file>.csv``,
  columns ``timestamp,value,anomaly_score,label``) so the official scorer can be run on them too;
* rows get NAB's scaled-sigmoid weights, the first ``min(floor(0.15 n), 750)`` rows are ignored,
  one threshold per profile is chosen by NAB's exhaustive sweep over the pooled corpus, and the raw
  totals are normalised between the null detector (0) and the perfect detector (100).

The scorer works on arrays (:func:`score_corpus`) so it can be checked on constructed detectors
(perfect, null, last-row-of-window...) whose official scores ``SCORING.md`` lists.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from watcher.detectors.anomaly import AnomalyParams, AnomalyScorer
from watcher.timefmt import parse_iso

FloatArray = npt.NDArray[np.float64]

PROFILES = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")

SUBSET: tuple[str, ...] = (
    "artificialNoAnomaly/art_daily_small_noise.csv",
    "artificialWithAnomaly/art_daily_jumpsup.csv",
    "realAdExchange/exchange-2_cpc_results.csv",
    "realAWSCloudwatch/ec2_cpu_utilization_5f5533.csv",
    "realKnownCause/ambient_temperature_system_failure.csv",
    "realTraffic/occupancy_6005.csv",
)
"""One file per category but realTweets (whose files are 15k rows): about 20k rows, CI-sized."""

PROBATION_FRACTION = 0.15
PROBATION_CAP_ROWS = 5000  # NAB caps the probationary period at 15 % of 5 000 rows = 750


@dataclass(frozen=True, slots=True)
class CostProfile:
    """An application profile's weights (``config/profiles.json``); ``tnWeight`` is never used."""

    tp: float
    fp: float
    fn: float


DEFAULT_PROFILES: dict[str, CostProfile] = {
    "standard": CostProfile(tp=1.0, fp=0.11, fn=1.0),
    "reward_low_FP_rate": CostProfile(tp=1.0, fp=0.22, fn=1.0),
    "reward_low_FN_rate": CostProfile(tp=1.0, fp=0.11, fn=2.0),
}


@dataclass(frozen=True)
class NabFile:
    """One data file and its ground truth, windows as inclusive row-index pairs."""

    name: str  # "<category>/<file>.csv", the key of the labels file
    timestamps: list[str]
    ts: FloatArray  # seconds since the epoch (naive timestamps read as UTC)
    values: FloatArray
    windows: list[tuple[int, int]]

    @property
    def probation(self) -> int:
        return probation_rows(len(self.values))

    def labels(self) -> npt.NDArray[np.int8]:
        """1 on rows inside a window (both boundary rows included), as NAB's labeler writes them."""
        out = np.zeros(len(self.values), dtype=np.int8)
        for start, end in self.windows:
            out[start : end + 1] = 1
        return out


@dataclass(frozen=True, slots=True)
class ProfileScore:
    """One profile's result: the optimised threshold, raw total, normalised score and row counts."""

    threshold: float
    raw: float
    score: float
    tp: int
    fp: int
    fn: int
    tn: int


@dataclass
class NabReport:
    """A run's scores per profile, next to the published scoreboard."""

    detector: str
    files: list[str]
    rows: int
    windows: int
    scores: dict[str, ProfileScore]
    published: dict[str, dict[str, float]] = field(default_factory=dict)
    detect_seconds: float = 0.0
    full_corpus: bool = False

    def format(self) -> str:
        """A table: this detector's three scores, then the published detectors sorted by standard."""
        lines = [
            f"NAB {'full corpus' if self.full_corpus else 'subset'}: {len(self.files)} files, {self.rows} rows, "
            f"{self.windows} windows; detection took {self.detect_seconds:.1f}s",
        ]
        if not self.full_corpus:
            lines.append("(subset scores are normalised over the subset's windows: not comparable to the table)")
        header = f"{'detector':<22}" + "".join(f"{p:>20}" for p in PROFILES)
        lines += [header, "-" * len(header)]
        lines.append(
            f"{self.detector + ' (this run)':<22}" + "".join(f"{self.scores[p].score:>20.2f}" for p in PROFILES)
        )
        ranked = sorted(self.published.items(), key=lambda kv: -kv[1].get("standard", 0.0))
        for name, s in ranked:
            lines.append(f"{name:<22}" + "".join(f"{s.get(p, float('nan')):>20.2f}" for p in PROFILES))
        lines.append("")
        for p in PROFILES:
            r = self.scores[p]
            lines.append(
                f"{p}: threshold {r.threshold:.6g}, raw {r.raw:.4f}, rows TP {r.tp} FP {r.fp} FN {r.fn} TN {r.tn}"
            )
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------ loading


def probation_rows(n: int) -> int:
    """NAB's probationary period: 15 % of the file, at most 750 rows."""
    return int(min(math.floor(PROBATION_FRACTION * n), PROBATION_FRACTION * PROBATION_CAP_ROWS))


def _epoch(text: str) -> float:
    """NAB timestamps (``YYYY-MM-DD HH:MM:SS[.ffffff]``) as seconds; they carry no zone, UTC is assumed
    so that the result does not depend on the machine's time zone (and its DST gaps)."""
    ts = parse_iso(text)
    if ts is None:
        raise ValueError(f"not a NAB timestamp: {text!r}")
    return ts


def load_profiles(data_dir: Path) -> dict[str, CostProfile]:
    """The cost weights from ``config/profiles.json`` (NAB's defaults when the file is absent)."""
    path = data_dir / "config" / "profiles.json"
    if not path.exists():
        return dict(DEFAULT_PROFILES)
    raw = json.loads(path.read_text())
    return {
        name: CostProfile(
            tp=float(p["CostMatrix"]["tpWeight"]),
            fp=float(p["CostMatrix"]["fpWeight"]),
            fn=float(p["CostMatrix"]["fnWeight"]),
        )
        for name, p in raw.items()
    }


def list_files(data_dir: Path) -> list[str]:
    """Every corpus file, in the labels file's order (which is also sorted by category and name)."""
    windows = json.loads((data_dir / "labels" / "combined_windows.json").read_text())
    return sorted(windows)


def load_file(data_dir: Path, name: str, windows_json: Mapping[str, list[list[str]]]) -> NabFile:
    """Read one CSV and place its windows on row indices by timestamp (both ends inclusive)."""
    stamps: list[str] = []
    values: list[float] = []
    with (data_dir / "data" / name).open(newline="") as fh:
        reader = csv.reader(fh)
        next(reader)
        for row in reader:
            stamps.append(row[0])
            values.append(float(row[1]))
    ts = np.array([_epoch(s) for s in stamps], dtype=np.float64)
    windows: list[tuple[int, int]] = []
    for start, end in windows_json.get(name, []):
        lo = int(np.searchsorted(ts, _epoch(start), side="left"))
        hi = int(np.searchsorted(ts, _epoch(end), side="right")) - 1
        if lo <= hi:
            windows.append((lo, hi))
    return NabFile(name, stamps, ts, np.array(values, dtype=np.float64), windows)


def load_corpus(data_dir: Path, files: Sequence[str] | None = None) -> list[NabFile]:
    windows_json = json.loads((data_dir / "labels" / "combined_windows.json").read_text())
    names = list(files) if files is not None else sorted(windows_json)
    return [load_file(data_dir, name, windows_json) for name in names]


# ---------------------------------------------------------------------------------------- detection


def detect(values: FloatArray, ts: FloatArray, params: AnomalyParams | None = None) -> FloatArray:
    """Run a fresh scorer over one file, one record at a time; only min/max are known in advance.

    NAB also tells each detector its probationary length (SCORING.md §2); the scorer sizes its alarm
    rest period from it, as NAB's CAD-OSE does."""
    p = params or AnomalyParams()
    scorer = AnomalyScorer(p, float(values.min()), float(values.max()), probation=probation_rows(len(values)))
    out = np.empty(len(values), dtype=np.float64)
    for i, (t, v) in enumerate(zip(ts.tolist(), values.tolist(), strict=True)):
        out[i] = scorer.score(t, v)
    return out


def _detect_job(job: tuple[FloatArray, FloatArray]) -> FloatArray:
    return detect(job[0], job[1])


def detect_corpus(corpus: Sequence[NabFile], processes: int = 2) -> list[FloatArray]:
    """Scores for every file; files are independent, so they are spread over ``processes`` workers."""
    jobs = [(f.values, f.ts) for f in corpus]
    if processes <= 1 or len(jobs) <= 1:
        return [_detect_job(j) for j in jobs]
    # Longest files first so the pool does not wait on one big straggler at the end.
    order = sorted(range(len(jobs)), key=lambda i: -len(jobs[i][0]))
    with ProcessPoolExecutor(max_workers=processes) as pool:
        results = list(pool.map(_detect_job, [jobs[i] for i in order], chunksize=1))
    out: list[FloatArray] = [np.empty(0)] * len(jobs)
    for i, r in zip(order, results, strict=True):
        out[i] = r
    return out


def write_results(out_dir: Path, detector: str, nab_file: NabFile, scores: FloatArray) -> Path:
    """``<out>/<detector>/<category>/<detector>_<file>.csv``: one row per data row, NAB's columns."""
    category, filename = nab_file.name.split("/", 1)
    path = out_dir / detector / category / f"{detector}_{filename}"
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = nab_file.labels()
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["timestamp", "value", "anomaly_score", "label"])
        for stamp, value, score, label in zip(
            nab_file.timestamps, nab_file.values.tolist(), scores.tolist(), labels.tolist(), strict=True
        ):
            writer.writerow([stamp, repr(value), repr(score), label])
    return path


# ------------------------------------------------------------------------------------------ scoring


def scaled_sigmoid(y: FloatArray) -> FloatArray:
    """NAB's S(y) = 2·sig(-5y) - 1, and exactly -1 beyond three window widths."""
    s = 2.0 / (1.0 + np.exp(5.0 * y)) - 1.0
    return np.where(y > 3.0, -1.0, s)


def row_weights(
    n: int, windows: Sequence[tuple[int, int]], profile: CostProfile
) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    """Per row: what a detection there would add to the file's score, and its window (-1 if none).

    Inside a window the credit is A_TP·S(y)/S(-1) with y = -(R - i + 1)/W (earliest is best); before
    the first window a detection costs -A_FP; after a window the cost is A_FP·S((i - R)/(W - 1)),
    i.e. a detection just after a window is partly forgiven.
    """
    weights = np.full(n, -profile.fp, dtype=np.float64)
    window_of = np.full(n, -1, dtype=np.int64)
    s_minus_one = float(scaled_sigmoid(np.array([-1.0]))[0])
    idx = np.arange(n, dtype=np.float64)
    for k, (left, right) in enumerate(sorted(windows)):
        width = right - left + 1
        inside = slice(left, right + 1)
        y = -(right - idx[inside] + 1.0) / width
        weights[inside] = profile.tp * scaled_sigmoid(y) / s_minus_one
        window_of[inside] = k
        nxt = sorted(windows)[k + 1][0] if k + 1 < len(windows) else n
        after = slice(right + 1, nxt)
        denominator = float(width - 1) if width > 1 else 1.0
        weights[after] = profile.fp * scaled_sigmoid((idx[after] - right) / denominator)
    return weights, window_of


@dataclass(frozen=True)
class _Pooled:
    """All scored rows of a corpus, with per-row weights for one profile and corpus-wide window ids."""

    scores: FloatArray
    weights: FloatArray
    window: npt.NDArray[np.int64]
    n_windows: int


def _pool(
    lengths: Sequence[int],
    windows: Sequence[Sequence[tuple[int, int]]],
    scores: Sequence[FloatArray],
    profile: CostProfile,
) -> _Pooled:
    all_scores: list[FloatArray] = []
    all_weights: list[FloatArray] = []
    all_windows: list[npt.NDArray[np.int64]] = []
    offset = 0
    for n, wins, sc in zip(lengths, windows, scores, strict=True):
        if len(sc) != n:
            raise ValueError(f"results have {len(sc)} rows for a file of {n} rows")
        w, win = row_weights(n, wins, profile)
        p = probation_rows(n)
        all_scores.append(np.asarray(sc, dtype=np.float64)[p:])
        all_weights.append(w[p:])
        all_windows.append(np.where(win[p:] >= 0, win[p:] + offset, -1))
        offset += len(wins)
    return _Pooled(np.concatenate(all_scores), np.concatenate(all_weights), np.concatenate(all_windows), offset)


def optimize_threshold(pooled: _Pooled, profile: CostProfile) -> tuple[float, float]:
    """NAB's exhaustive sweep: lower θ through every distinct score (from 1.1) and keep the best total.

    Returns (θ, raw total). Ties keep the higher threshold, as NAB's optimizer does.
    """
    order = np.argsort(-pooled.scores, kind="stable")
    sc = pooled.scores[order]
    wt = pooled.weights[order]
    win = pooled.window[order]
    delta = np.where(win < 0, wt, 0.0)
    # A window's contribution goes from -A_FN to the best weight detected in it so far.
    in_window = np.flatnonzero(win >= 0)
    if len(in_window):
        wids = win[in_window]
        by_window = np.argsort(wids, kind="stable")  # keeps descending-score order inside a window
        pos = in_window[by_window]
        ids = wids[by_window]
        w = wt[pos]
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        for a, b in zip(starts, np.r_[starts[1:], len(ids)], strict=True):
            running = np.maximum.accumulate(w[a:b])
            prev = np.r_[-profile.fn, running[:-1]]
            delta[pos[a:b]] = running - prev
    totals = -profile.fn * pooled.n_windows + np.cumsum(delta)
    # Only the last row of a run of equal scores is a reachable threshold level.
    ends = np.flatnonzero(np.r_[sc[1:] != sc[:-1], True]) if len(sc) else np.array([], dtype=np.int64)
    best_theta, best_raw = 1.1, -profile.fn * pooled.n_windows
    if len(ends):
        k = int(np.argmax(totals[ends]))  # first maximum = highest threshold among equals
        if totals[ends[k]] > best_raw:
            best_theta, best_raw = float(sc[ends[k]]), float(totals[ends[k]])
    return best_theta, best_raw


def score_at(pooled: _Pooled, profile: CostProfile, threshold: float) -> ProfileScore:
    """The corpus's raw score and row counts at a fixed threshold (score ≥ θ is a detection)."""
    detected = pooled.scores >= threshold
    inside = pooled.window >= 0
    raw = float(pooled.weights[detected & ~inside].sum())
    for k in range(pooled.n_windows):
        hits = detected & (pooled.window == k)
        raw += float(pooled.weights[hits].max()) if hits.any() else -profile.fn
    tp = int((detected & inside).sum())
    fp = int((detected & ~inside).sum())
    fn = int((~detected & inside).sum())
    tn = int((~detected & ~inside).sum())
    return ProfileScore(threshold, raw, float("nan"), tp, fp, fn, tn)


def score_corpus(
    lengths: Sequence[int],
    windows: Sequence[Sequence[tuple[int, int]]],
    scores: Sequence[FloatArray],
    profiles: Mapping[str, CostProfile] | None = None,
) -> dict[str, ProfileScore]:
    """Optimise θ per profile over the pooled corpus, then normalise: null detector 0, perfect 100.

    The null detector misses every window (raw = -A_FN·windows); the perfect one catches each at its
    first row (raw = A_TP·windows). Normalisation counts the windows of the files given.
    """
    out: dict[str, ProfileScore] = {}
    for name, profile in (profiles or DEFAULT_PROFILES).items():
        pooled = _pool(lengths, windows, scores, profile)
        theta, raw = optimize_threshold(pooled, profile)
        at = score_at(pooled, profile, theta)
        null = -profile.fn * pooled.n_windows
        perfect = profile.tp * pooled.n_windows
        norm = 100.0 * (raw - null) / (perfect - null) if perfect != null else 0.0
        out[name] = ProfileScore(theta, raw, norm, at.tp, at.fp, at.fn, at.tn)
    return out


def published_scores(data_dir: Path) -> dict[str, dict[str, float]]:
    path = data_dir / "results" / "final_results.json"
    if not path.exists():
        return {}
    raw = json.loads(path.read_text())
    return {name: {p: float(v) for p, v in s.items()} for name, s in raw.items()}


# -------------------------------------------------------------------------------------------- runs


def run_nab(
    data_dir: Path,
    out_dir: Path,
    detector_name: str = "watcher",
    files: Sequence[str] | None = None,
    processes: int = 2,
) -> NabReport:
    """Detect, write NAB's results layout, score the three profiles and attach the scoreboard."""
    if "_" in detector_name:
        raise ValueError("NAB splits result file names on '_': the detector name must not contain one")
    all_files = list_files(data_dir)
    corpus = load_corpus(data_dir, files)
    started = time.perf_counter()
    scores = detect_corpus(corpus, processes=processes)
    elapsed = time.perf_counter() - started
    for f, s in zip(corpus, scores, strict=True):
        write_results(out_dir, detector_name, f, s)
    result = score_corpus([len(f.values) for f in corpus], [f.windows for f in corpus], scores, load_profiles(data_dir))
    return NabReport(
        detector=detector_name,
        files=[f.name for f in corpus],
        rows=sum(len(f.values) for f in corpus),
        windows=sum(len(f.windows) for f in corpus),
        scores=result,
        published=published_scores(data_dir),
        detect_seconds=elapsed,
        full_corpus=sorted(f.name for f in corpus) == all_files,
    )


def main(data: Path, out: Path, files: list[str] | None = None, subset: bool = False) -> int:
    """CLI entry (``python -m testbed eval nab``): run, print the table, return the exit status."""
    chosen: Sequence[str] | None = list(SUBSET) if subset else files
    report = run_nab(data, out, files=chosen)
    print(report.format())
    return 0
