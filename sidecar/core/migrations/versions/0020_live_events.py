"""live events: one row per change to a study, an order, a report or a critical finding (and a
study's reading state), written by triggers in the transaction of the change

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-01 14:10:00
"""

# ruff: noqa: S608

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import sidecar.core.models

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# (table, event kind, the entity id's column, the study id's expression in SQLite); a change to
# a study's reading state (claim, assignment) is a change of the study.
_SOURCES = (
    ("study", "study", "id", "{row}.id"),
    (
        "imaging_order",
        "order",
        "id",
        "(SELECT s.id FROM study s WHERE s.order_id = {row}.id ORDER BY s.id LIMIT 1)",
    ),
    ("radiology_report", "report", "id", "{row}.study_id"),
    ("critical_finding", "finding", "id", "{row}.study_id"),
    ("study_reading", "study", "study_id", "{row}.study_id"),
)
_OPERATIONS = (
    ("INSERT", "NEW", "created"),
    ("UPDATE", "NEW", "changed"),
    ("DELETE", "OLD", "removed"),
)
_COLUMNS = (
    "recorded_at, kind, action, entity_id, study_id, patient_id, issuer_of_patient_id, facility_id"
)

# PostgreSQL: one function for every table; an UPDATE that changes nothing records nothing.
_RECORD_EVENT = (
    """
CREATE OR REPLACE FUNCTION sidecar_record_live_event() RETURNS trigger AS $$
DECLARE
    old_row jsonb := CASE WHEN TG_OP = 'INSERT' THEN NULL ELSE to_jsonb(OLD) END;
    new_row jsonb := CASE WHEN TG_OP = 'DELETE' THEN NULL ELSE to_jsonb(NEW) END;
    changed jsonb := COALESCE(new_row, old_row);
    event_kind text := TG_ARGV[0];
    event_action text := CASE TG_OP WHEN 'INSERT' THEN 'created' WHEN 'UPDATE' THEN 'changed'
                                    ELSE 'removed' END;
    entity bigint := (changed ->> TG_ARGV[1])::bigint;
    of_study bigint;
BEGIN
    IF TG_OP = 'UPDATE' AND old_row = new_row THEN
        RETURN NULL;
    END IF;
    IF TG_TABLE_NAME = 'study_reading' THEN
        event_action := 'changed';
    END IF;
    IF event_kind = 'study' THEN
        of_study := entity;
    ELSIF event_kind = 'order' THEN
        SELECT s.id INTO of_study FROM study s WHERE s.order_id = entity ORDER BY s.id LIMIT 1;
    ELSE
        of_study := (changed ->> 'study_id')::bigint;
    END IF;
    INSERT INTO live_event ("""
    + _COLUMNS
    + """)
    VALUES (now(), event_kind, event_action, entity, of_study,
            CASE WHEN event_action = 'removed' THEN changed ->> 'patient_id' END,
            CASE WHEN event_action = 'removed' THEN changed ->> 'issuer_of_patient_id' END,
            CASE WHEN event_action = 'removed' THEN changed ->> 'facility_id' END);
    RETURN NULL;
END
$$ LANGUAGE plpgsql
"""
)


def _sqlite_trigger(table: str, kind: str, id_column: str, study: str, op_: tuple[str, ...]) -> str:
    operation, row, action = op_
    if table == "study_reading":
        action = "changed"
    scoped = action == "removed" and table in ("study", "imaging_order")
    patient = (
        f"{row}.patient_id, {row}.issuer_of_patient_id, {row}.facility_id"
        if scoped
        else "NULL, NULL, NULL"
    )
    return (
        f"CREATE TRIGGER live_event_{table}_{operation.lower()} AFTER {operation} ON {table}"
        f" BEGIN INSERT INTO live_event ({_COLUMNS}) VALUES (datetime('now'), '{kind}',"
        f" '{action}', {row}.{id_column}, {study.format(row=row)}, {patient}); END"
    )


def upgrade() -> None:
    op.create_table(
        "live_event",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("recorded_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("entity_id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=True),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("issuer_of_patient_id", sa.String(length=64), nullable=True),
        sa.Column("facility_id", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_live_event_recorded_at", "live_event", ["recorded_at"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_RECORD_EVENT)
        for table, kind, id_column, _ in _SOURCES:
            op.execute(
                f"CREATE TRIGGER {table}_live_event AFTER INSERT OR UPDATE OR DELETE ON {table}"
                f" FOR EACH ROW EXECUTE FUNCTION sidecar_record_live_event('{kind}', '{id_column}')"
            )
        return
    for table, kind, id_column, study in _SOURCES:
        for operation in _OPERATIONS:
            op.execute(_sqlite_trigger(table, kind, id_column, study, operation))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table, *_ in _SOURCES:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_live_event ON {table}")
        op.execute("DROP FUNCTION IF EXISTS sidecar_record_live_event()")
    else:
        for table, *_ in _SOURCES:
            for operation, *_ in _OPERATIONS:
                op.execute(f"DROP TRIGGER IF EXISTS live_event_{table}_{operation.lower()}")
    op.drop_index("ix_live_event_recorded_at", table_name="live_event")
    op.drop_table("live_event")
