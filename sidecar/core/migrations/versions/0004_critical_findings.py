"""critical findings

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 03:14:55.861154
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import sidecar.core.models

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "critical_finding",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("order_id", sa.Integer(), nullable=True),
        sa.Column("report_id", sa.Integer(), nullable=True),
        sa.Column("raised_by_id", sa.Integer(), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("recommendation", sa.Text(), nullable=True),
        sa.Column("created_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("acknowledge_by", sidecar.core.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("escalation_level", sa.Integer(), nullable=False),
        sa.Column(
            "next_escalation_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=True
        ),
        sa.Column("acknowledged_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("acknowledged_by_id", sa.Integer(), nullable=True),
        sa.Column("acknowledged_by_name", sa.String(length=128), nullable=True),
        sa.Column("acknowledgement_method", sa.String(length=16), nullable=True),
        sa.Column("read_back_confirmed", sa.Boolean(), nullable=True),
        sa.Column("read_back_text", sa.Text(), nullable=True),
        sa.Column("acknowledgement_notes", sa.Text(), nullable=True),
        sa.Column("resolved_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("follow_up_notes", sa.Text(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["acknowledged_by_id"],
            ["app_user.id"],
            name="fk_critical_finding_acknowledged_by_id_app_user",
        ),
        sa.ForeignKeyConstraint(
            ["order_id"], ["imaging_order.id"], name="fk_critical_finding_order_id_imaging_order"
        ),
        sa.ForeignKeyConstraint(
            ["raised_by_id"], ["app_user.id"], name="fk_critical_finding_raised_by_id_app_user"
        ),
        sa.ForeignKeyConstraint(
            ["report_id"],
            ["radiology_report.id"],
            name="fk_critical_finding_report_id_radiology_report",
        ),
        sa.ForeignKeyConstraint(
            ["study_id"], ["study.id"], name="fk_critical_finding_study_id_study"
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("critical_finding", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_critical_finding_created_at"), ["created_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_critical_finding_next_escalation_at"),
            ["next_escalation_at"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_critical_finding_order_id"), ["order_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_critical_finding_raised_by_id"), ["raised_by_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_critical_finding_report_id"), ["report_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_critical_finding_severity"), ["severity"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_critical_finding_status"), ["status"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_critical_finding_study_id"), ["study_id"], unique=False
        )

    op.create_table(
        "critical_finding_notification",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("finding_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("escalation_level", sa.Integer(), nullable=False),
        sa.Column("recipient", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.ForeignKeyConstraint(
            ["finding_id"],
            ["critical_finding.id"],
            name="fk_critical_finding_notification_finding_id_critical_finding",
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("critical_finding_notification", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_critical_finding_notification_finding_id"), ["finding_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_critical_finding_notification_next_attempt_at"),
            ["next_attempt_at"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_critical_finding_notification_recipient"), ["recipient"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_critical_finding_notification_status"), ["status"], unique=False
        )

    op.create_table(
        "critical_finding_notification_attempt",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("notification_id", sa.Integer(), nullable=False),
        sa.Column("attempted_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("error", sa.String(length=500), nullable=True),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["notification_id"],
            ["critical_finding_notification.id"],
            name="fk_critical_finding_attempt_notification_id",
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("critical_finding_notification_attempt", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_critical_finding_notification_attempt_notification_id"),
            ["notification_id"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("critical_finding_notification_attempt", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_critical_finding_notification_attempt_notification_id"))

    op.drop_table("critical_finding_notification_attempt")
    with op.batch_alter_table("critical_finding_notification", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_critical_finding_notification_status"))
        batch_op.drop_index(batch_op.f("ix_critical_finding_notification_recipient"))
        batch_op.drop_index(batch_op.f("ix_critical_finding_notification_next_attempt_at"))
        batch_op.drop_index(batch_op.f("ix_critical_finding_notification_finding_id"))

    op.drop_table("critical_finding_notification")
    with op.batch_alter_table("critical_finding", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_critical_finding_study_id"))
        batch_op.drop_index(batch_op.f("ix_critical_finding_status"))
        batch_op.drop_index(batch_op.f("ix_critical_finding_severity"))
        batch_op.drop_index(batch_op.f("ix_critical_finding_report_id"))
        batch_op.drop_index(batch_op.f("ix_critical_finding_raised_by_id"))
        batch_op.drop_index(batch_op.f("ix_critical_finding_order_id"))
        batch_op.drop_index(batch_op.f("ix_critical_finding_next_escalation_at"))
        batch_op.drop_index(batch_op.f("ix_critical_finding_created_at"))

    op.drop_table("critical_finding")
