"""patient registry: a patient per identifier and assigning authority; orders and studies refer
to theirs. Every distinct (patient id, issuer) of the orders and studies becomes a patient, with
the demographics of its most recently changed order (else study); a study linked to an order
belongs to the order's patient.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30 16:00:00
"""

# The statements are built from this file's constants only, never from data.
# ruff: noqa: S608
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import sidecar.core.models

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_ORDER_FK = "fk_imaging_order_patient_record_id_patient"
_STUDY_FK = "fk_study_patient_record_id_patient"

# The key of a row's patient: its identifier, and its issuer with none read as "".
_SAME_PATIENT = "{row}.patient_id = patient.patient_id AND COALESCE({row}.issuer_of_patient_id, '')"
_SAME_PATIENT += " = patient.issuer_of_patient_id"


def upgrade() -> None:
    op.create_table(
        "patient",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("issuer_of_patient_id", sa.String(length=64), nullable=False),
        sa.Column("patient_name", sa.String(length=324), nullable=True),
        sa.Column("patient_birth_date", sa.Date(), nullable=True),
        sa.Column("patient_sex", sa.String(length=16), nullable=True),
        sa.Column("other_identifiers", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("merged_into_id", sa.Integer(), nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("created_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sidecar.core.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["merged_into_id"], ["patient.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "patient_id", "issuer_of_patient_id", name="uq_patient_identifier_issuer"
        ),
    )
    with op.batch_alter_table("patient") as batch:
        batch.create_index("ix_patient_status", ["status"])
        batch.create_index("ix_patient_merged_into_id", ["merged_into_id"])
    for table, constraint in (("imaging_order", _ORDER_FK), ("study", _STUDY_FK)):
        _add_patient_reference(table, constraint)
    with op.batch_alter_table("study") as batch:
        batch.add_column(sa.Column("patient_identity_issue", sa.String(length=200), nullable=True))
    _register_known_patients()


def _add_patient_reference(table: str, constraint: str) -> None:
    """The column referring to the patient. SQLite adds it with its REFERENCES clause in place:
    a batch would copy the table and drop the original, which the rows of other tables that
    refer to it (studies to orders, reports to studies) forbid while foreign keys are on."""
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            f"ALTER TABLE {table} ADD COLUMN patient_record_id INTEGER REFERENCES patient (id)"
        )
    else:
        op.add_column(table, sa.Column("patient_record_id", sa.Integer(), nullable=True))
        op.create_foreign_key(constraint, table, "patient", ["patient_record_id"], ["id"])
    op.create_index(f"ix_{table}_patient_record_id", table, ["patient_record_id"])


def _register_known_patients() -> None:
    # SQLite would read CAST(... AS JSON) as a number: the JSON text goes as it is there.
    no_identifiers = "CAST('[]' AS JSON)" if op.get_bind().dialect.name == "postgresql" else "'[]'"
    op.execute(
        "INSERT INTO patient (patient_id, issuer_of_patient_id, other_identifiers, status, "
        "source, created_at, updated_at) "
        f"SELECT patient_id, issuer, {no_identifiers}, 'ACTIVE', 'migration', CURRENT_TIMESTAMP, "
        "CURRENT_TIMESTAMP FROM ("
        "SELECT patient_id, COALESCE(issuer_of_patient_id, '') AS issuer FROM imaging_order "
        "UNION SELECT patient_id, COALESCE(issuer_of_patient_id, '') FROM study "
        "WHERE patient_id IS NOT NULL AND order_id IS NULL) AS known"
    )
    for column in ("patient_name", "patient_birth_date", "patient_sex"):
        latest = (
            "SELECT {row}.{column} FROM {table} {row} WHERE {same} "
            "ORDER BY {row}.updated_at DESC, {row}.id DESC LIMIT 1"
        )
        from_order = latest.format(
            row="o", column=column, table="imaging_order", same=_SAME_PATIENT.format(row="o")
        )
        from_study = latest.format(
            row="s", column=column, table="study", same=_SAME_PATIENT.format(row="s")
        )
        op.execute(f"UPDATE patient SET {column} = COALESCE(({from_order}), ({from_study}))")
    op.execute(
        "UPDATE imaging_order SET patient_record_id = (SELECT patient.id FROM patient WHERE "
        + _SAME_PATIENT.format(row="imaging_order")
        + ")"
    )
    op.execute(
        "UPDATE study SET patient_record_id = (SELECT o.patient_record_id FROM imaging_order o "
        "WHERE o.id = study.order_id) WHERE order_id IS NOT NULL"
    )
    op.execute(
        "UPDATE study SET patient_record_id = (SELECT patient.id FROM patient WHERE "
        + _SAME_PATIENT.format(row="study")
        + ") WHERE order_id IS NULL AND patient_id IS NOT NULL"
    )


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    for table, constraint in (("study", _STUDY_FK), ("imaging_order", _ORDER_FK)):
        op.drop_index(f"ix_{table}_patient_record_id", table)
        if not sqlite:  # SQLite drops the column's inline REFERENCES with the column
            op.drop_constraint(constraint, table, type_="foreignkey")
        if sqlite:
            op.execute(f"ALTER TABLE {table} DROP COLUMN patient_record_id")
        else:
            op.drop_column(table, "patient_record_id")
    if sqlite:
        op.execute("ALTER TABLE study DROP COLUMN patient_identity_issue")
    else:
        op.drop_column("study", "patient_identity_issue")
    with op.batch_alter_table("patient") as batch:
        batch.drop_index("ix_patient_merged_into_id")
        batch.drop_index("ix_patient_status")
    op.drop_table("patient")
