"""Alembic migrations: they build the schema the models describe, and they go down and up."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import command

from sidecar.core.database import alembic_config, make_engine, migrate
from sidecar.tables import metadata


def test_migrations_produce_exactly_the_models_schema(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        migrate(engine, metadata)
        # Raises if autogenerate would find any difference between models and database.
        command.check(alembic_config(engine, metadata))
    finally:
        engine.dispose()


def test_migrations_downgrade_to_nothing_and_upgrade_again(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        migrate(engine, metadata)
        command.downgrade(alembic_config(engine, metadata), "base")
        assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}
        migrate(engine, metadata)
        tables = set(sa.inspect(engine).get_table_names())
        assert {"study", "series", "image", "imaging_order", "hl7_message", "app_user"} <= tables
    finally:
        engine.dispose()
