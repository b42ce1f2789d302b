"""facilities: the facility a study was done at, and the facilities a user is limited to

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 14:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("study") as batch:
        batch.add_column(sa.Column("facility_id", sa.String(length=64), nullable=True))
        batch.create_index("ix_study_facility_id", ["facility_id"])
    # A linked study takes its order's facility, as linking sets it from now on.
    op.execute(
        "UPDATE study SET facility_id = (SELECT imaging_order.facility_id FROM imaging_order"
        " WHERE imaging_order.id = study.order_id) WHERE study.order_id IS NOT NULL"
    )
    with op.batch_alter_table("imaging_order") as batch:
        batch.create_index("ix_imaging_order_facility_id", ["facility_id"])
    # Every existing account reads every facility, as before.
    with op.batch_alter_table("app_user") as batch:
        batch.add_column(
            sa.Column("facilities", sa.JSON(), nullable=False, server_default=sa.text("'[]'"))
        )
    with op.batch_alter_table("app_user") as batch:
        batch.alter_column("facilities", existing_type=sa.JSON(), server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("app_user") as batch:
        batch.drop_column("facilities")
    with op.batch_alter_table("imaging_order") as batch:
        batch.drop_index("ix_imaging_order_facility_id")
    with op.batch_alter_table("study") as batch:
        batch.drop_index("ix_study_facility_id")
        batch.drop_column("facility_id")
