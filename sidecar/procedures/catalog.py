"""The procedure catalog's operations: entries created, changed and removed by administrators,
imported from a CSV file all at once, and looked up by code when an order arrives.

Every change is audited in the transaction that makes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, insert, select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session
from sqlmodel import select as select_model

from sidecar.core import audit
from sidecar.core.errors import ConflictingState
from sidecar.core.models import table_of, utcnow
from sidecar.orders.models import Modality, Priority
from sidecar.procedures.csv_file import read_catalog
from sidecar.procedures.models import ImportOutcome, Procedure

#: Order values a catalog entry provides, by the entry's field that holds each.
_ORDER_DEFAULTS = {
    "procedure_coding_system": "coding_system",
    "procedure_description": "description",
    "modality": "modality",
    "body_part": "body_part",
    "scheduled_station_aet": "station_ae_title",
    "scheduled_station_name": "station_name",
    "protocol_code": "protocol_code",
}
_STATEMENT = select_model(Procedure)


class DuplicateCode(ConflictingState):
    """Another catalog entry has this code."""


def find(session: Session, code: str) -> Procedure | None:
    """The entry for a procedure code (exactly as sent: codes are case-sensitive)."""
    return session.exec(_STATEMENT.where(Procedure.code == code)).first()


@dataclass(frozen=True)
class CatalogDefaults:
    """What a catalog entry gives an order: `values` (order field names, only those the entry
    holds) for the order to take where it says nothing itself, `{**values, **sent}`; and the
    default priority, apart: an order always has one, so the caller decides (HL7: whether
    the message named one)."""

    values: dict[str, Any]
    priority: Priority | None


_PROCEDURES = table_of(Procedure)
#: One Core statement, compiled once: the order intake asks it for every new order, and
#: building an ORM object per message would cost more than the query.
_DEFAULTS = select(
    *(_PROCEDURES.c[field] for field in _ORDER_DEFAULTS.values()), _PROCEDURES.c.priority
).where(_PROCEDURES.c.code == bindparam("code"))


def defaults_for(session: Session, code: str) -> CatalogDefaults | None:
    """The catalog's values for an order naming this procedure code, or None when the code
    is not in the catalog (codes are compared exactly as sent: case-sensitive)."""
    row = session.connection().execute(_DEFAULTS, {"code": code}).first()
    if row is None:
        return None
    values = {
        name: row._mapping[field]
        for name, field in _ORDER_DEFAULTS.items()
        if row._mapping[field] not in (None, "")
    }
    values["modality"] = Modality(values["modality"])
    priority = row._mapping["priority"]
    return CatalogDefaults(values, Priority(priority) if priority else None)


def create(session: Session, values: dict[str, Any], *, actor: str) -> Procedure:
    if find(session, values["code"]) is not None:
        raise DuplicateCode(f"procedure code {values['code']} is already in the catalog")
    entry = Procedure(**values)
    session.add(entry)
    _flush(session, values["code"])
    _audit(session, "procedure.created", entry, actor=actor)
    return entry


def update(session: Session, entry: Procedure, changes: dict[str, Any], *, actor: str) -> Procedure:
    code = changes.get("code")
    if code is not None and code != entry.code and find(session, code) is not None:
        raise DuplicateCode(f"procedure code {code} is already in the catalog")
    for name, value in changes.items():
        setattr(entry, name, value)
    entry.updated_at = utcnow()
    session.add(entry)
    _flush(session, entry.code)
    _audit(session, "procedure.updated", entry, actor=actor, fields=sorted(changes))
    return entry


def delete(session: Session, entry: Procedure, *, actor: str) -> None:
    """Orders keep what they took from the entry: they hold their own copy."""
    _audit(session, "procedure.deleted", entry, actor=actor)
    session.delete(entry)


def import_rows(
    session: Session, rows: list[dict[str, Any]], columns: list[str], *, actor: str
) -> ImportOutcome:
    """Creates the codes not in the catalog and updates those that are, in the caller's
    transaction: the columns the file has replace the entry's values (an empty cell clears an
    optional one), the others are kept. Rows are checked already (sidecar.procedures.csv_file)."""
    existing = {entry.code: entry for entry in session.exec(select_model(Procedure)).all()}
    now = utcnow()
    new_rows = []
    updated = 0
    for row in rows:
        entry = existing.get(row["code"])
        if entry is None:
            new_rows.append({**row, "created_at": now, "updated_at": now})
            continue
        changed = {name: row.get(name) for name in columns if getattr(entry, name) != row.get(name)}
        if changed:
            for name, value in changed.items():
                setattr(entry, name, value)
            entry.updated_at = now
            session.add(entry)
            updated += 1
    if new_rows:
        # One statement for every new entry (5,000 rows: one round trip, not 5,000).
        keys = sorted({key for row in new_rows for key in row})
        session.connection().execute(
            insert(table_of(Procedure)), [{key: row.get(key) for key in keys} for row in new_rows]
        )
    _flush(session, "in the file")
    outcome = ImportOutcome(rows=len(rows), created=len(new_rows), updated=updated)
    audit.record(
        session,
        actor=actor,
        action="procedure.imported",
        entity_type="procedure_catalog",
        entity_id="import",
        rows=outcome.rows,
        created=outcome.created,
        updated=outcome.updated,
    )
    return outcome


def import_file(session: Session, data: bytes, *, actor: str) -> ImportOutcome:
    """A catalog file (sidecar.procedures.csv_file) imported whole and committed, or nothing
    (UnacceptableValue naming each row and column at fault). What POST /api/procedures/import
    and the admin page both call."""
    parsed = read_catalog(data)
    outcome = import_rows(session, parsed.rows, parsed.columns, actor=actor)
    session.commit()
    return outcome


def _flush(session: Session, code: str) -> None:
    """Flushes; a code another transaction took meanwhile is a conflict (409), not a 500."""
    try:
        session.flush()
    except IntegrityError as exc:
        session.rollback()
        raise DuplicateCode(
            f"procedure code {code} was added to the catalog at the same time: try again"
        ) from exc


def _audit(session: Session, action: str, entry: Procedure, *, actor: str, **detail: Any) -> None:
    audit.record(
        session,
        actor=actor,
        action=action,
        entity_type="procedure",
        entity_id=entry.id,
        code=entry.code,
        **detail,
    )
