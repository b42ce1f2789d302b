"""image updates: the durable queue of studies whose stored images must carry their patient's
identifier and demographics after a merge, a correction or a move (IHE PIR)

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30 19:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import sidecar.core.models

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "image_update",
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("cause", sa.String(length=16), nullable=False),
        sa.Column("queued_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column(
            "next_attempt_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=False
        ),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("instances_updated", sa.Integer(), nullable=False),
        sa.Column("completed_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["study_id"], ["study.id"]),
        sa.PrimaryKeyConstraint("study_id"),
    )
    op.create_index("ix_image_update_status", "image_update", ["status"])
    op.create_index("ix_image_update_next_attempt_at", "image_update", ["next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_image_update_next_attempt_at", table_name="image_update")
    op.drop_index("ix_image_update_status", table_name="image_update")
    op.drop_table("image_update")
