"""The HL7 message log: every message in or out, raw, with what became of it.

Inbound orders are logged by the intake (sidecar.orders.intake) in the transaction that applies
them; outbound results are the outbox itself (sidecar.results.outbox sends the pending ones).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Text, UniqueConstraint
from sqlmodel import Column, Field, SQLModel

from sidecar.core.models import ApiModel, EnumText, UTCDateTime, utcnow


class Hl7Direction(StrEnum):
    INBOUND = "in"
    OUTBOUND = "out"


class Hl7MessageStatus(StrEnum):
    """What became of a message. Inbound: ACCEPTED (AA sent), REJECTED (AR), ERROR (AE).
    Outbound: PENDING (queued, or waiting to be retried), DELIVERED (the receiver answered AA),
    FAILED (AE/AR: an administrator may retry it)."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"
    ERROR = "error"
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class Hl7Message(SQLModel, table=True):
    """Every HL7 message in or out, raw, with what became of it."""

    __tablename__ = "hl7_message"
    __table_args__ = (UniqueConstraint("direction", "sender", "control_id"),)

    id: int | None = Field(default=None, primary_key=True)
    direction: Hl7Direction = Field(sa_column=Column(EnumText(Hl7Direction, 4), nullable=False))
    control_id: str = Field(max_length=199)
    message_type: str = Field(max_length=32, index=True)
    sender: str = Field(max_length=200)  # MSH-3^MSH-4 (sending application and facility)
    receiver: str | None = Field(default=None, max_length=200)
    status: Hl7MessageStatus = Field(
        sa_column=Column(EnumText(Hl7MessageStatus, 16), nullable=False, index=True)
    )
    ack_code: str | None = Field(default=None, max_length=2)
    error_text: str | None = Field(default=None, max_length=1000)
    # What the intake read differently from the message as sent (an order group without ORC).
    note: str | None = Field(default=None, max_length=1000)
    raw: str = Field(sa_column=Column(Text, nullable=False))
    ack_raw: str | None = Field(default=None, sa_column=Column(Text))
    order_id: int | None = Field(default=None, foreign_key="imaging_order.id", index=True)
    received_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False, index=True)
    )
    processed_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    # Outbound results (ORU^R01): the report and result status (OBR-25 P/F/C) they carry, and
    # the delivery attempts so far; the outbox sends when next_attempt_at has come.
    report_id: int | None = Field(default=None, foreign_key="radiology_report.id", index=True)
    result_status: str | None = Field(default=None, max_length=1)
    # Outbound order status updates (ORM^O01): the order status they carry (ORC-5 IP/CM/DC/CA).
    order_status: str | None = Field(default=None, max_length=2)
    attempts: int = 0
    next_attempt_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))


class Hl7MessageSummary(ApiModel):
    id: int
    direction: Hl7Direction
    control_id: str
    message_type: str
    sender: str
    receiver: str | None
    status: Hl7MessageStatus
    ack_code: str | None
    error_text: str | None
    note: str | None
    order_id: int | None
    received_at: datetime
    processed_at: datetime | None
    report_id: int | None
    result_status: str | None
    order_status: str | None
    attempts: int
    next_attempt_at: datetime | None


class Hl7MessageDetail(Hl7MessageSummary):
    raw: str
    ack_raw: str | None
