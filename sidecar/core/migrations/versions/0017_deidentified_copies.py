"""de-identified copies: each copy of a study made under the PS3.15 Basic Application Level
Confidentiality Profile (POST /api/studies/{id}/deidentify), with its purpose and who made it;
the registration of stable studies passes over their Study Instance UIDs

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-01 02:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import sidecar.core.models

revision = "0017"
# Written beside 0015 and 0016 (other branches of issue 15): re-chained when merged.
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deidentified_copy",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source_study_id", sa.Integer(), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("orthanc_id", sa.String(length=64), nullable=True),
        sa.Column("pseudonym", sa.String(length=64), nullable=False),
        sa.Column("purpose", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("created_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("instance_count", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_deidentified_copy_source_study_id", "deidentified_copy", ["source_study_id"]
    )
    op.create_index(
        "ix_deidentified_copy_study_instance_uid",
        "deidentified_copy",
        ["study_instance_uid"],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index("ix_deidentified_copy_study_instance_uid", table_name="deidentified_copy")
    op.drop_index("ix_deidentified_copy_source_study_id", table_name="deidentified_copy")
    op.drop_table("deidentified_copy")
