"""reading: who holds each study ready to read, assignment rules, radiologists' availability,
reading notifications in the notification outbox, report templates

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30 16:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import sidecar.core.models

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_NOTIFICATION = "critical_finding_notification"
_NOTIFICATION_STUDY_FK = "fk_critical_finding_notification_study"


def upgrade() -> None:
    op.create_table(
        "study_reading",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("ready_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("assigned_to_id", sa.Integer(), nullable=True),
        sa.Column("assigned_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("claimed_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("assigned_by", sa.String(length=64), nullable=True),
        sa.Column("overdue_level", sa.Integer(), nullable=False),
        sa.Column("overdue_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["assigned_to_id"], ["app_user.id"]),
        sa.ForeignKeyConstraint(["study_id"], ["study.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("study_reading") as batch:
        batch.create_index("ix_study_reading_study_id", ["study_id"], unique=True)
        batch.create_index("ix_study_reading_assigned_to_id", ["assigned_to_id"])
        batch.create_index("ix_study_reading_ready_at", ["ready_at"])
    op.create_table(
        "assignment_rule",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("modality", sa.String(length=16), nullable=True),
        sa.Column("body_part", sa.String(length=64), nullable=True),
        sa.Column("priority", sa.String(length=16), nullable=True),
        sa.Column("procedure_code", sa.String(length=64), nullable=True),
        sa.Column("pool", sa.JSON(), nullable=False),
        sa.Column("created_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "report_template",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("modality", sa.String(length=16), nullable=True),
        sa.Column("body_part", sa.String(length=64), nullable=True),
        sa.Column("procedure_code", sa.String(length=64), nullable=True),
        sa.Column("sections", sa.JSON(), nullable=False),
        sa.Column("created_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("app_user") as batch:
        batch.add_column(
            sa.Column("available", sa.Boolean(), nullable=False, server_default=sa.true())
        )
        batch.add_column(sa.Column("max_open", sa.Integer(), nullable=True))
    with op.batch_alter_table(_NOTIFICATION) as batch:
        batch.add_column(sa.Column("study_id", sa.Integer(), nullable=True))
        batch.create_index("ix_critical_finding_notification_study_id", ["study_id"])
        batch.create_foreign_key(_NOTIFICATION_STUDY_FK, "study", ["study_id"], ["id"])


def downgrade() -> None:
    # Reading notifications have neither a finding nor an emergency access: they go too.
    op.execute(
        "DELETE FROM critical_finding_notification_attempt WHERE notification_id IN "
        "(SELECT id FROM critical_finding_notification WHERE study_id IS NOT NULL "
        "AND finding_id IS NULL)"
    )
    op.execute(
        "DELETE FROM critical_finding_notification WHERE study_id IS NOT NULL "
        "AND finding_id IS NULL"
    )
    with op.batch_alter_table(_NOTIFICATION) as batch:
        batch.drop_constraint(_NOTIFICATION_STUDY_FK, type_="foreignkey")
        batch.drop_index("ix_critical_finding_notification_study_id")
        batch.drop_column("study_id")
    with op.batch_alter_table("app_user") as batch:
        batch.drop_column("max_open")
        batch.drop_column("available")
    op.drop_table("report_template")
    op.drop_table("assignment_rule")
    with op.batch_alter_table("study_reading") as batch:
        batch.drop_index("ix_study_reading_ready_at")
        batch.drop_index("ix_study_reading_assigned_to_id")
        batch.drop_index("ix_study_reading_study_id")
    op.drop_table("study_reading")
