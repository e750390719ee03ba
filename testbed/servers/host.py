"""Start a real MLServer or KServe model server on loopback ports, serving the testbed's model.

Run with the servers' virtualenv, from the repository root::

    $VENV/bin/python -m testbed.servers.host mlserver --workdir DIR --http-port P --grpc-port G --metrics-port M
    $VENV/bin/python -m testbed.servers.host kserve --http-port P --version 2

MLServer serves ``lin`` versions 1 and 2 (sklearn LinearRegression fitted on fixed data, through
``mlserver_sklearn.SKLearnModel``). MLServer 1.7 exits when a model fails to load at startup, so a
broken model is added later (:func:`testbed.servers.models.write_broken_mlserver_model`, then
``POST /v2/repository/models/broken/load``), as a bad rollout would be. KServe serves ``lin``
at one version (KServe has no model versions) and
``broken`` (load raises). Both bind 127.0.0.1 only; the process replaces itself with the server
(``exec``), so the caller's PID is the server's. Both models read the fault switch named by
``TESTBED_FAULTS`` (:mod:`testbed.servers.faults`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path

from testbed.servers.models import LOOPBACK, VERSIONS, version_folder


def write_mlserver_repo(workdir: Path, http_port: int, grpc_port: int, metrics_port: int) -> None:
    """settings.json + one folder per model version with its model-settings.json and artifact."""
    import joblib  # type: ignore[import-not-found, unused-ignore]
    import numpy as np  # type: ignore[import-not-found, unused-ignore]
    from sklearn.linear_model import LinearRegression  # type: ignore[import-not-found, unused-ignore]

    workdir.mkdir(parents=True, exist_ok=True)
    settings = {
        "host": LOOPBACK,
        "http_port": http_port,
        "grpc_port": grpc_port,
        "metrics_port": metrics_port,
        "parallel_workers": 0,  # models in the server process: quick start, one PID to stop
        "load_models_at_startup": True,
    }
    (workdir / "settings.json").write_text(json.dumps(settings))
    xs = np.arange(10, dtype=float).reshape(-1, 1)
    for version, (slope, intercept) in VERSIONS.items():
        folder = workdir / version_folder(version)
        folder.mkdir(exist_ok=True)
        joblib.dump(LinearRegression().fit(xs, slope * xs[:, 0] + intercept), folder / "model.joblib")
        model = {
            "name": "lin",
            # MLServer's sklearn runtime with the testbed's model-made faults (TESTBED_FAULTS)
            "implementation": "testbed.servers.mlserver_faulty.FaultySKLearnModel",
            "parameters": {"uri": "./model.joblib", "version": version},
        }
        (folder / "model-settings.json").write_text(json.dumps(model))


def run_mlserver(args: argparse.Namespace) -> None:
    workdir = Path(args.workdir)
    write_mlserver_repo(workdir, args.http_port, args.grpc_port, args.metrics_port)
    # the virtualenv's script beside its python; in the image, the one on PATH (pip --target's bin/)
    beside = Path(sys.executable).with_name("mlserver")
    mlserver = beside if beside.exists() else Path(shutil.which("mlserver") or beside)
    os.execv(str(mlserver), [str(mlserver), "start", str(workdir)])  # noqa: S606 - a fixed argv, no shell


def run_kserve(args: argparse.Namespace) -> None:
    import kserve  # type: ignore[import-not-found, unused-ignore]
    import uvicorn  # type: ignore[import-not-found, unused-ignore]

    from testbed.servers.kserve_model import LinearModel

    config_init = uvicorn.Config.__init__

    def loopback_only(self: object, *a: object, **kw: object) -> None:
        kw["host"] = LOOPBACK  # KServe's RESTServer hard-codes 0.0.0.0; the testbed binds loopback only
        config_init(self, *a, **kw)

    uvicorn.Config.__init__ = loopback_only
    models = [LinearModel("lin", args.version), LinearModel("broken", args.version, fail_load=True)]
    for m in models:
        try:
            m.load()
        except RuntimeError as exc:
            logging.getLogger("kserve").error("model %s failed to load: %s", m.name, exc)
    kserve.ModelServer(http_port=args.http_port, enable_grpc=False, workers=1).start(models)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="server", required=True)
    ml = sub.add_parser("mlserver")
    ml.add_argument("--workdir", required=True)
    ml.add_argument("--http-port", type=int, required=True)
    ml.add_argument("--grpc-port", type=int, required=True)
    ml.add_argument("--metrics-port", type=int, required=True)
    ks = sub.add_parser("kserve")
    ks.add_argument("--http-port", type=int, required=True)
    ks.add_argument("--version", default="2", choices=sorted(VERSIONS))
    args = parser.parse_args()
    run_mlserver(args) if args.server == "mlserver" else run_kserve(args)


if __name__ == "__main__":
    main()
