"""A watcher pays for a detector's imports only when a loaded rule uses it (issue #18).

Each check runs in a fresh interpreter: this test process has imported every detector already.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from watcher.detectors import registry
from watcher.detectors.base import Detector

ROOT = Path(__file__).resolve().parents[3]


def _run(code: str) -> dict[str, object]:
    """Run ``code`` in a fresh interpreter from the worktree; it prints one JSON object."""
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_packs_without_a_learned_rule_never_import_river_nor_numpy() -> None:
    result = _run(
        """
        import json, sys
        from watcher.rules import shipped_packs
        from watcher.rulepack.compile import compile_packs
        packs = [p for p in shipped_packs() if "kind: predictor" not in p.read_text()]
        assert packs and len(packs) < len(shipped_packs())
        ruleset = compile_packs(packs)
        detectors = ruleset.new_detectors()
        heavy = sorted(m for m in ("river", "scipy", "numpy") if m in sys.modules)
        print(json.dumps({"rules": len(detectors), "heavy": heavy}))
        """
    )
    assert result["rules"] and result["heavy"] == []


def test_every_kinds_params_validate_without_importing_an_implementation() -> None:
    """What ``rules lint`` needs from the registry: every kind's params model, from light modules."""
    result = _run(
        """
        import json, sys
        from watcher.detectors import registry
        from watcher.rulepack.schema import DetectorSpec
        kinds = registry.detector_kinds()
        bad = {}
        for kind in kinds:
            try:
                DetectorSpec(kind=kind, params={"no_such_param": 1})
            except ValueError as exc:
                bad[kind] = "no_such_param" in str(exc)
        heavy = sorted(m for m in ("river", "scipy", "numpy") if m in sys.modules)
        impls = sorted(m for m in sys.modules if m.startswith("watcher.detectors.")
                       and m.rsplit(".", 1)[1] in ("forecast", "peer", "predictor", "anomaly", "vectorized"))
        print(json.dumps({"kinds": sorted(kinds), "refused": bad, "heavy": heavy, "impls": impls}))
        """
    )
    assert {"forecast", "peer", "predictor", "anomaly", "change", "templates"} <= set(result["kinds"])  # type: ignore[arg-type]
    assert result["refused"] and all(result["refused"].values())  # type: ignore[union-attr]
    assert result["heavy"] == [] and result["impls"] == []


def test_the_shipped_predictor_never_imports_river_nor_scipy() -> None:
    """Its model is written out (river brought scipy, 72 MB, for five weights): restoring a
    checkpoint, answering and learning leave both unloaded, and the priors answer as before."""
    result = _run(
        """
        import json, sys
        from watcher.rules import SHIPPED_RULES
        from watcher.rulepack.compile import compile_packs
        detectors = compile_packs([SHIPPED_RULES / "foresight.yaml"]).new_detectors()
        predictor = detectors["failure-predictor"]
        state = predictor.state()
        predictor.restore(state, {})
        x = dict.fromkeys(["runway", "mem_high", "errors", "latency", "restarts"], 0.0)
        p = predictor.probability(x)
        same_state = state == predictor.state()
        predictor.label_failure("nobody", 0.0)
        predictor.model.learn({**x, "runway": 1.0}, True)
        heavy = sorted(m for m in ("river", "scipy") if m in sys.modules)
        print(json.dumps({"kind": type(predictor).__name__, "heavy": heavy, "p": p, "same_state": same_state}))
        """
    )
    assert result["kind"] == "FailurePredictor" and result["heavy"] == []
    assert 0.0 < result["p"] < 0.05  # type: ignore[operator]  # intercept -4: about 1.8 %
    assert result["same_state"] is True


@pytest.mark.parametrize("entry", registry.BUILTIN_KINDS, ids=lambda e: e.kind)
def test_each_catalogue_entry_names_the_class_and_params_model_of_its_kind(entry: registry.BuiltinKind) -> None:
    cls = entry.load()
    assert cls.kind == entry.kind
    assert cls.params_model is entry.params_model()
    assert registry.detector_class(entry.kind) is cls


def test_a_second_class_for_a_builtin_kind_is_refused_and_the_same_class_is_a_no_op() -> None:
    class Impostor(Detector):
        kind = "predictor"

    with pytest.raises(ValueError, match="already registered"):
        registry.register(Impostor)
    same = registry.detector_class("anomaly")
    assert same is not None and registry.register(same) is same
    assert registry.detector_class("predictor") is not Impostor
