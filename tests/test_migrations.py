"""Alembic migrations: they build the schema the models describe, and they go down and up."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import command

from sidecar.database import alembic_config, make_engine, migrate


def test_migrations_produce_exactly_the_models_schema(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        migrate(engine)
        # Raises if autogenerate would find any difference between models and database.
        command.check(alembic_config(engine))
    finally:
        engine.dispose()


def test_migrations_downgrade_to_nothing_and_upgrade_again(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        migrate(engine)
        command.downgrade(alembic_config(engine), "base")
        assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}
        migrate(engine)
        tables = set(sa.inspect(engine).get_table_names())
        assert {"study", "series", "image", "imaging_order", "hl7_message", "app_user"} <= tables
    finally:
        engine.dispose()
