"""image removals: the record of images withdrawn from studies (IHE IOCM rejection, with a DICOM
rejection reason), carried out in Orthanc at once or retried until done; and the flag on a
signed report whose images were removed after signing

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-01 02:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import sidecar.core.models

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "image_removal",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("series_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("reason_code", sa.String(length=16), nullable=False),
        sa.Column("reason_meaning", sa.String(length=64), nullable=False),
        sa.Column("instance_count", sa.Integer(), nullable=False),
        sa.Column("requested_by", sa.String(length=64), nullable=False),
        sa.Column("requested_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column(
            "next_attempt_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=False
        ),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("completed_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("report_id", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_image_removal_study_id", "image_removal", ["study_id"])
    op.create_index("ix_image_removal_state", "image_removal", ["state"])
    op.create_index("ix_image_removal_next_attempt_at", "image_removal", ["next_attempt_at"])
    op.create_table(
        "image_removal_instance",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("removal_id", sa.Integer(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=True),
        sa.Column("orthanc_id", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(["removal_id"], ["image_removal.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_image_removal_instance_removal_id", "image_removal_instance", ["removal_id"]
    )
    op.create_index(
        "ix_image_removal_instance_sop_instance_uid",
        "image_removal_instance",
        ["sop_instance_uid"],
    )
    with op.batch_alter_table("radiology_report") as batch:
        batch.add_column(
            sa.Column("amendment_required_reason", sa.String(length=200), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("radiology_report") as batch:
        batch.drop_column("amendment_required_reason")
    op.drop_index("ix_image_removal_instance_sop_instance_uid", table_name="image_removal_instance")
    op.drop_index("ix_image_removal_instance_removal_id", table_name="image_removal_instance")
    op.drop_table("image_removal_instance")
    op.drop_index("ix_image_removal_next_attempt_at", table_name="image_removal")
    op.drop_index("ix_image_removal_state", table_name="image_removal")
    op.drop_index("ix_image_removal_study_id", table_name="image_removal")
    op.drop_table("image_removal")
