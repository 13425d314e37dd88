"""Run ``prefect server start`` in this process, with a shim for SQLAlchemy >= 2.1 when needed.

Prefect 3.8's scheduler bulk-inserts flow-run dicts that carry a ``state`` key, which maps to a hybrid
property. SQLAlchemy 2.0 ignored such keys; 2.1 raises "Can't evaluate bulk DML statement" unless the
hybrid has a ``bulk_dml`` setter, so no scheduled run is ever created. The shim restores 2.0's
behaviour (ignore the key; Prefect inserts the states itself right after). It does nothing on 2.0.
The project pins ``sqlalchemy<2.1`` for real deployments; this keeps the test honest on either.
"""

from __future__ import annotations

import sys


def _ignore_state_in_bulk_inserts() -> None:
    import sqlalchemy

    if tuple(int(p) for p in sqlalchemy.__version__.split(".")[:2]) < (2, 1):
        return
    from prefect.server.database import orm_models

    def ignore(cls: type, mapping: dict, value: object) -> None:
        return None

    for model in (orm_models.FlowRun, orm_models.TaskRun):
        for klass in model.__mro__:
            hybrid = klass.__dict__.get("state")
            if hybrid is not None and hasattr(hybrid, "bulk_dml_setter"):
                hybrid.bulk_dml_setter = ignore
                break


if __name__ == "__main__":
    _ignore_state_in_bulk_inserts()
    from prefect.cli import app

    sys.argv = ["prefect", "server", "start", *sys.argv[1:]]
    app()
