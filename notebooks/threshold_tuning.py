# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Tuning detector thresholds on recorded testbed runs
#
# The shipped recordings (`recordings/*.jsonl.gz`, made by `scripts/record_testbed.py`) hold what a
# live watcher saw while a replica leaked memory to a real OOM kill, plus a few minutes of healthy
# replicas logging routine noise. Each starts with a `meta` line: when the failures happened and
# which stretches were healthy. This notebook
#
# 1. replays the recordings through the engine (`watcher.replay.replay`) over a grid of detector
#    parameters: the **memory runway forecast** (`within` horizon and envelope `bucket`) and the
#    TF Serving **allocator-warning rule** (`count` of warnings within a minute);
# 2. scores every candidate with `testbed.eval.leadtime` (failures caught, median lead time,
#    false findings per hour on healthy stretches) and plots lead time against false alarms;
# 3. plots the memory series with the chosen candidate's findings and the OOM kill marked;
# 4. writes the chosen thresholds into a **copy** of the rule packs and shows the YAML diff
#    (`rules/` is never modified in place).
#
# Set `THRESHOLD_TUNING_OUT` to choose where the tuned packs go (default: a temporary directory), and
# `THRESHOLD_TUNING_RECORDINGS` to tune on your own fleet: recordings made by
# `watcher record --since 2h --out fleet.jsonl.gz` (or directories of them), separated by `:`.
# Their `meta` line lists Docker's failures (OOM kills, crashes, unhealthy); a user recording
# has no known-healthy stretches, so its false findings are not counted.

# %%
import difflib
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
from IPython.display import Markdown, display

from watcher.replay import replay
from watcher.rulepack.compile import load_packs
from watcher.rules import SHIPPED_RULES

REPO = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "pyproject.toml").exists())
sys.path.insert(0, str(REPO))  # the evaluations live in the checkout's testbed/, not in the installed package
from testbed.eval.leadtime import ALL, iter_series, read_recording, score_findings  # noqa: E402

RULES = SHIPPED_RULES
RECORDINGS = REPO / "recordings"
OUT = Path(os.environ.get("THRESHOLD_TUNING_OUT") or tempfile.mkdtemp(prefix="threshold-tuning-"))
OUT.mkdir(parents=True, exist_ok=True)
started = time.monotonic()

# %% [markdown]
# ## The recordings
# Two leaks to an OOM kill (4 and 8 MB/s under a 160 MiB limit) are the failures to predict; the
# healthy-noise recording and the healthy minutes before each fault are where findings are false.

# %%
SHIPPED = [RECORDINGS / f"{n}.jsonl.gz" for n in ("leak-4mb", "leak-8mb", "healthy-noise")]


def recording_paths(spec: str) -> list[Path]:
    """Recording files named by `THRESHOLD_TUNING_RECORDINGS` (files, or directories of them)."""
    paths: list[Path] = []
    for part in filter(None, spec.split(os.pathsep)):
        p = Path(part).expanduser()
        paths += sorted([*p.glob("*.jsonl"), *p.glob("*.jsonl.gz")]) if p.is_dir() else [p]
    return paths


RECORDING_PATHS = recording_paths(os.environ.get("THRESHOLD_TUNING_RECORDINGS", "")) or SHIPPED
recordings = [read_recording(p) for p in RECORDING_PATHS]
for rec in recordings:
    fails = ", ".join(f"{f.kind} of {f.target} at +{f.ts - rec.start:.0f}s" for f in rec.failures) or "none"
    print(
        f"{rec.name:14} {len(rec.signals):6} signals, {rec.end - rec.start:5.0f} s, "
        f"{rec.healthy_s:5.0f} s healthy; failures: {fails}"
    )

# %% [markdown]
# ## The grid
# Each candidate is a one-rule pack built from the shipped rule's YAML with its thresholds changed,
# so what is evaluated is exactly what would be written back.

# %%
FORESIGHT = (RULES / "foresight.yaml").read_text()
TFSERVING = (RULES / "tfserving.yaml").read_text()
FORECAST_LINE = re.compile(
    r"^(?P<indent> +)detector: \{kind: forecast, series: (?P<series>[\w]+), params: \{limit: (?P<limit>[\w]+), "
    r"fraction: (?P<fraction>[0-9.]+), within: (?P<within>\w+), bucket: (?P<bucket>\w+)"
    r"(?P<rest>(?:, \w+: [\w.]+)*)\}\}$",
    re.M,
)
shipped = FORECAST_LINE.search(FORESIGHT)
assert shipped is not None, "memory-runway's forecast line moved; update the pattern"


