"""procedure catalog: an entry per procedure code; orders keep the coding system, protocol and
station name they take from it; the message log notes what it read differently

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 15:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import sidecar.core.models

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "catalog_procedure",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(length=16), nullable=False),
        sa.Column("coding_system", sa.String(length=16), nullable=True),
        sa.Column("description", sa.String(length=64), nullable=True),
        sa.Column("modality", sa.String(length=16), nullable=False),
        sa.Column("body_part", sa.String(length=64), nullable=True),
        sa.Column("station_ae_title", sa.String(length=16), nullable=True),
        sa.Column("station_name", sa.String(length=16), nullable=True),
        sa.Column("protocol_code", sa.String(length=16), nullable=True),
        sa.Column("expected_minutes", sa.Integer(), nullable=True),
        sa.Column("priority", sa.String(length=16), nullable=True),
        sa.Column("created_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("catalog_procedure") as batch:
        batch.create_index("ix_catalog_procedure_code", ["code"], unique=True)
        batch.create_index("ix_catalog_procedure_station_ae_title", ["station_ae_title"])
    with op.batch_alter_table("imaging_order") as batch:
        batch.add_column(sa.Column("procedure_coding_system", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("protocol_code", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("scheduled_station_name", sa.String(length=16), nullable=True))
    with op.batch_alter_table("hl7_message") as batch:
        batch.add_column(sa.Column("note", sa.String(length=1000), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("hl7_message") as batch:
        batch.drop_column("note")
    with op.batch_alter_table("imaging_order") as batch:
        batch.drop_column("scheduled_station_name")
        batch.drop_column("protocol_code")
        batch.drop_column("procedure_coding_system")
    with op.batch_alter_table("catalog_procedure") as batch:
        batch.drop_index("ix_catalog_procedure_station_ae_title")
        batch.drop_index("ix_catalog_procedure_code")
    op.drop_table("catalog_procedure")
