"""``python -m flows.cli``: the ``tilewise`` command without the console script."""

from flows.cli.app import app

app(prog_name="tilewise")
