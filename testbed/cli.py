"""``python -m testbed``: the loopback test stack, the demo and the evaluations (not shipped).

These were ``watcher testbed|demo|eval`` while the testbed lived inside the product package; they
measure the product, so they sit beside it in the checkout and import it like any user would.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="The loopback-only test stack (simulator replicas, Nginx, Prometheus), the demo, the evaluations.",
)
eval_app = typer.Typer(no_args_is_help=True, help="Evaluations: NAB (anomaly detection) and lead time.")
app.add_typer(eval_app, name="eval")


@app.command("images")
def images() -> None:
    """Build the base and simulator images if their inputs changed (tags are input hashes)."""
    from testbed.images import ImageBuildError, ensure_images

    try:
        for role, image in ensure_images().items():
            typer.echo(f"{role:9} {image.tag} ({'built' if image.built else 'up to date'})")
    except ImageBuildError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


@app.command("up")
def up(
    replicas: Annotated[int, typer.Option(min=1, max=64, help="number of simulator replicas")] = 3,
    engines: Annotated[
        int, typer.Option(min=1, max=8, help="Docker engines to spread them over (the shared one plus engines-1 own)")
    ] = 1,
    noise: Annotated[float, typer.Option(min=0, help="noise lines per second each replica prints")] = 0.0,
    memory: Annotated[str, typer.Option(help="memory limit per replica")] = "256m",
    haproxy: Annotated[bool, typer.Option(help="also start HAProxy in front of the replicas")] = False,
    keep: Annotated[bool, typer.Option(help="keep running until Ctrl-C (for exploring by hand)")] = False,
) -> None:
    """Start the testbed, print its addresses as JSON, then tear it down (with --keep: on Ctrl-C)."""
    from testbed.stack import Testbed, TestbedConfig

    weights = ((3, 2, 1) + (1,) * replicas)[:replicas]
    bed = Testbed(
        TestbedConfig(
            replicas=replicas,
            weights=weights,
            memory_limit=memory,
            with_haproxy=haproxy,
            engines=engines,
            noise_lines_per_s=noise,
        )
    )
    bed.up()
    try:
        typer.echo(json.dumps(bed.describe(), indent=2))
        if keep:
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            typer.echo("testbed running; Ctrl-C tears it down", err=True)
            with contextlib.suppress(KeyboardInterrupt):
                stop.wait()
    finally:
        bed.down()
        typer.echo("testbed torn down", err=True)


@app.command("clean")
def clean() -> None:
    """Remove containers left by any testbed run (e.g. after a killed test session)."""
    import docker

    from testbed.replicas import remove_testbed_containers

    typer.echo(f"removed {remove_testbed_containers(docker.from_env())} container(s)")


@eval_app.command("nab")
def eval_nab(
    data: Annotated[Path, typer.Option(help="the NAB data folder (data/, labels/, config/, results/)")] = Path(
        "../shared/nab"
    ),
    out: Annotated[Path, typer.Option(help="results in NAB's layout go here")] = Path("nab-results"),
    subset: Annotated[bool, typer.Option(help="a small fixed subset (CI)")] = False,
    file: Annotated[list[str] | None, typer.Option(help="only these files (category/name.csv)")] = None,
) -> None:
    """Run the anomaly detector over the Numenta Anomaly Benchmark and score it for the three profiles."""
    from testbed.eval.nab import main as nab_main

    if not (data / "labels" / "combined_windows.json").is_file():
        typer.echo(f"error: {data}: not a NAB data folder (labels/combined_windows.json missing)", err=True)
        raise typer.Exit(2)
    raise typer.Exit(nab_main(data, out, files=file, subset=subset))


@eval_app.command("leadtime")
def eval_leadtime(
    recordings: Annotated[list[Path], typer.Argument(help="recordings of testbed runs (.jsonl / .jsonl.gz)")],
    pack: Annotated[list[Path] | None, typer.Option(help="rule packs (default: the shipped ones)")] = None,
    horizon: Annotated[float, typer.Option(help="a finding counts if it precedes the failure by at most this")] = 600.0,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the report as JSON")] = None,
) -> None:
    """Per detector and pack: failures caught, median and worst lead time, false findings per hour."""
    from testbed.eval.leadtime import main as leadtime_main

    raise typer.Exit(leadtime_main(recordings, pack or None, horizon_s=horizon, json_out=json_out))


@app.command()
def demo(
    scenario: Annotated[str, typer.Option(help="leak (default), error-ramp or stale-version")] = "leak",
) -> None:
    """The leak-to-OOM (or another) scenario on the testbed, without and then with serving-watcher."""
    from testbed.demo import SCENARIOS, run_demo

    if scenario not in SCENARIOS:
        typer.echo(f"error: unknown scenario {scenario!r}; choose from {', '.join(SCENARIOS)}", err=True)
        raise typer.Exit(2)
    raise typer.Exit(run_demo(scenario))
