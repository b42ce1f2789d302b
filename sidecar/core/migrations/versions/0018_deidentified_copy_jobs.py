"""de-identified copies made by an Orthanc job: the job's id while the copy is being made (so
that a copy abandoned midway is deleted once Orthanc's job is over), and why a copy failed

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-01 03:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deidentified_copy") as batch:
        batch.add_column(sa.Column("orthanc_job_id", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("failure_reason", sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deidentified_copy") as batch:
        batch.drop_column("failure_reason")
        batch.drop_column("orthanc_job_id")