def runway_line(within: str, bucket: str, fraction: float) -> str:
    """The memory-runway condition with these thresholds (the detector form accepts `bucket`)."""
    g = shipped.groupdict()
    return (
        f"{g['indent']}detector: {{kind: forecast, series: {g['series']}, params: {{limit: {g['limit']}, "
        f"fraction: {fraction}, within: {within}, bucket: {bucket}{g['rest']}}}}}"
    )


RUNWAY_DESCRIPTION = re.compile(r"(- id: memory-runway\n\s+description: ).*")


def with_runway(text: str, within: str, bucket: str, fraction: float) -> str:
    text = RUNWAY_DESCRIPTION.sub(
        lambda m: f"{m[1]}Working set will reach {fraction * 100:g} % of the container's memory limit within {within}.",
        text,
        count=1,
    )
    return FORECAST_LINE.sub(lambda _: runway_line(within, bucket, fraction), text, count=1)


ALLOC_RULE = "tfs-allocation-exceeds-free-memory"
ALLOC_WHEN = re.compile(r"(- id: " + ALLOC_RULE + r"\n(?:.*\n)*?\s+when: \{count: )(\d+)(, within: )(\w+)(\})")


def with_alloc_count(text: str, count: int, within: str = "1m") -> str:
    return ALLOC_WHEN.sub(lambda m: f"{m[1]}{count}{m[3]}{within}{m[5]}", text, count=1)


def only_rule(pack_text: str, rule_id: str, path: Path) -> Path:
    """A copy of the pack keeping only ``rule_id`` (its YAML text unchanged otherwise)."""
    head, _, body = pack_text.partition("\nrules:\n")
    blocks = re.split(r"(?m)^(?=  - id: )", body)
    keep = [b for b in blocks if b.startswith(f"  - id: {rule_id}\n")]
    assert keep, rule_id
    path.write_text(head + "\nrules:\n" + keep[0])
    return path


def evaluate(pack_text: str, rule_id: str, tag: str) -> dict[str, float | int | None]:
    """Caught, median/worst lead and false findings per hour of one candidate over all recordings."""
    packs = load_packs([only_rule(pack_text, rule_id, OUT / f"candidate-{tag}.yaml")])
    caught = failures = false = 0
    healthy_s = 0.0
    leads: list[float] = []
    for rec in recordings:
        findings = replay(packs, rec.signals, step_s=1.0).findings
        score = score_findings(findings, rec.failures, rec.healthy, group="all").get(ALL)
        failures += len(rec.failures)
        healthy_s += rec.healthy_s
        if score is not None:
            caught += score.caught
            leads.extend(score.leads)
            false += score.false_findings
    return {
        "caught": caught,
        "failures": failures,
        "median_lead_s": statistics.median(leads) if leads else None,
        "worst_lead_s": min(leads) if leads else None,
        "false_per_hour": false * 3600.0 / healthy_s if healthy_s else 0.0,  # no healthy stretch known: uncounted
    }


# %%
runway_grid = []
for within in ("30s", "60s", "120s", "300s"):
    for bucket in ("2s", "5s", "10s", "30s"):
        for fraction in (0.9, 0.95):
            result = evaluate(
                with_runway(FORESIGHT, within, bucket, fraction),
                "memory-runway",
                f"runway-{within}-{bucket}-{fraction}",
            )
            runway_grid.append({"within": within, "bucket": bucket, "fraction": fraction, **result})
alloc_grid = []
for count in (1, 2, 3, 5, 8):
    result = evaluate(with_alloc_count(TFSERVING, count), ALLOC_RULE, f"alloc-{count}")
    alloc_grid.append({"count": count, **result})


