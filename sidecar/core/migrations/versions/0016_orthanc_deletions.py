"""orthanc deletions: a study whose images were deleted in Orthanc is marked (and, when no
report, critical finding or order keeps it, removed from view), and the durable queue of studies
to check against Orthanc after a deletion notice or a reconciliation

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-01 02:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import sidecar.core.models

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Added in place, not through a batch: a batch copies the table (and on SQLite would turn
    # the inline REFERENCES of patient_record_id into a constraint 0011's downgrade cannot drop).
    for column in ("images_deleted_at", "removed_at"):
        op.add_column(
            "study",
            sa.Column(column, sidecar.core.models.UTCDateTime(timezone=True), nullable=True),
        )
        op.create_index(f"ix_study_{column}", "study", [column])
    # Orthanc's deletion notices name series and instances by Orthanc id.
    op.create_index("ix_series_orthanc_id", "series", ["orthanc_id"])
    op.create_index("ix_image_orthanc_id", "image", ["orthanc_id"])
    op.create_table(
        "orthanc_deletion_check",
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("cause", sa.String(length=16), nullable=False),
        sa.Column("queued_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column(
            "next_attempt_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=False
        ),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.ForeignKeyConstraint(["study_id"], ["study.id"]),
        sa.PrimaryKeyConstraint("study_id"),
    )
    op.create_index(
        "ix_orthanc_deletion_check_next_attempt_at", "orthanc_deletion_check", ["next_attempt_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_orthanc_deletion_check_next_attempt_at", table_name="orthanc_deletion_check")
    op.drop_table("orthanc_deletion_check")
    op.drop_index("ix_image_orthanc_id", table_name="image")
    op.drop_index("ix_series_orthanc_id", table_name="series")
    sqlite = op.get_bind().dialect.name == "sqlite"
    for column in ("removed_at", "images_deleted_at"):
        op.drop_index(f"ix_study_{column}", table_name="study")
        if sqlite:
            op.execute(f"ALTER TABLE study DROP COLUMN {column}")
        else:
            op.drop_column("study", column)
