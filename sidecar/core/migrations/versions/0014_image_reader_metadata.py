"""image reader metadata: a key-image flag, a label and a display window preset that readers
keep about an image (PATCH /api/images/{id}/metadata), apart from the DICOM file's own window

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-30 20:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("image") as batch:
        batch.add_column(
            sa.Column("key_image", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("label", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("preset_window_center", sa.Float(), nullable=True))
        batch.add_column(sa.Column("preset_window_width", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("image") as batch:
        batch.drop_column("preset_window_width")
        batch.drop_column("preset_window_center")
        batch.drop_column("label")
        batch.drop_column("key_image")
