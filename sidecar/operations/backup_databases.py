"""The two databases of a node, copied and put back: the sidecar's and Orthanc's index, each
SQLite or PostgreSQL.

PostgreSQL: `pg_dump` in its custom format, from a snapshot exported by a repeatable-read
transaction that also reads the counts and the attachment list, so the manifest describes
exactly what the dump holds. Restored with `pg_restore` into an empty database. The password
travels in PGPASSWORD, never on a command line (`ps` shows those to every user).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import URL, make_url

# Orthanc's resource types as each index stores them: Orthanc's own SQLite index its
# ResourceType (Patient 1, Study 2, Series 3, Instance 4), the PostgreSQL plugin the plugin
# SDK's OrthancPluginResourceType (Patient 0, Study 1, Series 2, Instance 3).
ORTHANC_STUDY_INSTANCE = {"sqlite": (2, 4), "postgresql": (1, 3)}
# The sidecar's tables a restore is checked against.
SIDECAR_COUNTED = {"studies": "study", "orders": "imaging_order", "reports": "radiology_report"}


class DatabaseToolError(RuntimeError):
    """pg_dump or pg_restore failed or is missing; the message says which and why."""


def is_postgresql(url: str) -> bool:
    return url.startswith("postgresql")


def sqlite_path(url: str) -> Path:
    """The file of a SQLite DATABASE_URL."""
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        raise ValueError(f"the SQLite database of {url!r} is not a plain file")
    return Path(database)


@dataclass(frozen=True)
class Libpq:
    """A PostgreSQL URL as libpq's tools take it: the URL without its password, and the
    environment that carries the password."""

    url: str
    env: dict[str, str]

    @classmethod
    def of(cls, url: str) -> Libpq:
        """The URL built again from its parts without the password (URL.set(password=None)
        keeps it: SQLAlchemy skips None values), a `password` query parameter included."""
        parsed = make_url(url)
        query = {k: v for k, v in parsed.query.items() if k.lower() != "password"}
        password = parsed.password or _query_password(parsed.query)
        env = {**os.environ}
        if password:
            env["PGPASSWORD"] = str(password)
        bare = URL.create(
            drivername="postgresql",
            username=parsed.username,
            host=parsed.host,
            port=parsed.port,
            database=parsed.database,
            query=query,
        )
        return cls(bare.render_as_string(hide_password=False), env)

    def connect(self, *, autocommit: bool = True) -> psycopg.Connection[Any]:
        password = self.env.get("PGPASSWORD")
        if password:
            return psycopg.connect(self.url, password=password, autocommit=autocommit)
        return psycopg.connect(self.url, autocommit=autocommit)


def pg_tool(name: str) -> str:
    """pg_dump or pg_restore: on PATH (Debian's wrapper picks the right version), else the
    newest under /usr/lib/postgresql/*/bin."""
    found = shutil.which(name)
    if found:
        return found

    def version(path: str) -> float:
        try:
            return float(Path(path).parents[1].name)
        except ValueError:
            return 0.0

    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=version)
    if not candidates:
        raise DatabaseToolError(
            f"{name} not found: install the PostgreSQL client (postgresql-client)"
        )
    return candidates[-1]


def _query_password(query: Mapping[str, str | tuple[str, ...]]) -> str | None:
    for key, value in query.items():
        if key.lower() == "password":
            return value if isinstance(value, str) else (value[-1] if value else None)
    return None


# pg_dump's and pg_restore's errors that quote no row: a failed COPY quotes the row or the value
# it could not load (DETAIL: Failing row contains (...), invalid input syntax ...: "Doe^John"),
# which is patient data and must reach neither the terminal's scrollback nor a log.
_SAFE_ERRORS = (
    "connection to server",
    "could not connect",
    "password authentication failed",
    "no password supplied",
    "could not open input file",
    "could not open output file",
    "input file appears not to be a valid archive",
    "server version mismatch",
    "unsupported version",
    "permission denied for",
    "No space left on device",
)
_ROW_DATA = ("COPY", "DETAIL", "CONTEXT", "Failing row", "Key (", "LINE ", "input syntax")


def _run(command: Sequence[str], env: dict[str, str]) -> None:
    """Runs a PostgreSQL tool; on failure its exit code and, only when it is one known to quote
    no data (a connection refused, a file unreadable), its first error line."""
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode == 0:
        return
    tool = Path(command[0]).name
    why = "run it by hand to see why (its messages may quote rows, so they are not shown)"
    for line in (result.stderr or "").splitlines():
        if any(mark in line for mark in _ROW_DATA):
            break
        if any(safe in line for safe in _SAFE_ERRORS):
            why = line.strip()
            break
    raise DatabaseToolError(f"{tool} failed (exit {result.returncode}); {why}")


Reader = Callable[[str], list[tuple[Any, ...]]]


@contextmanager
def pg_snapshot(url: str) -> Iterator[tuple[str, Reader]]:
    """A repeatable-read, read-only transaction held open: its exported snapshot id (for
    pg_dump --snapshot) and a reader of queries that see that same snapshot."""
    libpq = Libpq.of(url)
    with libpq.connect(autocommit=True) as connection:
        connection.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            row = connection.execute("SELECT pg_export_snapshot()").fetchone()
            assert row is not None

            def read(query: str) -> list[tuple[Any, ...]]:
                return list(connection.execute(query).fetchall())

            yield str(row[0]), read
        finally:
            connection.execute("ROLLBACK")


def pg_dump(url: str, snapshot: str, destination: Path) -> None:
    libpq = Libpq.of(url)
    _run(
        [pg_tool("pg_dump"), "--format=custom", f"--snapshot={snapshot}", f"--file={destination}",
         f"--dbname={libpq.url}"],
        libpq.env,
    )  # fmt: skip


def pg_restore(url: str, dump: Path) -> None:
    """Into an empty database; owners and grants are the target's (its user owns it all)."""
    libpq = Libpq.of(url)
    _run(
        [pg_tool("pg_restore"), "--no-owner", "--no-acl", "--exit-on-error",
         f"--dbname={libpq.url}", str(dump)],
        libpq.env,
    )  # fmt: skip


def pg_tables(url: str) -> list[str]:
    """The tables of the public schema (none: an empty database, fit for a restore)."""
    with Libpq.of(url).connect(autocommit=True) as connection:
        rows = connection.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
    return sorted(str(row[0]) for row in rows)


def pg_empty_public_schema(url: str) -> None:
    """Drops everything in the public schema (restore --force)."""
    with Libpq.of(url).connect(autocommit=True) as connection:
        connection.execute("DROP SCHEMA IF EXISTS public CASCADE")
        connection.execute("CREATE SCHEMA public")


def sqlite_tables(path: Path) -> list[str]:
    import sqlite3

    if not path.exists():
        return []
    connection = sqlite3.connect(path, timeout=10)
    try:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    finally:
        connection.close()
    return sorted(str(row[0]) for row in rows)


def sidecar_facts(read: Reader) -> dict[str, Any]:
    """The alembic revision and the counts of the sidecar's database, read by `read`."""
    revision = read("SELECT version_num FROM alembic_version")
    counts = {
        name: int(read(f"SELECT count(*) FROM {table}")[0][0])  # noqa: S608 (constant names)
        for name, table in SIDECAR_COUNTED.items()
    }
    return {"alembicRevision": revision[0][0] if revision else None, "counts": counts}


def orthanc_facts(read: Reader, kind: str) -> tuple[dict[str, int], list[str]]:
    """The counts of Orthanc's index (`kind` sqlite or postgresql) and the uuids of every
    attachment it names."""
    study, instance = ORTHANC_STUDY_INSTANCE[kind]
    rows = read("SELECT resourceType, count(*) FROM Resources GROUP BY resourceType")
    by_type = {int(kind): int(count) for kind, count in rows}
    uuids = [str(row[0]) for row in read("SELECT uuid FROM AttachedFiles")]
    counts = {
        "studies": by_type.get(study, 0),
        "instances": by_type.get(instance, 0),
        "attachments": len(uuids),
    }
    return counts, uuids


def sqlite_reader(path: Path) -> tuple[Reader, Callable[[], None]]:
    """A reader of queries on a SQLite file, and its closer."""
    import sqlite3

    connection = sqlite3.connect(path)

    def read(query: str) -> list[tuple[Any, ...]]:
        return list(connection.execute(query).fetchall())

    return read, connection.close