def show(rows: list[dict[str, object]]) -> None:
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [("-" if r[c] is None else f"{r[c]:.1f}" if isinstance(r[c], float) else str(r[c])) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    display(Markdown("\n".join(lines)))


show(runway_grid)
show(alloc_grid)

# %% [markdown]
# ## Lead time against false alarms
# Each point is one candidate; up and to the left is better. Candidates that miss a failure are
# drawn hollow. The shipped settings are circled.

# %%
fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
for ax, rows, label, shipped_of in (
    (
        axes[0],
        runway_grid,
        lambda r: f"{r['within']}/{r['bucket']}/{r['fraction']}",
        lambda r: (
            r["within"] == shipped["within"]
            and r["bucket"] == shipped["bucket"]
            and r["fraction"] == float(shipped["fraction"])
        ),
    ),
    (axes[1], alloc_grid, lambda r: f"count {r['count']}", lambda r: r["count"] == 3),
):
    for r in rows:
        lead = r["median_lead_s"] if r["median_lead_s"] is not None else 0.0
        complete = r["caught"] == r["failures"]
        ax.scatter(r["false_per_hour"], lead, s=40, facecolors="C0" if complete else "none", edgecolors="C0")
        if shipped_of(r):
            ax.scatter(r["false_per_hour"], lead, s=220, facecolors="none", edgecolors="C3", linewidths=1.5)
        if r["median_lead_s"] is not None:
            ax.annotate(label(r), (r["false_per_hour"], lead), fontsize=7, xytext=(4, 2), textcoords="offset points")
    ax.set_xlabel("false findings per hour (healthy stretches)")
    ax.set_ylabel("median lead time before the OOM kill (s)")
ax0, ax1 = axes
ax0.set_title("memory-runway: within / bucket / fraction")
ax1.set_title(f"{ALLOC_RULE}: count within 1m")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Choosing
# Among the candidates that catch every failure, take the fewest false findings per hour, then the
# longest *worst-case* lead (a drain needs its seconds on the fastest leak too), then the longest
# median lead.
#
# One guard the recordings cannot supply: none of them contains a large model load, during which a
# single allocator warning is routine (see the rule's description). So the allocator rule keeps
# `count >= 2` whatever the grid says.

# %%
MIN_ALLOC_COUNT = 2


def choose(rows: list[dict[str, object]]) -> dict[str, object]:
    complete = [r for r in rows if r["caught"] == r["failures"]] or rows
    return min(complete, key=lambda r: (r["false_per_hour"], -(r["worst_lead_s"] or 0.0), -(r["median_lead_s"] or 0.0)))


best_runway = choose(runway_grid)
best_alloc = choose([r for r in alloc_grid if int(r["count"]) >= MIN_ALLOC_COUNT])
print("memory-runway:", best_runway)
print(f"{ALLOC_RULE}:", best_alloc)

# %% [markdown]
# ## The memory series with the chosen runway rule's findings
# Working set of every replica against its limit; findings are the dashed lines, the OOM kill the
# solid red line.

# %%
tuned_foresight = with_runway(
    FORESIGHT, str(best_runway["within"]), str(best_runway["bucket"]), float(best_runway["fraction"])
)
chosen_packs = load_packs([only_rule(tuned_foresight, "memory-runway", OUT / "chosen-runway.yaml")])
leaks = [r for r in recordings if r.failures] or recordings[:1]  # a fleet without failures: its series
fig, axes = plt.subplots(1, len(leaks), figsize=(13, 4), squeeze=False)
for ax, rec in zip(axes[0], leaks, strict=True):
    t0 = rec.start
    by_target: dict[str, list[tuple[float, float]]] = {}
    for target, ts, value in iter_series(rec, "memory_working_set_bytes"):
        by_target.setdefault(target, []).append((ts - t0, value / 2**20))
    for target, points in sorted(by_target.items()):
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, ".-", ms=2, lw=1, label=f"replica {target.rsplit('-', 1)[-1]}")
    limits = [v for _, _, v in iter_series(rec, "memory_limit_bytes")]
    if limits:
        ax.axhline(max(limits) / 2**20, color="k", lw=0.8, ls=":", label="limit")
    for f in replay(chosen_packs, rec.signals).findings:
        if not f.resolved:
            ax.axvline(f.ts - t0, color="C2", ls="--", lw=1.2, label=f"finding ({f.rule_id})")
    for failure in rec.failures:
        ax.axvline(failure.ts - t0, color="C3", lw=1.5, label=f"{failure.kind} kill")
    for fault in rec.meta.get("faults", []):
        ax.axvline(float(fault["ts"]) - t0, color="0.5", lw=0.8, label="fault injected")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(unique.values(), unique.keys(), fontsize=7, loc="upper left")
    ax.set_title(rec.name)
    ax.set_xlabel("seconds since the recording started")
    ax.set_ylabel("working set (MiB)")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Writing the chosen thresholds back
# The tuned packs are written to `OUT` (never over `rules/`), validated by the same loader the
# watcher uses, and the diff against the shipped packs is shown.

# %%
tuned_tfserving = with_alloc_count(TFSERVING, int(best_alloc["count"]))
for name, before, after in (
    ("foresight.yaml", FORESIGHT, tuned_foresight),
    ("tfserving.yaml", TFSERVING, tuned_tfserving),
):
    (OUT / name).write_text(after)
    diff = "".join(
        difflib.unified_diff(
            before.splitlines(keepends=True),
            after.splitlines(keepends=True),
            fromfile=f"rules/{name}",
            tofile=str(OUT / name),
        )
    )
    print(diff or f"{name}: unchanged (the shipped thresholds were chosen)")
tuned = load_packs([OUT / "foresight.yaml", OUT / "tfserving.yaml"])
print(f"tuned packs valid: {', '.join(p.pack for p in tuned)}; written to {OUT}")
print(f"notebook ran in {time.monotonic() - started:.1f} s")
