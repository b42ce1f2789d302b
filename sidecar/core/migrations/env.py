"""Alembic environment: the engine and the metadata come from the caller
(sidecar.core.database.migrate)."""

from __future__ import annotations

from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import Engine

from sidecar.core.models import EnumText


def render_item(kind: str, item: Any, autogen: AutogenContext) -> str | Literal[False]:
    # Enum-valued columns are stored as plain text (see EnumText): render them as such, so a
    # migration never depends on the enum classes of the day it was written.
    if kind == "type" and isinstance(item, EnumText):
        return f"sa.String(length={getattr(item.impl, 'length', None)})"
    return False


def run_migrations_online() -> None:
    engine: Engine = context.config.attributes["engine"]
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=context.config.attributes["metadata"],
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
            render_item=render_item,
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


if context.is_offline_mode():
    raise RuntimeError("offline migrations are not supported; run against a database")
run_migrations_online()
