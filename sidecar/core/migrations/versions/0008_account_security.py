"""account security: login throttling, refresh tokens, forced password change, TOTP

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 13:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import sidecar.core.models

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("app_user") as batch:
        batch.add_column(
            sa.Column(
                "must_change_password", sa.Boolean(), nullable=False, server_default=sa.false()
            )
        )
        batch.add_column(sa.Column("totp_secret", sa.String(length=255), nullable=True))
        batch.add_column(
            sa.Column("totp_enabled", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("totp_last_step", sa.Integer(), nullable=True))
        batch.add_column(
            sa.Column(
                "lockout_cleared_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=True
            )
        )
    op.create_table(
        "login_attempt",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account_key", sa.String(length=64), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=False),
        sa.Column("succeeded", sa.Boolean(), nullable=False),
        sa.Column("attempted_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_login_attempt_account_key_at", "login_attempt", ["account_key", "attempted_at"]
    )
    op.create_index("ix_login_attempt_address_at", "login_attempt", ["address", "attempted_at"])
    op.create_index("ix_login_attempt_attempted_at", "login_attempt", ["attempted_at"])
    op.create_table(
        "refresh_token",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("family_id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("issued_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("replaced_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["app_user.id"], name="fk_refresh_token_user_id_app_user"
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_refresh_token_token_hash", "refresh_token", ["token_hash"], unique=True)
    op.create_index("ix_refresh_token_family_id", "refresh_token", ["family_id"])
    op.create_index("ix_refresh_token_user_id", "refresh_token", ["user_id"])


def downgrade() -> None:
    op.drop_table("refresh_token")
    op.drop_table("login_attempt")
    with op.batch_alter_table("app_user") as batch:
        batch.drop_column("lockout_cleared_at")
        batch.drop_column("totp_last_step")
        batch.drop_column("totp_enabled")
        batch.drop_column("totp_secret")
        batch.drop_column("must_change_password")
