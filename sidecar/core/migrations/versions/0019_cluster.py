"""cluster: nodes' heartbeats, the leases of background jobs, order changes notified to every
node (PostgreSQL), and the node whose Orthanc makes a de-identified copy

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-01 05:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import sidecar.core.models

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

# Every committed change to an order, told to every node listening (their worklists follow).
# NOTIFY is sent at commit, and only then; the same id twice in a transaction is sent once.
_NOTIFY_ORDER_CHANGE = """
CREATE OR REPLACE FUNCTION sidecar_notify_order_change() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('sidecar_order_changes', COALESCE(NEW.id, OLD.id)::text);
    RETURN NULL;
END
$$ LANGUAGE plpgsql
"""


def upgrade() -> None:
    op.create_table(
        "cluster_node",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("instance", sa.String(length=32), nullable=False),
        sa.Column("started_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column(
            "last_heartbeat_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=False
        ),
        sa.Column("secret_fingerprint", sa.String(length=16), nullable=False),
        sa.Column("stopped_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "cluster_lease",
        sa.Column("job", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=32), nullable=True),
        sa.Column("holder_node", sa.String(length=64), nullable=True),
        sa.Column("expires_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("term", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("job"),
    )
    op.add_column(
        "deidentified_copy", sa.Column("orthanc_node", sa.String(length=64), nullable=True)
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_NOTIFY_ORDER_CHANGE)
        op.execute(
            "CREATE TRIGGER imaging_order_notify_change"
            " AFTER INSERT OR UPDATE OR DELETE ON imaging_order"
            " FOR EACH ROW EXECUTE FUNCTION sidecar_notify_order_change()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS imaging_order_notify_change ON imaging_order")
        op.execute("DROP FUNCTION IF EXISTS sidecar_notify_order_change()")
    with op.batch_alter_table("deidentified_copy") as batch:
        batch.drop_column("orthanc_node")
    op.drop_table("cluster_lease")
    op.drop_table("cluster_node")
