"""``python -m testbed``."""

from testbed.cli import app

app(prog_name="python -m testbed")
