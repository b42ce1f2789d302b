"""radiology reports, signed revisions, result outbox

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 03:00:31.102458
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import sidecar.core.models

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "radiology_report",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("order_id", sa.Integer(), nullable=True),
        sa.Column("radiologist_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("technique", sa.Text(), nullable=True),
        sa.Column("comparison", sa.Text(), nullable=True),
        sa.Column("findings", sa.Text(), nullable=True),
        sa.Column("impression", sa.Text(), nullable=True),
        sa.Column("recommendations", sa.Text(), nullable=True),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("signed_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("signed_by_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["order_id"],
            ["imaging_order.id"],
        ),
        sa.ForeignKeyConstraint(
            ["radiologist_id"],
            ["app_user.id"],
        ),
        sa.ForeignKeyConstraint(
            ["signed_by_id"],
            ["app_user.id"],
        ),
        sa.ForeignKeyConstraint(
            ["study_id"],
            ["study.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("radiology_report", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_radiology_report_order_id"), ["order_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_radiology_report_radiologist_id"), ["radiologist_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_radiology_report_status"), ["status"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_radiology_report_study_id"), ["study_id"], unique=False
        )

    op.create_table(
        "radiology_report_revision",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("report_id", sa.Integer(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("technique", sa.Text(), nullable=True),
        sa.Column("comparison", sa.Text(), nullable=True),
        sa.Column("findings", sa.Text(), nullable=True),
        sa.Column("impression", sa.Text(), nullable=True),
        sa.Column("recommendations", sa.Text(), nullable=True),
        sa.Column("signed_by_id", sa.Integer(), nullable=False),
        sa.Column("signed_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.String(length=1000), nullable=True),
        sa.ForeignKeyConstraint(
            ["report_id"],
            ["radiology_report.id"],
        ),
        sa.ForeignKeyConstraint(
            ["signed_by_id"],
            ["app_user.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("report_id", "revision"),
    )
    with op.batch_alter_table("radiology_report_revision", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_radiology_report_revision_report_id"), ["report_id"], unique=False
        )

    with op.batch_alter_table("app_user", schema=None) as batch_op:
        batch_op.add_column(sa.Column("provider_id", sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f("ix_app_user_provider_id"), ["provider_id"], unique=False)

    with op.batch_alter_table("hl7_message", schema=None) as batch_op:
        batch_op.add_column(sa.Column("report_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("result_status", sa.String(length=1), nullable=True))
        # Existing rows (inbound messages) have made no delivery attempt.
        batch_op.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(
            sa.Column(
                "next_attempt_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=True
            )
        )
        batch_op.create_index(batch_op.f("ix_hl7_message_report_id"), ["report_id"], unique=False)
        batch_op.create_foreign_key(
            "fk_hl7_message_report_id_radiology_report", "radiology_report", ["report_id"], ["id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("hl7_message", schema=None) as batch_op:
        batch_op.drop_constraint("fk_hl7_message_report_id_radiology_report", type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_hl7_message_report_id"))
        batch_op.drop_column("next_attempt_at")
        batch_op.drop_column("attempts")
        batch_op.drop_column("result_status")
        batch_op.drop_column("report_id")

    with op.batch_alter_table("app_user", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_app_user_provider_id"))
        batch_op.drop_column("provider_id")

    with op.batch_alter_table("radiology_report_revision", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_radiology_report_revision_report_id"))

    op.drop_table("radiology_report_revision")
    with op.batch_alter_table("radiology_report", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_radiology_report_study_id"))
        batch_op.drop_index(batch_op.f("ix_radiology_report_status"))
        batch_op.drop_index(batch_op.f("ix_radiology_report_radiologist_id"))
        batch_op.drop_index(batch_op.f("ix_radiology_report_order_id"))

    op.drop_table("radiology_report")
