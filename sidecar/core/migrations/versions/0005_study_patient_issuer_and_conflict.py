"""study: issuer of the patient id, and patient ids in conflict under one Study Instance UID

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("study") as batch:
        batch.add_column(sa.Column("issuer_of_patient_id", sa.String(length=64), nullable=True))
        batch.add_column(
            sa.Column("conflicting_patient_ids", sa.String(length=1000), nullable=True)
        )
    # A study linked to an order has that order's patient, issuer included.
    op.execute(
        "UPDATE study SET issuer_of_patient_id = (SELECT imaging_order.issuer_of_patient_id "
        "FROM imaging_order WHERE imaging_order.id = study.order_id) "
        "WHERE order_id IS NOT NULL"
    )


def downgrade() -> None:
    with op.batch_alter_table("study") as batch:
        batch.drop_column("conflicting_patient_ids")
        batch.drop_column("issuer_of_patient_id")
