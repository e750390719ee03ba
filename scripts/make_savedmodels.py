#!/usr/bin/env python3
"""Generate the real TF Serving SavedModels in ``models/half_plus_two/<version>/``.

The compose stack in ``deploy/`` serves ``models/`` with the real ``tensorflow/serving`` image,
which needs a SavedModel (``saved_model.pb`` + ``variables/``) in each version folder. The
testbed simulator reads the ``model.json`` / ``smoke.json`` files beside them instead; this
script never touches those.

| version | function | smoke: instances [1, 2, 5] -> predictions |
|---|---|---|
| 1 | y = 0.5 x + 2 | [2.5, 3.0, 4.5] |
| 2 | y = 0.5 x + 3 | [3.5, 4.0, 5.5] |

Signature ``serving_default``: input ``x`` (float32, shape [None]), output ``y`` (same shape),
so ``POST /v1/models/half_plus_two:predict`` with ``{"instances": [1.0, 2.0, 5.0]}`` answers
``{"predictions": [2.5, 3.0, 4.5]}`` on version 1 — exactly what each ``smoke.json`` says.

TensorFlow is needed only to *write* the models, so keep it out of the project's virtualenv:

    python3 -m venv /tmp/tfvenv
    /tmp/tfvenv/bin/pip install tensorflow-cpu
    /tmp/tfvenv/bin/python scripts/make_savedmodels.py          # writes models/half_plus_two/{1,2}/
    /tmp/tfvenv/bin/python scripts/make_savedmodels.py --check  # reload and compare with smoke.json

Each version is written to a hidden temporary folder and swapped into place, so a TF Serving
polling the repository never sees half a model. The result is a few KB per version.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = REPO_ROOT / "models" / "half_plus_two"
VERSIONS = {1: (0.5, 2.0), 2: (0.5, 3.0)}  # version -> (scale, offset)
KEEP = {"model.json", "smoke.json"}  # the simulator's files: never rewritten or removed


def _tf():  # type: ignore[no-untyped-def]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except ImportError:
        sys.exit("TensorFlow is not installed; see this script's docstring (pip install tensorflow-cpu in a venv)")
    return tf


def build(tf, scale: float, offset: float, out: Path) -> None:  # type: ignore[no-untyped-def]
    class HalfPlus(tf.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.a = tf.Variable(scale, dtype=tf.float32, name="a")
            self.b = tf.Variable(offset, dtype=tf.float32, name="b")

        @tf.function(input_signature=[tf.TensorSpec(shape=[None], dtype=tf.float32, name="x")])
        def serve(self, x):  # type: ignore[no-untyped-def]
            return {"y": self.a * x + self.b}

    module = HalfPlus()
    tf.saved_model.save(module, str(out), signatures={"serving_default": module.serve})


def write_version(tf, version: int, scale: float, offset: float) -> Path:  # type: ignore[no-untyped-def]
    dest = MODEL_DIR / str(version)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".v{version}-", dir=MODEL_DIR) as tmp:
        staged = Path(tmp) / "sm"
        build(tf, scale, offset, staged)
        # Replace only the SavedModel parts; model.json/smoke.json stay as they are.
        for name in ("saved_model.pb", "fingerprint.pb", "variables", "assets"):
            old = dest / name
            if old.is_dir():
                shutil.rmtree(old)
            elif old.exists():
                old.unlink()
        for item in staged.iterdir():
            if item.name in KEEP:
                continue
            if item.is_dir() and item.name == "assets" and not any(item.iterdir()):
                continue  # TF writes an empty assets/ folder; git would not keep it anyway
            os.replace(item, dest / item.name)
    return dest


def check(tf) -> int:  # type: ignore[no-untyped-def]
    failures = 0
    for version in VERSIONS:
        folder = MODEL_DIR / str(version)
        smoke = json.loads((folder / "smoke.json").read_text())
        loaded = tf.saved_model.load(str(folder))
        fn = loaded.signatures["serving_default"]
        got = fn(x=tf.constant(smoke["instances"], dtype=tf.float32))["y"].numpy().tolist()
        ok = all(abs(g - w) < 1e-6 for g, w in zip(got, smoke["predictions"], strict=True))
        print(f"half_plus_two/{version}: {got} {'OK' if ok else 'MISMATCH, want ' + str(smoke['predictions'])}")
        failures += not ok
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only reload the models and compare with smoke.json")
    args = parser.parse_args(argv)
    tf = _tf()
    if not args.check:
        for version, (scale, offset) in VERSIONS.items():
            dest = write_version(tf, version, scale, offset)
            size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file() and p.name not in KEEP)
            print(f"wrote {dest.relative_to(REPO_ROOT)} (y = {scale}x + {offset}, {size} bytes)")
    return check(tf)


if __name__ == "__main__":
    sys.exit(main())
