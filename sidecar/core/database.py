"""Engine, sessions and schema migrations (Alembic, applied on start)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, MetaData, event, text
from sqlalchemy.engine import make_url
from sqlmodel import create_engine

_MIGRATIONS = Path(__file__).parent / "migrations"


def make_engine(database_url: str, *, pre_ping: bool = True) -> Engine:
    """`pre_ping` tests each pooled connection before use (one round trip): a connection killed
    while idle, e.g. by a database restart, is replaced rather than failing its request.
    `hide_parameters`: a statement's values (patients' names, ids) never appear in an error's
    text, which may be logged."""
    if database_url.startswith("sqlite"):
        path = make_url(database_url).database
        if path and path != ":memory:" and not path.startswith("file:"):
            _create_private_file(Path(path))
        engine = create_engine(
            database_url,
            connect_args={"check_same_thread": False, "timeout": 30},
            hide_parameters=True,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(
        database_url,
        pool_pre_ping=pre_ping,
        pool_size=10,
        max_overflow=10,
        hide_parameters=True,
    )


def _create_private_file(path: Path) -> None:
    """Creates the SQLite file, and its folder, for this user only (0600, 0700), whatever the
    umask: it holds patients' data. SQLite gives its -wal and -shm files the database file's
    mode. An existing file keeps its mode; one that cannot be opened is SQLite's to report, on
    first use, like any other database error."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT, 0o600))


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the API read while the sync worker writes; foreign keys are off by default.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def alembic_config(engine: Engine, metadata: MetaData) -> Config:
    """Alembic for this engine; `metadata` holds every table (sidecar.tables.metadata), for
    autogenerate and `alembic check`: the domains' models, which core does not import."""
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["engine"] = engine
    config.attributes["metadata"] = metadata
    return config


def migrate(engine: Engine, metadata: MetaData) -> None:
    command.upgrade(alembic_config(engine, metadata), "head")


#: The PostgreSQL advisory lock key held while a node sets the database up (any constant the
#: application uses for nothing else; "sidecar!" in ASCII).
_START_UP_LOCK = 0x73_69_64_65_63_61_72_21


@contextlib.contextmanager
def start_up_lock(engine: Engine) -> Iterator[None]:
    """One node at a time sets the shared database up (migrations, the first administrator):
    nodes of a cluster started together would otherwise run the same migration twice, and
    the second would fail. A session lock on its own connection, released when the block
    ends, or by PostgreSQL when the process dies. SQLite has one node: nothing to hold."""
    if engine.dialect.name != "postgresql":
        yield
        return
    with engine.connect() as connection:
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _START_UP_LOCK})
        connection.commit()
        try:
            yield
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _START_UP_LOCK})
            connection.commit()
