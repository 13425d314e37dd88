"""The ``tilewise`` command: every subcommand mounted on one typer app.

Each command loads its heavy modules (torch, GDAL, Prefect) when it runs, so importing this app, and
``tilewise --help``, stay fast. Errors a user can cause print one line and exit with their family's
code (see ``flows.cli.errors``); ``--debug`` shows the traceback instead. Called as the process's
entry point, a finished plain run ends without the interpreter's teardown (``flows.cli.process``).
"""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer

from flows.cli.bundle import bundle_app
from flows.cli.errors import set_debug
from flows.cli.process import end_now_if_allowed, forbid_quick_end, own_process
from flows.cli.run import info_cmd, plan_cmd, run_cmd
from flows.cli.serve import serve_cmd
from flows.cli.train import evaluate_cmd, train_cmd


class _App(typer.Typer):
    """The typer app; called (the console script, ``python -m flows.cli``) it owns the process, so a
    command that allowed it ends the process at once. ``CliRunner`` invokes the command, not this."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        forbid_quick_end()  # only what this call's command allows
        own_process()
        try:
            return super().__call__(*args, **kwargs)
        except SystemExit as done:
            end_now_if_allowed(done.code)
            raise


app = _App(
    help="Exact, seam-free segmentation of huge rasters and volumes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def main(
    ctx: typer.Context, debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False
) -> None:
    set_debug(ctx, debug)
    os.environ.setdefault("DO_NOT_TRACK", "1")


app.command("run")(run_cmd)
app.command("plan")(plan_cmd)
app.command("info")(info_cmd)
app.add_typer(bundle_app, name="bundle")
app.command("serve")(serve_cmd)
app.command("train")(train_cmd)
app.command("evaluate")(evaluate_cmd)
