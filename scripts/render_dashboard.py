"""Render the shipped Grafana dashboard's panels with matplotlib from a Prometheus.

Grafana cannot be installed here, so the README's dashboard picture is the same panel queries
(deploy/grafana/dashboards/serving-watcher.json) drawn from a Prometheus's range API, with the
dashboard's annotation queries (playbook steps, running incidents) as marks on every time axis.
The integration test tests/integration/test_metrics_dashboard.py calls :func:`render` at the end of
a testbed incident (``RENDER_DASHBOARD_TO=docs`` writes the committed images); by hand::

    python scripts/render_dashboard.py --prometheus http://127.0.0.1:9090 --since 300 --out docs
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "dashboards" / "serving-watcher.json"
COLUMNS = 4


def substitute(promql: str, replica: str) -> str:
    """Grafana's template variables as a fixed dashboard view would set them."""
    return promql.replace("$__rate_interval", "1m").replace("${replica}", replica).replace("$replica", replica)


def dashboard_queries(dashboard: dict[str, Any], replica: str) -> list[tuple[str, str]]:
    """(title, PromQL) of every panel target and every annotation, variables substituted."""
    out = [(p["title"], substitute(t["expr"], replica)) for p in dashboard["panels"] for t in p.get("targets", [])]
    out += [(f"annotation: {a['name']}", substitute(a["expr"], replica)) for a in dashboard["annotations"]["list"]]
    return out


def _range(prom: str, promql: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
    with requests.Session() as s:
        s.trust_env = False  # loopback only
        r = s.get(
            f"{prom}/api/v1/query_range",
            params={"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}s"},
            timeout=10,
        )
    body = r.json()
    if body.get("status") != "success":
        raise RuntimeError(f"{promql!r}: {body.get('error')}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _legend(fmt: str, labels: dict[str, str]) -> str:
    out = fmt
    for k, v in labels.items():
        out = out.replace("{{" + k + "}}", v.split("/")[-1] if k == "target" else v)
    return out if "{{" not in out else json.dumps(labels)


def render(
    dashboard: dict[str, Any], prom: str, start: float, end: float, replica: str, out: Path, step: float = 2.0
) -> list[Path]:
    """Draw every panel into ``out``/dashboard.png; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    panels = dashboard["panels"]
    rows = -(-len(panels) // COLUMNS)
    fig, axes = plt.subplots(rows, COLUMNS, figsize=(6 * COLUMNS, 3.2 * rows), squeeze=False)
    marks: list[tuple[float, str, str]] = []
    for ann in dashboard["annotations"]["list"]:
        for series in _range(prom, substitute(ann["expr"], replica), start, end, step):
            title = _legend(ann.get("titleFormat", ann["name"]), series["metric"])
            first = None
            for ts, _v in series["values"]:
                if first is None or ts - first > 3 * step:  # one mark per burst, not per sample
                    marks.append((float(ts), title, ann.get("iconColor", "orange")))
                first = float(ts)
    for ax, panel in zip(axes.flat, panels, strict=False):
        ax.set_title(panel["title"], fontsize=10, loc="left")
        for target in panel.get("targets", []):
            for series in _range(prom, substitute(target["expr"], replica), start, end, step):
                xs = [datetime.fromtimestamp(float(t)) for t, _ in series["values"]]
                ys = [float(v) for _, v in series["values"]]
                label = _legend(target.get("legendFormat", ""), series["metric"])
                if panel["type"] == "stat":
                    ax.step(xs, ys, where="post", label=label)
                else:
                    ax.plot(xs, ys, label=label, linewidth=1.2)
        for ts, _title, color in marks:
            ax.axvline(datetime.fromtimestamp(ts), color=color, alpha=0.5, linewidth=0.8)
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
        ax.tick_params(labelsize=7)
        if ax.lines:
            ax.legend(fontsize=6, loc="upper left", ncol=2)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    shown = "all replicas" if replica in (".*", "") else replica
    fig.suptitle(
        f"{dashboard['title']} ({shown}); vertical marks: playbook steps (orange), incidents running (red)",
        fontsize=12,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    out.mkdir(parents=True, exist_ok=True)
    path = out / "dashboard.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return [path]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", required=True)
    parser.add_argument("--since", type=float, default=300.0, help="seconds before now")
    parser.add_argument("--replica", default=".*")
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args()
    end = time.time()
    dashboard = json.loads(DASHBOARD.read_text())
    for path in render(dashboard, args.prometheus, end - args.since, end, args.replica, args.out):
        print(path)


if __name__ == "__main__":
    main()
