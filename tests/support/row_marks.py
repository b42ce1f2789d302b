"""A shared database put back as it was: a mark of the rows every table of the sidecar holds at
one moment, and the deletion of every row added since. For a module whose tests share one app
(its start is most of a short test's time) while each test expects the database as the module
found it: no study, no audit event, the admin alone.

Only added rows go: a row there at the mark and changed since stays changed (the admin's last
login, a background worker's lease), so a module using this must not depend on such changes."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Column, Engine, Table, func, select

from sidecar.tables import metadata


def _key(table: Table) -> Column[Any]:
    [column] = table.primary_key.columns
    return column


class RowMark:
    """Every table's rows as they are now: the highest key of a table keyed by number, the keys
    themselves otherwise (a cluster lease, a node's name)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._highest: dict[str, int] = {}
        self._keys: dict[str, set[Any]] = {}
        with engine.connect() as connection:
            for table in metadata.sorted_tables:
                key = _key(table)
                if key.type.python_type is int:
                    highest = connection.execute(select(func.max(key))).scalar()
                    self._highest[table.name] = highest or 0
                else:
                    self._keys[table.name] = set(connection.execute(select(key)).scalars())

    def delete_added(self) -> None:
        """Deletes every row added since the mark, in one transaction, each table before the
        tables it refers to."""
        with self.engine.begin() as connection:
            for table in reversed(metadata.sorted_tables):
                key = _key(table)
                if table.name in self._highest:
                    added = key > self._highest[table.name]
                else:
                    added = key.not_in(self._keys[table.name])
                connection.execute(table.delete().where(added))
