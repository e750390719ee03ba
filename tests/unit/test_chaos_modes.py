"""The chaos benchmark's modes and scenarios without Docker (issue 17, "New chaos scenarios"): the
rate sweep's per-rate length and its half-time goal, ``--set`` overrides, ``--list``, the faults the
two-faults scenario injects, the fast sawtooth's timing, and how a run with two faulty replicas is
measured. The runs themselves need Docker (``python -m benchmarks.chaos ...``)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import yaml

from benchmarks import chaos, chaos_scenarios
from benchmarks.chaos_scenarios import SCENARIOS, Context, PhasedExpected, parse_set
from testbed.oip_replicas import ServedModel

T0 = 1_714_557_600.0


# --------------------------------------------------------------------------------- the rate sweep
@pytest.mark.parametrize("rate", chaos.SWEEP_RATES)
def test_every_sweep_run_lasts_past_the_oom_by_the_margin(rate: float) -> None:
    """256 MB from 60 MB: 196 s at 1 MB/s, 6 s at 32 MB/s. A run that ended before the kill would
    count 0 failed requests for ``none`` and make every strategy look equal."""
    length = chaos.sweep_seconds(rate, 256.0, warmup_s=5.0)
    reach = (256.0 - 60.0) / rate
    assert length >= 5.0 + reach + chaos.SWEEP_MARGIN_S
    assert length <= 5.0 + reach * 1.25 + chaos.SWEEP_MARGIN_S + 1  # and not needlessly longer


def test_sweep_lengths_follow_the_rate_and_the_limit() -> None:
    assert chaos.sweep_seconds(1, 256) == 250.0  # 5 + 196 + 49 (a quarter of the time to the limit)
    assert chaos.sweep_seconds(32, 256) == 42.0  # 5 + 6.125 + 30, rounded up
    assert chaos.sweep_seconds(8, 192) < chaos.sweep_seconds(8, 256)


def test_sweep_scenarios_take_the_rate_over_a_set_and_keep_the_other_sets() -> None:
    sets = [parse_set("bed.memory_limit_mb=192"), parse_set("leak.mb_per_s=99"), parse_set("load.rate=30")]
    [(rate, sc, length)] = chaos.sweep_scenarios([8.0], sets)
    assert rate == 8.0
    assert sc.params["leak"]["mb_per_s"] == 8.0
    assert sc.params["bed"]["memory_limit_mb"] == 192
    assert sc.params["load"]["rate"] == 30
    assert sc.name == "leak-oom-8mbs"
    assert length == chaos.sweep_seconds(8.0, 192.0) == 52.0
    assert SCENARIOS["leak-oom"].params["leak"]["mb_per_s"] == 4  # the shipped scenario is untouched


def test_parse_rates_rejects_nonsense() -> None:
    assert chaos.parse_rates("1,2,4.5") == [1.0, 2.0, 4.5]
    for bad in ("", "0,1", "-2"):
        with pytest.raises(ValueError):
            chaos.parse_rates(bad)


@pytest.mark.parametrize(
    ("first", "reach", "met"),
    [(10.0, 20.0, True), (10.0, 20.1, True), (10.1, 20.0, False), (None, 20.0, False), (3.0, None, None)],
)
def test_half_time_goal(first: float | None, reach: float | None, met: bool | None) -> None:
    """Found no later than half the time the leak takes to the limit; never found misses it."""
    assert chaos.half_time_goal(first, reach) is met


def _row(strategy: str, failed: int, **kw: Any) -> dict[str, Any]:
    return {"strategy": strategy, "failed": failed, "first_finding_s": None, "failure_s": None, "death_s": None} | kw


def test_sweep_row_judges_by_the_none_runs_oom_and_leads_from_its_failure() -> None:
    sc = chaos.sweep_scenarios([8.0], [])[0][1]
    rows = [
        _row("none", 41, failure_s=23.0, death_s=24.0),
        _row("seed", 40, failure_s=23.5, death_s=24.5),
        _row("watcher", 0, first_finding_s=11.0),
    ]
    line = chaos.sweep_row(8.0, sc, rows)
    assert line["reach_s"] == 24.0 and line["reach_from"] == "OOM in the none run"
    assert line["failed"] == {"none": 41, "seed": 40, "watcher": 0}
    assert line["lead_s"] == 12.0  # none's first failure 23 s - the watcher's first finding 11 s
    assert line["goal_half_time"] is True and line["watcher_zero_failed"] is True
    late = chaos.sweep_row(8.0, sc, [rows[0], _row("watcher", 3, first_finding_s=12.5)])
    assert late["goal_half_time"] is False and late["watcher_zero_failed"] is False


def test_sweep_row_estimates_the_time_to_the_limit_when_nothing_was_killed() -> None:
    sc = chaos.sweep_scenarios([4.0], [])[0][1]
    line = chaos.sweep_row(4.0, sc, [_row("none", 0), _row("watcher", 0, first_finding_s=20.0)])
    assert line["reach_s"] == 49.0 and line["reach_from"] == "estimate"  # (256 - 60) / 4
    assert line["goal_half_time"] is True
    assert line["lead_s"] is None


def test_sweep_table_has_a_line_per_rate_and_says_a_missed_goal() -> None:
    sc8, sc16 = (s for _r, s, _l in chaos.sweep_scenarios([8.0, 16.0], []))
    summary = [
        chaos.sweep_row(8.0, sc8, [_row("none", 41, death_s=24.0), _row("watcher", 0, first_finding_s=9.0)]),
        chaos.sweep_row(16.0, sc16, [_row("none", 30, death_s=12.0), _row("watcher", 2, first_finding_s=8.0)]),
    ]
    lines = chaos.sweep_table(summary).splitlines()
    assert "failed none" in lines[0] and "failed watcher" in lines[0] and "failed seed" not in lines[0]
    assert len(lines) == 4
    assert lines[2].startswith("| 8 | 256 | 24 | 41 | 0 | 9 |") and lines[2].endswith("| yes | yes |")
    assert lines[3].endswith("| NO | NO |")


# --------------------------------------------------------------------------------- CLI
def test_list_shows_the_new_scenarios_and_the_sweep(capsys: pytest.CaptureFixture[str]) -> None:
    assert chaos.main(["--list"]) == 0
    out = capsys.readouterr().out
    for name in ("hang", "two-faults", "healthy-noise-fast"):
        assert any(line.startswith(name + " ") for line in out.splitlines()), name
    assert "--sweep leak" in out and "1 MB/s 250 s" in out and "32 MB/s 42 s" in out


def test_set_overrides_a_scenario_parameter_and_ignores_another_scenarios_group() -> None:
    base = SCENARIOS["healthy-noise-fast"]
    sc = base.with_overrides([parse_set("sawtooth.on_s=2"), parse_set("leak.mb_per_s=8"), parse_set("load.rate=5")])
    assert sc.params["sawtooth"] == {"mb_per_s": 20, "max_mb": 40, "period_s": 10, "on_s": 2}
    assert "leak" not in sc.params
    assert sc.params["load"]["rate"] == 5
    assert sc.faulty is None and sc.background is base.background
    assert base.params["sawtooth"]["on_s"] == 3


# --------------------------------------------------------------------------------- fakes
@dataclass
class FakeReplica:
    index: int
    clock: list[float] = field(default_factory=lambda: [0.0])
    calls: list[tuple[float, str, Any]] = field(default_factory=list)

    def set_faults(self, spec: dict[str, Any]) -> None:
        self.calls.append((self.clock[0], "set", spec))

    def clear_fault(self, name: str) -> None:
        self.calls.append((self.clock[0], "delete", name))


@dataclass
class FakeBed:
    replicas: list[FakeReplica]
    url: str = "http://127.0.0.1:2"

    def served(self) -> ServedModel:
        return ServedModel("m", [1.0], {"2": [1.0]}, "tfserving")


def _ctx(scenario: chaos_scenarios.Scenario, bed: FakeBed, stop: Any = None) -> Context:
    expected = PhasedExpected({"2": [1.0]})
    return Context(bed, scenario.params, expected, stop or threading.Event())  # type: ignore[arg-type]


def test_two_faults_injects_both_faults_at_once_and_no_other() -> None:
    sc = SCENARIOS["two-faults"].with_overrides([parse_set("error_ramp.end=0.9")])
    bed = FakeBed([FakeReplica(i) for i in range(3)])
    ctx = _ctx(sc, bed)
    ts = sc.inject(ctx)
    assert bed.replicas[0].calls == []
    assert [c[1:] for c in bed.replicas[1].calls] == [("set", {"leak": {"mb_per_s": 8}})]
    assert [c[1:] for c in bed.replicas[2].calls] == [("set", {"error_ramp": {"start": 0.1, "end": 0.9, "over_s": 30}})]
    assert ctx.notes[-1][0] == ts and "replica 1" in ctx.notes[-1][1] and "replica 2" in ctx.notes[-1][1]
    assert chaos_scenarios.faulty_indices(sc) == (1, 2)
    assert chaos_scenarios.faulty_indices(SCENARIOS["hang"]) == (1,)
    assert chaos_scenarios.faulty_indices(SCENARIOS["healthy-noise"]) == ()


class FakeClock:
    """time for the sawtooth driver: ``stop.wait`` advances it; the run stops at ``end``."""

    def __init__(self, cell: list[float], end: float) -> None:
        self.cell, self.end = cell, end

    def monotonic(self) -> float:
        return self.cell[0]

    def time(self) -> float:
        return T0 + self.cell[0]

    def is_set(self) -> bool:
        return self.cell[0] >= self.end

    def wait(self, dt: float) -> bool:
        self.cell[0] += dt
        return self.is_set()


def _sawtooth(name: str, seconds: float, monkeypatch: pytest.MonkeyPatch) -> list[tuple[float, str, Any]]:
    sc = SCENARIOS[name].with_overrides([parse_set("jitter.every_s=100000")])
    bed = FakeBed([FakeReplica(i) for i in range(3)])
    clock = FakeClock(bed.replicas[1].clock, seconds)
    monkeypatch.setattr(chaos_scenarios, "time", clock)
    assert sc.background is not None
    sc.background(_ctx(sc, bed, stop=clock))
    return bed.replicas[1].calls


def test_fast_sawtooth_allocates_40_mb_in_2_s_and_frees_it_within_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _sawtooth("healthy-noise-fast", 21.0, monkeypatch)
    assert [(t, what) for t, what, _ in calls] == [
        (0.0, "set"),
        (3.0, "delete"),
        (10.0, "set"),
        (13.0, "delete"),
        (20.0, "set"),
        (21.0, "delete"),  # the driver frees what is held when the run ends
    ]
    leak = calls[0][2]["leak"]
    assert leak["max_mb"] == 40 and leak["max_mb"] / leak["mb_per_s"] == 2.0


def test_slow_sawtooth_keeps_half_a_period_on(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _sawtooth("healthy-noise", 31.0, monkeypatch)
    assert [(t, what) for t, what, _ in calls][:3] == [(0.0, "set"), (15.0, "delete"), (30.0, "set")]


# --------------------------------------------------------------------------------- measuring two faults
def _incident(target: str, opened: float) -> dict[str, Any]:
    return {
        "target": f"m/{target}",
        "rule": "r",
        "predicts": "x",
        "state": "closed",
        "opened": opened,
        "duration_s": 5.0,
        "note": "",
        "dry_run": False,
        "steps": [{"name": "drain", "status": "done", "started": opened, "ended": opened + 1, "duration_s": 1.0}],
    }


def test_a_run_with_two_faulty_replicas_counts_actions_and_findings_on_both() -> None:
    names = ["bed-tfs-0", "bed-tfs-1", "bed-tfs-2"]
    fault = T0 + 5
    run = chaos.Run(SCENARIOS["two-faults"], "watcher", 90.0, t0=T0, fault_ts=fault, replica_names=names)
    run.findings = [
        {"ts": fault + 4, "target": "m/bed-tfs-2", "rule": "r", "predicts": "x", "resolved": False},
        {"ts": fault + 7, "target": "m/bed-tfs-1", "rule": "r", "predicts": "x", "resolved": False},
    ]
    run.incidents = [_incident("bed-tfs-2", fault + 5), _incident("bed-tfs-1", fault + 20)]
    run.events = [(fault + 30, "bed-tfs-1", "oom")]
    row = chaos.measure(run, None)
    assert row["actions"] == 2 and row["false_actions"] == 0
    assert row["first_finding_s"] == 4.0
    assert row["first_finding_by_faulty"] == {"bed-tfs-1": 7.0, "bed-tfs-2": 4.0}
    assert row["death_s"] == 30.0
    run.incidents.append(_incident("bed-tfs-0", fault + 25))  # the healthy one
    assert chaos.measure(run, None)["false_actions"] == 1


def test_sweep_cli_runs_each_rate_for_its_length_with_the_default_strategies(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--rates 8,16`` through the one run loop (run_one faked: no Docker): none, seed and watcher
    per rate, each for the rate's length, and the per-rate table in the output and the .md."""
    calls: list[tuple[str, str, float]] = []

    def fake_run_one(scenario: Any, strategy: str, seconds: float, *_a: Any, **_k: Any) -> chaos.Run:
        calls.append((scenario.name, strategy, seconds))
        fault = T0 + 5
        run = chaos.Run(scenario, strategy, seconds, t0=T0, fault_ts=fault, replica_names=["a-0", "a-1", "a-2"])
        rate = scenario.params["leak"]["mb_per_s"]
        if strategy == "watcher":
            run.findings = [{"ts": fault + 2, "target": "m/a-1", "rule": "r", "predicts": "x", "resolved": False}]
        else:
            run.events = [(fault + 196 / rate, "a-1", "oom")]
        return run

    monkeypatch.setattr(chaos, "run_one", fake_run_one)
    out = tmp_path / "sweep.json"
    assert chaos.main(["--rates", "8,16", "--json", str(out), "--no-png"]) == 0
    assert calls == [
        (f"leak-oom-{r}mbs", s, chaos.sweep_seconds(r, 256)) for r in (8, 16) for s in ("none", "seed", "watcher")
    ]
    md = out.with_suffix(".md").read_text()
    assert "| 8 | 256 | 24.5 | 0 | 0 | 0 | 2 | 22.5 | yes | yes |" in md
    assert "| 16 | 256 | 12.2 | 0 | 0 | 0 | 2 | 10.25 | yes | yes |" in md
    assert md.split("\n\n")[1] in capsys.readouterr().out


