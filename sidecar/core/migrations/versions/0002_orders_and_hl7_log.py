"""imaging orders, HL7 message log, study order link

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 00:58:57.603999
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import sidecar.core.models

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("app_user", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "credentials_changed_at",
                sidecar.core.models.UTCDateTime(timezone=True),
                nullable=True,
            )
        )
    op.create_table(
        "imaging_order",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("accession_number", sa.String(length=16), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("requested_procedure_id", sa.String(length=16), nullable=True),
        sa.Column("placer_order_number", sa.String(length=64), nullable=True),
        sa.Column("filler_order_number", sa.String(length=64), nullable=True),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("issuer_of_patient_id", sa.String(length=64), nullable=True),
        sa.Column("patient_name", sa.String(length=324), nullable=True),
        sa.Column("patient_birth_date", sa.Date(), nullable=True),
        sa.Column("patient_sex", sa.String(length=16), nullable=True),
        sa.Column("referring_physician", sa.String(length=324), nullable=True),
        sa.Column("ordering_provider", sa.String(length=324), nullable=True),
        sa.Column("provider_id", sa.String(length=64), nullable=True),
        sa.Column("facility_id", sa.String(length=64), nullable=True),
        sa.Column("procedure_code", sa.String(length=64), nullable=True),
        sa.Column("procedure_description", sa.String(length=64), nullable=True),
        sa.Column("modality", sa.String(length=16), nullable=False),
        sa.Column("body_part", sa.String(length=64), nullable=True),
        sa.Column("clinical_indication", sa.Text(), nullable=True),
        sa.Column("priority", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("scheduled_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("scheduled_station_aet", sa.String(length=16), nullable=True),
        sa.Column("source", sa.String(length=8), nullable=False),
        sa.Column("created_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("imaging_order", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_imaging_order_accession_number"), ["accession_number"], unique=True
        )
        batch_op.create_index(
            batch_op.f("ix_imaging_order_filler_order_number"),
            ["filler_order_number"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_imaging_order_patient_id"), ["patient_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_imaging_order_placer_order_number"),
            ["placer_order_number"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_imaging_order_scheduled_at"), ["scheduled_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_imaging_order_status"), ["status"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_imaging_order_study_instance_uid"), ["study_instance_uid"], unique=True
        )

    op.create_table(
        "hl7_message",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("direction", sa.String(length=4), nullable=False),
        sa.Column("control_id", sa.String(length=199), nullable=False),
        sa.Column("message_type", sa.String(length=32), nullable=False),
        sa.Column("sender", sa.String(length=200), nullable=False),
        sa.Column("receiver", sa.String(length=200), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("ack_code", sa.String(length=2), nullable=True),
        sa.Column("error_text", sa.String(length=1000), nullable=True),
        sa.Column("raw", sa.Text(), nullable=False),
        sa.Column("ack_raw", sa.Text(), nullable=True),
        sa.Column("order_id", sa.Integer(), nullable=True),
        sa.Column("received_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("processed_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["order_id"],
            ["imaging_order.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("direction", "sender", "control_id"),
    )
    with op.batch_alter_table("hl7_message", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_hl7_message_message_type"), ["message_type"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_hl7_message_order_id"), ["order_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_hl7_message_received_at"), ["received_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_hl7_message_status"), ["status"], unique=False)

    with op.batch_alter_table("study", schema=None) as batch_op:
        # Modality lists from DICOM can be longer than the 128 characters first allowed.
        batch_op.alter_column(
            "modalities",
            existing_type=sa.String(length=128),
            type_=sa.String(length=1024),
            existing_nullable=False,
        )
        batch_op.add_column(sa.Column("order_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("priority", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("clinical_indication", sa.String(length=4000), nullable=True))
        batch_op.add_column(sa.Column("order_match_issue", sa.String(length=200), nullable=True))
        batch_op.create_index(batch_op.f("ix_study_order_id"), ["order_id"], unique=False)
        batch_op.create_foreign_key(
            "fk_study_order_id_imaging_order", "imaging_order", ["order_id"], ["id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("app_user", schema=None) as batch_op:
        batch_op.drop_column("credentials_changed_at")
    with op.batch_alter_table("study", schema=None) as batch_op:
        batch_op.alter_column(
            "modalities",
            existing_type=sa.String(length=1024),
            type_=sa.String(length=128),
            existing_nullable=False,
        )
        batch_op.drop_constraint("fk_study_order_id_imaging_order", type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_study_order_id"))
        batch_op.drop_column("order_match_issue")
        batch_op.drop_column("clinical_indication")
        batch_op.drop_column("priority")
        batch_op.drop_column("order_id")

    with op.batch_alter_table("hl7_message", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_hl7_message_status"))
        batch_op.drop_index(batch_op.f("ix_hl7_message_received_at"))
        batch_op.drop_index(batch_op.f("ix_hl7_message_order_id"))
        batch_op.drop_index(batch_op.f("ix_hl7_message_message_type"))

    op.drop_table("hl7_message")
    with op.batch_alter_table("imaging_order", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_imaging_order_study_instance_uid"))
        batch_op.drop_index(batch_op.f("ix_imaging_order_status"))
        batch_op.drop_index(batch_op.f("ix_imaging_order_scheduled_at"))
        batch_op.drop_index(batch_op.f("ix_imaging_order_placer_order_number"))
        batch_op.drop_index(batch_op.f("ix_imaging_order_patient_id"))
        batch_op.drop_index(batch_op.f("ix_imaging_order_filler_order_number"))
        batch_op.drop_index(batch_op.f("ix_imaging_order_accession_number"))

    op.drop_table("imaging_order")
