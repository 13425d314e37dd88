"""The ``tilewise`` command line (``flows.cli.app:app``); one module per group of commands."""