SHIPPED_STATS_S = float(yaml.safe_load((chaos.REPO / "deploy" / "watcher.yaml").read_text())["stats_interval_s"])


@pytest.mark.parametrize(
    "sample_period",
    [
        1.0,
        SHIPPED_STATS_S,
        pytest.param(
            2.0,
            marks=pytest.mark.xfail(
                strict=True,
                reason="found here: sampled every 2 s, the first 40 MB climb after a flat start (phase 6 s) "
                "fires the shipped runway; in a seeded model 16 of 100 ten-minute runs fire at 2 s "
                "(3/100 at 1 s, 0/100 at the shipped 5 s)",
            ),
        ),
    ],
)
def test_the_fast_sawtooth_as_the_scenario_drives_it_never_fires_the_shipped_runway(sample_period: float) -> None:
    """The decision boundary for healthy-noise-fast's own parameters: its memory, sampled as Docker
    stats would be (the shipped period, and faster), for the scenario's ten minutes, never makes the
    shipped runway forecast active."""
    from tests.unit.detectors.test_forecast_urgent import BASE, MB, _feed, _shipped

    saw = SCENARIOS["healthy-noise-fast"].params["sawtooth"]
    rate, cap, period, on_s = (
        float(saw[k]) * m for k, m in (("mb_per_s", MB), ("max_mb", MB), ("period_s", 1), ("on_s", 1))
    )
    rng = np.random.default_rng(7)
    for phase in (0.0, 0.5, 1.9, 2.5, 6.0):
        d = _shipped()
        for i in range(int(SCENARIOS["healthy-noise-fast"].seconds / sample_period)):
            t = i * sample_period
            u = (t + phase) % period
            value = BASE + (min(u * rate, cap) if u < on_s else 0.0) + float(rng.normal(0, 1 * MB))
            assert not _feed(d, t, value), (phase, t, value / MB)
