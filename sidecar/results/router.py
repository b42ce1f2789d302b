"""The HL7 message log: every message in or out, for administrators and the integration role."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from sqlmodel import col

from sidecar.accounts.dependencies import Admin, require_roles
from sidecar.accounts.models import Role, User
from sidecar.core.dependencies import SessionDep, provide_optional
from sidecar.core.errors import ConflictingState, UnknownRecord
from sidecar.core.models import Page, SupportedTime, utcnow
from sidecar.core.pagination import PaginationDep, RecordId, equal_to, paginate, record_id_query
from sidecar.results import outbox as result_outbox
from sidecar.results.message_log import (
    Hl7Direction,
    Hl7Message,
    Hl7MessageDetail,
    Hl7MessageStatus,
    Hl7MessageSummary,
)
from sidecar.results.outbox import ResultOutbox

router = APIRouter(prefix="/api/hl7/messages", tags=["hl7"])
Hl7Reader = Annotated[User, Depends(require_roles(Role.ADMIN, Role.INTEGRATION))]


@router.get("", response_model=Page[Hl7MessageSummary])
def list_messages(
    session: SessionDep,
    _: Hl7Reader,
    pagination: PaginationDep,
    direction: Hl7Direction | None = None,
    status: Hl7MessageStatus | None = None,
    message_type: Annotated[str | None, Query(alias="messageType", max_length=32)] = None,
    control_id: Annotated[str | None, Query(alias="controlId", max_length=199)] = None,
    sender: Annotated[str | None, Query(max_length=200)] = None,
    order_id: Annotated[int | None, record_id_query("orderId")] = None,
    received_from: Annotated[SupportedTime | None, Query(alias="receivedFrom")] = None,
    received_to: Annotated[SupportedTime | None, Query(alias="receivedTo")] = None,
) -> dict[str, Any]:
    conditions = equal_to(
        (Hl7Message.direction, direction),
        (Hl7Message.status, status),
        (Hl7Message.message_type, message_type),
        (Hl7Message.control_id, control_id),
        (Hl7Message.sender, sender),
        (Hl7Message.order_id, order_id),
    )
    if received_from:
        conditions.append(col(Hl7Message.received_at) >= received_from)
    if received_to:
        conditions.append(col(Hl7Message.received_at) <= received_to)
    return paginate(session, Hl7Message, conditions, [col(Hl7Message.id).desc()], pagination)


@router.get("/{message_id}", response_model=Hl7MessageDetail)
def get_message(message_id: RecordId, session: SessionDep, _: Hl7Reader) -> Hl7Message:
    """One message with its raw text and the acknowledgement sent or received."""
    message = session.get(Hl7Message, message_id)
    if message is None:
        raise UnknownRecord(f"HL7 message {message_id} not found")
    return message


@router.post("/{message_id}/retry", response_model=Hl7MessageDetail)
def retry_message(
    message_id: RecordId,
    session: SessionDep,
    admin: Admin,
    outbox: Annotated[ResultOutbox | None, Depends(provide_optional(ResultOutbox))],
) -> Hl7Message:
    """Sends a failed outbound result again: the same message, with the same control id."""
    message = session.get(Hl7Message, message_id)
    if message is None:
        raise UnknownRecord(f"HL7 message {message_id} not found")
    if message.direction != Hl7Direction.OUTBOUND or message.status != Hl7MessageStatus.FAILED:
        raise ConflictingState(
            f"HL7 message {message_id} is {message.direction.value}bound and {message.status}: "
            "only a failed outbound message can be retried"
        )
    if outbox is None:
        raise ConflictingState("results are not sent: HIS_MLLP_HOST is not configured")
    result_outbox.retry(session, message, actor=admin.username, now=utcnow())
    session.commit()
    session.refresh(message)
    outbox.wake()
    return message
