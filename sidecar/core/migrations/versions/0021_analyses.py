"""AI analyses: the analyses of studies, one task per analyzer, the findings and their review, the
UPS work items of external analyzers, and the review deadline a critical AI finding sets on a
study's reading

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-01 18:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import sidecar.core.models

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "analysis",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("priority", sa.String(length=8), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("requested_by", sa.String(length=64), nullable=False),
        sa.Column("created_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("started_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["study_id"],
            ["study.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("analysis", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_analysis_status"), ["status"], unique=False)
        batch_op.create_index(batch_op.f("ix_analysis_study_id"), ["study_id"], unique=False)

    op.create_table(
        "analysis_task",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("analysis_id", sa.Integer(), nullable=False),
        sa.Column("analyzer", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("held_until", sidecar.core.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("report_sop_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("reason", sa.String(length=512), nullable=True),
        sa.Column("started_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["analysis_id"],
            ["analysis.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("analysis_task", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_analysis_task_analysis_id"), ["analysis_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_analysis_task_status"), ["status"], unique=False)

    op.create_table(
        "analysis_finding",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("analysis_id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=64), nullable=False),
        sa.Column("finding", sa.String(length=256), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("recommendation", sa.String(length=256), nullable=False),
        sa.Column("series_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("sop_class_uid", sa.String(length=64), nullable=True),
        sa.Column("frame", sa.Integer(), nullable=True),
        sa.Column("x", sa.Float(), nullable=True),
        sa.Column("y", sa.Float(), nullable=True),
        sa.Column("width", sa.Float(), nullable=True),
        sa.Column("height", sa.Float(), nullable=True),
        sa.Column("decision", sa.String(length=16), nullable=True),
        sa.Column("reviewed_by_id", sa.Integer(), nullable=True),
        sa.Column("reviewed_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("review_note", sa.Text(), nullable=True),
        sa.Column("created_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["analysis_id"],
            ["analysis.id"],
        ),
        sa.ForeignKeyConstraint(
            ["reviewed_by_id"],
            ["app_user.id"],
        ),
        sa.ForeignKeyConstraint(
            ["study_id"],
            ["study.id"],
        ),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["analysis_task.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("analysis_finding", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_analysis_finding_analysis_id"), ["analysis_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_analysis_finding_study_id"), ["study_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_analysis_finding_task_id"), ["task_id"], unique=False)

    op.create_table(
        "workitem",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("transaction_uid", sa.String(length=64), nullable=True),
        sa.Column("performer_id", sa.Integer(), nullable=True),
        sa.Column("claimed_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column(
            "performer_seen_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=True
        ),
        sa.Column("dataset", sa.JSON(), nullable=False),
        sa.Column("created_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["performer_id"],
            ["app_user.id"],
        ),
        sa.ForeignKeyConstraint(
            ["study_id"],
            ["study.id"],
        ),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["analysis_task.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("workitem", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_workitem_performer_id"), ["performer_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_workitem_sop_instance_uid"), ["sop_instance_uid"], unique=True
        )
        batch_op.create_index(batch_op.f("ix_workitem_state"), ["state"], unique=False)
        batch_op.create_index(batch_op.f("ix_workitem_study_id"), ["study_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_workitem_task_id"), ["task_id"], unique=True)

    with op.batch_alter_table("study_reading", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "review_due_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=True
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("study_reading", schema=None) as batch_op:
        batch_op.drop_column("review_due_at")

    with op.batch_alter_table("workitem", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_workitem_task_id"))
        batch_op.drop_index(batch_op.f("ix_workitem_study_id"))
        batch_op.drop_index(batch_op.f("ix_workitem_state"))
        batch_op.drop_index(batch_op.f("ix_workitem_sop_instance_uid"))
        batch_op.drop_index(batch_op.f("ix_workitem_performer_id"))

    op.drop_table("workitem")
    with op.batch_alter_table("analysis_finding", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_analysis_finding_task_id"))
        batch_op.drop_index(batch_op.f("ix_analysis_finding_study_id"))
        batch_op.drop_index(batch_op.f("ix_analysis_finding_analysis_id"))

    op.drop_table("analysis_finding")
    with op.batch_alter_table("analysis_task", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_analysis_task_status"))
        batch_op.drop_index(batch_op.f("ix_analysis_task_analysis_id"))

    op.drop_table("analysis_task")
    with op.batch_alter_table("analysis", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_analysis_study_id"))
        batch_op.drop_index(batch_op.f("ix_analysis_status"))

    op.drop_table("analysis")
