"""The ``watcher`` command.

Commands for the watcher itself (run, replay, rules) arrive with their issues; what exists now is
the testbed every test, benchmark and demo stands on, and the demo.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
from typing import Annotated

import typer

from watcher import __version__

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="serving-watcher: catch model servers before they fail."
)
testbed_app = typer.Typer(
    no_args_is_help=True, help="The loopback-only test stack (simulator replicas, Nginx, Prometheus)."
)
app.add_typer(testbed_app, name="testbed")


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


@testbed_app.command("images")
def testbed_images() -> None:
    """Build the base and simulator images if their inputs changed (tags are input hashes)."""
    from watcher.testbed.images import ImageBuildError, ensure_images

    try:
        for role, image in ensure_images().items():
            typer.echo(f"{role:9} {image.tag} ({'built' if image.built else 'up to date'})")
    except ImageBuildError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


@testbed_app.command("up")
def testbed_up(
    replicas: Annotated[int, typer.Option(min=1, max=8, help="number of simulator replicas")] = 3,
    memory: Annotated[str, typer.Option(help="memory limit per replica")] = "256m",
    haproxy: Annotated[bool, typer.Option(help="also start HAProxy in front of the replicas")] = False,
    keep: Annotated[bool, typer.Option(help="keep running until Ctrl-C (for exploring by hand)")] = False,
) -> None:
    """Start the testbed, print its addresses as JSON, then tear it down (with --keep: on Ctrl-C)."""
    from watcher.testbed.stack import Testbed, TestbedConfig

    weights = (3, 2, 1, 1, 1, 1, 1, 1)[:replicas]
    bed = Testbed(TestbedConfig(replicas=replicas, weights=weights, memory_limit=memory, with_haproxy=haproxy))
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


@testbed_app.command("clean")
def testbed_clean() -> None:
    """Remove containers left by any testbed run (e.g. after a killed test session)."""
    import docker

    from watcher.testbed.replicas import remove_testbed_containers

    typer.echo(f"removed {remove_testbed_containers(docker.from_env())} container(s)")


@app.command()
def demo(
    seconds: Annotated[int, typer.Option(min=20, help="how long to run the scenario")] = 60,
) -> None:
    """Run the leak-to-OOM scenario on the testbed and print what clients and Docker saw."""
    from watcher.testbed.demo import run_demo

    raise typer.Exit(run_demo(seconds=seconds))


if __name__ == "__main__":
    app()
