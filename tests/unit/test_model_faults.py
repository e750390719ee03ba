"""The model-made fault switch the real MLServer/KServe models read (testbed/servers/faults.py)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from testbed.servers.faults import Faults, ModelFault


def _set(path: Path, spec: dict[str, object]) -> None:
    path.write_text(json.dumps(spec))
    os.utime(path, (time.time() + 1, time.time() + 1))  # a new mtime even within the clock's resolution


def _failures(faults: Faults, n: int) -> int:
    failed = 0
    for _ in range(n):
        try:
            faults.before_request()
        except ModelFault:
            failed += 1
    return failed


def test_no_file_no_faults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    faults = Faults(tmp_path / "absent.json")
    assert _failures(faults, 100) == 0 and faults.kept == []
    monkeypatch.delenv("TESTBED_FAULTS", raising=False)
    assert Faults().path is None and Faults().spec() == {}
    monkeypatch.setenv("TESTBED_FAULTS", str(tmp_path / "f.json"))
    assert Faults().path == tmp_path / "f.json"


def test_an_error_share_fails_that_share_of_requests_exactly(tmp_path: Path) -> None:
    path = tmp_path / "faults.json"
    _set(path, {"error_ratio": 0.25})
    faults = Faults(path)
    assert _failures(faults, 100) == 25


def test_an_error_ramp_grows_from_when_the_file_changed(tmp_path: Path) -> None:
    path = tmp_path / "faults.json"
    faults = Faults(path)
    _set(path, {"error_ratio": 0.0, "error_ramp_per_s": 2.0})
    assert _failures(faults, 1) == 0  # at once: share ~0
    time.sleep(0.55)  # share now > 1: every request fails
    assert _failures(faults, 10) == 10
    _set(path, {})  # switched off
    assert _failures(faults, 10) == 0


def test_a_leak_keeps_written_memory_per_request_and_a_delay_is_returned(tmp_path: Path) -> None:
    path = tmp_path / "faults.json"
    _set(path, {"leak_mb_per_request": 1, "delay_s": 0.2})
    faults = Faults(path)
    delays = [faults.before_request() for _ in range(5)]
    assert delays == [0.2] * 5
    assert sum(len(b) for b in faults.kept) == 5 * 2**20 and all(b[-1] == 1 for b in faults.kept)


def test_a_version_can_be_made_to_fail_to_load(tmp_path: Path) -> None:
    path = tmp_path / "faults.json"
    _set(path, {"fail_load": ["2"]})
    faults = Faults(path)
    faults.check_load("1")
    with pytest.raises(ModelFault, match="version 2: artifact unreadable"):
        faults.check_load("2")


def test_an_unreadable_switch_is_no_fault(tmp_path: Path) -> None:
    path = tmp_path / "faults.json"
    path.write_text("{not json")
    assert Faults(path).spec() == {}


def test_a_paced_leak_keeps_rate_times_time_whatever_the_request_rate(tmp_path: Path) -> None:
    path = tmp_path / "faults.json"
    faults = Faults(path)
    _set(path, {"leak_mb_per_s": 20})
    faults.before_request()
    time.sleep(0.3)
    for _ in range(5):  # five requests at once keep no more than one
        faults.before_request()
    kept = sum(len(b) for b in faults.kept) / 2**20
    assert 5.5 <= kept <= 8.0  # 20 MB/s x ~0.3 s
    _set(path, {})  # the leak switched off: what was kept is freed (a GC sawtooth's fall)
    faults.before_request()
    assert faults.kept == []


def test_an_error_ramp_stops_at_its_ceiling(tmp_path: Path) -> None:
    path = tmp_path / "faults.json"
    faults = Faults(path)
    _set(path, {"error_ratio": 0.0, "error_ramp_per_s": 100.0, "error_max": 0.5})
    faults.spec()  # the ramp starts when the model sees the new switch
    time.sleep(0.05)
    assert _failures(faults, 100) == 50


def test_a_restart_cures_the_process_faults_but_not_the_ones_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "faults.json"
    path.write_text(json.dumps({"error_ratio": 1.0, "leak_mb_per_request": 1, "stale_on_restart": "1"}))
    os.utime(path, (time.time() - 5, time.time() - 5))  # written before this "process" started
    restarted = Faults(path)
    assert _failures(restarted, 10) == 0 and restarted.kept == []
    assert restarted.served_version("2") == "1"  # the rolled-back artifact is still on disk
    _set(path, {"error_ratio": 1.0})  # written while it runs: it has it
    assert _failures(restarted, 3) == 3 and restarted.served_version("2") == "2"


def test_a_bounded_leak_stops_growing_at_its_ceiling(tmp_path: Path) -> None:
    path = tmp_path / "faults.json"
    faults = Faults(path)
    _set(path, {"leak_mb_per_s": 1000, "leak_max_mb": 3})
    faults.spec()
    time.sleep(0.05)
    for _ in range(3):
        faults.before_request()
    assert sum(len(b) for b in faults.kept) == 3 * 2**20
