"""The chaos vocabulary as the real servers' model switch (testbed/oip_replicas.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from testbed.oip_replicas import OipReplica, model_switch, served_model
from testbed.replicas import ReplicaSpec
from testbed.servers.faults import Faults, ModelFault


def _replica(tmp_path: Path, server: str = "mlserver") -> OipReplica:
    spec = ReplicaSpec("r", 1, 2, "lin", tmp_path / "repo", tmp_path / "state", "img", server=server)
    spec.state_dir.mkdir(parents=True)
    return OipReplica(spec, container=None)


def test_the_scenarios_faults_become_what_the_model_does() -> None:
    switch = model_switch(
        {"leak": {"mb_per_s": 8, "max_mb": 40}, "error_ramp": {"start": 0.1, "end": 0.6, "over_s": 50}}
    )
    assert switch == {
        "leak_mb_per_s": 8.0,
        "leak_max_mb": 40.0,
        "error_ratio": 0.1,
        "error_ramp_per_s": pytest.approx(0.01),
        "error_max": 0.6,
    }
    assert model_switch({"stale_on_restart": {"version": 1}, "hang": {}}) == {"stale_on_restart": "1", "hang": True}


def test_a_fault_no_model_can_make_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    replica = _replica(tmp_path)
    replica.set_faults({"leak": {"mb_per_s": 2}})
    with pytest.raises(ValueError, match="'latency_creep'"):
        replica.set_faults({"latency_creep": {"end_ms": 4000}})
    assert json.loads((tmp_path / "state" / "faults.json").read_text()) == {"leak_mb_per_s": 2.0}


def test_the_switch_the_replica_writes_is_what_the_model_reads(tmp_path: Path) -> None:
    replica = _replica(tmp_path)
    faults = Faults(tmp_path / "state" / "faults.json")
    replica.set_faults({"errors": {"ratio": 1.0}})
    with pytest.raises(ModelFault):
        faults.before_request()
    replica.clear_fault("errors")
    assert faults.spec() == {} and faults.before_request() == 0.0


@pytest.mark.parametrize(("server", "protocol"), [("mlserver", "v2"), ("kserve", "kserve-v1")])
def test_each_server_is_spoken_to_in_its_protocol(server: str, protocol: str) -> None:
    model: Any = served_model(server)
    assert model.protocol == protocol and model.name == "lin"
    assert model.predictions["1"] != model.predictions["2"]  # a smoke answer tells the versions apart
