"""The threshold-tuning notebook executes headless on the shipped recordings and leaves its figures.

The kernel is the interpreter running the tests (the project's virtualenv): a kernel spec naming
``sys.executable`` is written to a temporary ``JUPYTER_PATH``, so a ``python3`` kernel spec
installed elsewhere on the machine can never be picked up instead.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK_PY = REPO / "notebooks" / "threshold_tuning.py"
NOTEBOOK_IPYNB = REPO / "notebooks" / "threshold_tuning.ipynb"
KERNEL = "serving-watcher-venv"


def _sources(nb: object) -> list[tuple[str, str]]:
    return [(c["cell_type"], c["source"].strip()) for c in nb["cells"]]  # type: ignore[index]


def test_paired_notebook_is_in_sync() -> None:
    """The .ipynb is the .py (jupytext percent format) plus outputs: same cells, same sources."""
    assert _sources(jupytext.read(NOTEBOOK_PY)) == _sources(jupytext.read(NOTEBOOK_IPYNB))


def test_notebook_executes_and_leaves_figures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = _execute(tmp_path, monkeypatch)
    # the tuned packs are shown as a YAML diff against the shipped ones (or said to be unchanged)
    assert "--- rules/foresight.yaml" in text or "foresight.yaml: unchanged" in text
    assert "--- rules/tfserving.yaml" in text or "tfserving.yaml: unchanged" in text
    assert (tmp_path / "out" / "foresight.yaml").exists()
    assert (tmp_path / "out" / "tfserving.yaml").exists()


def _execute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the notebook headless; its printed text, after checking it ran clean and drew its figures."""
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "serving-watcher (venv)",
                "language": "python",
            }
        )
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("THRESHOLD_TUNING_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = jupytext.read(NOTEBOOK_PY)
    client = nbclient.NotebookClient(
        nb,
        kernel_name=KERNEL,
        timeout=120,
        resources={"metadata": {"path": str(REPO / "notebooks")}},
    )
    started = time.monotonic()
    client.execute()  # raises CellExecutionError on any failing cell
    elapsed = time.monotonic() - started
    print(f"notebook executed in {elapsed:.1f} s")
    assert elapsed < 120
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2, "expected the trade-off plot and the series plot"
    return "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")


def test_notebook_tunes_on_a_recording_of_ones_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`THRESHOLD_TUNING_RECORDINGS` replaces the shipped recordings: here one as `watcher record`
    writes it (its failures are Docker's account, no known-healthy stretch), in a directory."""
    from watcher.record import failures_from, write_recording
    from watcher.replay import read_jsonl

    signals = list(read_jsonl(REPO / "recordings" / "leak-8mb.jsonl.gz"))
    fleet = tmp_path / "fleet"
    write_recording(
        fleet / "my-fleet.jsonl.gz",
        {"recorded_by": "watcher record", "failures": failures_from(signals), "healthy": []},
        signals,
    )
    monkeypatch.setenv("THRESHOLD_TUNING_RECORDINGS", str(fleet))
    text = _execute(tmp_path, monkeypatch)
    assert "my-fleet" in text and "leak-4mb" not in text and "healthy-noise" not in text
    assert "oom of tfsim-17a889ff1e-1" in text
