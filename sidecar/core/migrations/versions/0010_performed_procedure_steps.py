"""performed procedure steps (MPPS); order status updates in the outbox (ORC-5); the instances a
study's modality announced

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30 16:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import sidecar.core.models

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "performed_procedure_step",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("order_id", sa.Integer(), nullable=True),
        sa.Column("order_match_issue", sa.String(length=200), nullable=True),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("accession_number", sa.String(length=16), nullable=True),
        sa.Column("requested_procedure_id", sa.String(length=16), nullable=True),
        sa.Column("scheduled_procedure_step_id", sa.String(length=16), nullable=True),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("issuer_of_patient_id", sa.String(length=64), nullable=True),
        sa.Column("performed_procedure_step_id", sa.String(length=16), nullable=True),
        sa.Column("performed_station_ae_title", sa.String(length=16), nullable=True),
        sa.Column("calling_ae_title", sa.String(length=16), nullable=False),
        sa.Column("modality", sa.String(length=16), nullable=True),
        sa.Column("procedure_description", sa.String(length=64), nullable=True),
        sa.Column("started_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("discontinuation_reason_code", sa.String(length=16), nullable=True),
        sa.Column("discontinuation_reason", sa.String(length=64), nullable=True),
        sa.Column("series_count", sa.Integer(), nullable=True),
        sa.Column("instance_count", sa.Integer(), nullable=True),
        sa.Column("created_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["order_id"], ["imaging_order.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("performed_procedure_step") as batch:
        batch.create_index(
            "ix_performed_procedure_step_sop_instance_uid", ["sop_instance_uid"], unique=True
        )
        batch.create_index("ix_performed_procedure_step_status", ["status"])
        batch.create_index("ix_performed_procedure_step_order_id", ["order_id"])
        batch.create_index("ix_performed_procedure_step_study_instance_uid", ["study_instance_uid"])
        batch.create_index("ix_performed_procedure_step_accession_number", ["accession_number"])
    with op.batch_alter_table("hl7_message") as batch:
        batch.add_column(sa.Column("order_status", sa.String(length=2), nullable=True))
    with op.batch_alter_table("study") as batch:
        batch.add_column(sa.Column("instances_announced", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("study") as batch:
        batch.drop_column("instances_announced")
    with op.batch_alter_table("hl7_message") as batch:
        batch.drop_column("order_status")
    with op.batch_alter_table("performed_procedure_step") as batch:
        batch.drop_index("ix_performed_procedure_step_accession_number")
        batch.drop_index("ix_performed_procedure_step_study_instance_uid")
        batch.drop_index("ix_performed_procedure_step_order_id")
        batch.drop_index("ix_performed_procedure_step_status")
        batch.drop_index("ix_performed_procedure_step_sop_instance_uid")
    op.drop_table("performed_procedure_step")
