"""The tiny model both servers serve: ``y = slope * x + intercept`` per version, so the two
versions' answers differ and a smoke prediction tells them apart. One definition, used to fit
the sklearn LinearRegression MLServer loads, by the KServe model, and by tests for the expected
answers."""

from __future__ import annotations

import json
from pathlib import Path

LOOPBACK = "127.0.0.1"

VERSIONS: dict[str, tuple[float, float]] = {"1": (2.0, 1.0), "2": (3.0, -1.0)}  # version -> (slope, intercept)
SMOKE_INSTANCES: list[list[float]] = [[1.0], [2.0], [5.0]]


def expected(version: str, instances: list[list[float]] = SMOKE_INSTANCES) -> list[float]:
    slope, intercept = VERSIONS[version]
    return [slope * row[0] + intercept for row in instances]


def version_folder(version: str, model: str = "lin") -> str:
    """The folder of one version in the MLServer model repository the launcher writes."""
    return f"{model}-v{version}"


def write_smoke_repo(repo: Path, model: str = "lin") -> Path:
    """``<repo>/<model>/<version>/smoke.json`` for every version: the stored smoke answers the
    watcher's verifier compares a restarted replica against."""
    for version in VERSIONS:
        (repo / model / version).mkdir(parents=True, exist_ok=True)
        stored = {"instances": SMOKE_INSTANCES, "predictions": expected(version)}
        (repo / model / version / "smoke.json").write_text(json.dumps(stored))
    return repo


def write_broken_mlserver_model(workdir: Path, name: str = "broken") -> None:
    """A model folder whose artifact is garbage: MLServer's load of it fails, the server stays up."""
    folder = workdir / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.joblib").write_bytes(b"not a joblib file (testbed fault)")
    settings = {
        "name": name,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": "1"},
    }
    (folder / "model-settings.json").write_text(json.dumps(settings))
