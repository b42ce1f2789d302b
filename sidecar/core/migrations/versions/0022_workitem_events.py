"""live events of UPS work items: a row per created or changed work item (claimed, updated,
completed, canceled, released), written by triggers as migration 0020's are, so the event
stream (GET /api/events) tells analyzers and clinicians of work items in place of UPS-RS
subscriptions

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-02 10:00:00
"""

# ruff: noqa: S608

from __future__ import annotations

from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None

_COLUMNS = (
    "recorded_at, kind, action, entity_id, study_id, patient_id, issuer_of_patient_id, facility_id"
)
# SQLite: one trigger per operation. A work item is never deleted (its row is its history);
# were one, its event names it and its study, nothing more.
_OPERATIONS = (
    ("INSERT", "NEW", "created"),
    ("UPDATE", "NEW", "changed"),
    ("DELETE", "OLD", "removed"),
)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        # Migration 0020's function: the kind and the id column are its arguments, the study is
        # the row's study_id.
        op.execute(
            "CREATE TRIGGER workitem_live_event AFTER INSERT OR UPDATE OR DELETE ON workitem"
            " FOR EACH ROW EXECUTE FUNCTION sidecar_record_live_event('workitem', 'id')"
        )
        return
    for operation, row, action in _OPERATIONS:
        op.execute(
            f"CREATE TRIGGER live_event_workitem_{operation.lower()} AFTER {operation} ON workitem"
            f" BEGIN INSERT INTO live_event ({_COLUMNS}) VALUES (datetime('now'), 'workitem',"
            f" '{action}', {row}.id, {row}.study_id, NULL, NULL, NULL); END"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS workitem_live_event ON workitem")
        return
    for operation, _, _ in _OPERATIONS:
        op.execute(f"DROP TRIGGER IF EXISTS live_event_workitem_{operation.lower()}")
