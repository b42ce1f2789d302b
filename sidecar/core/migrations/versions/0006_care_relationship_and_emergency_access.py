"""care relationship: the referring physician's provider id on orders, emergency access grants,
and notifications about an emergency access in the notification outbox

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import sidecar.core.models

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_NOTIFICATION = "critical_finding_notification"
_NOTIFICATION_GRANT_FK = "fk_critical_finding_notification_emergency_access"


def upgrade() -> None:
    op.create_table(
        "emergency_access",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("issuer_of_patient_id", sa.String(length=64), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("granted_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["study_id"], ["study.id"], name="fk_emergency_access_study_id_study"
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["app_user.id"], name="fk_emergency_access_user_id_app_user"
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("emergency_access") as batch:
        batch.create_index("ix_emergency_access_granted_at", ["granted_at"])
        batch.create_index("ix_emergency_access_study_id", ["study_id"])
        batch.create_index("ix_emergency_access_user_expires", ["user_id", "expires_at"])

    with op.batch_alter_table(_NOTIFICATION) as batch:
        batch.add_column(sa.Column("emergency_access_id", sa.Integer(), nullable=True))
        batch.alter_column("finding_id", existing_type=sa.Integer(), nullable=True)
        batch.create_index(
            "ix_critical_finding_notification_emergency_access_id", ["emergency_access_id"]
        )
        batch.create_foreign_key(
            _NOTIFICATION_GRANT_FK, "emergency_access", ["emergency_access_id"], ["id"]
        )

    with op.batch_alter_table("imaging_order") as batch:
        batch.add_column(sa.Column("referring_provider_id", sa.String(length=64), nullable=True))
        batch.create_index("ix_imaging_order_provider_id", ["provider_id"])
        batch.create_index("ix_imaging_order_referring_provider_id", ["referring_provider_id"])


def downgrade() -> None:
    with op.batch_alter_table("imaging_order") as batch:
        batch.drop_index("ix_imaging_order_referring_provider_id")
        batch.drop_index("ix_imaging_order_provider_id")
        batch.drop_column("referring_provider_id")
    # Notifications about emergency access have no finding: they go with the grants.
    op.execute(
        "DELETE FROM critical_finding_notification_attempt WHERE notification_id IN "
        "(SELECT id FROM critical_finding_notification WHERE finding_id IS NULL)"
    )
    op.execute("DELETE FROM critical_finding_notification WHERE finding_id IS NULL")
    with op.batch_alter_table(_NOTIFICATION) as batch:
        batch.drop_constraint(_NOTIFICATION_GRANT_FK, type_="foreignkey")
        batch.drop_index("ix_critical_finding_notification_emergency_access_id")
        batch.alter_column("finding_id", existing_type=sa.Integer(), nullable=False)
        batch.drop_column("emergency_access_id")
    op.drop_table("emergency_access")
