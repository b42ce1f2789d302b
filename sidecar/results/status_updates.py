"""Order status updates for the HIS (IHE Scheduled Workflow: the Order Filler tells the Order
Placer how far an order has come): an ORM^O01 with ORC-1 SC and ORC-5

- IP when the exam starts: the modality's MPPS IN PROGRESS, or the first images when no MPPS
  came (sidecar.mpps.service, sidecar.ingest.sync);
- CM when the final report is out, right after its ORU^R01 (sidecar.results.service);
- DC when the modality discontinued the exam and the order goes back to the worklist;
- CA when the order is cancelled here (an order the HIS cancels is not echoed back to it).

Each update is written to the same outbox as results (`hl7_message`, direction out, pending) in
the transaction that changes the order, so a status is queued exactly when its change commits;
`sidecar.results.outbox` delivers updates and results of one order one at a time, in the order
they were queued, retried while the HIS is down with the same MSH-10.
"""

from __future__ import annotations

from sqlmodel import Session

from hl7.ack import new_control_id
from hl7.order_status_message import (
    OrderStatusCode,
    OrderStatusMessage,
    build_order_status_message,
)
from sidecar.core.models import utcnow
from sidecar.orders.models import ImagingOrder
from sidecar.results.message_log import Hl7Message
from sidecar.results.routing import ResultRouting, enqueue, receiver_of

ORDER_STATUS_MESSAGE_TYPE = "ORM^O01"


def queue_status_update(
    session: Session,
    order: ImagingOrder,
    status: OrderStatusCode,
    routing: ResultRouting,
    *,
    actor: str,
) -> Hl7Message | None:
    """Adds the order's status update to the outbox (the caller commits it with the change);
    None when status updates are not sent (no HIS, or HIS_STATUS_UPDATES false)."""
    if not (routing.enabled and routing.send_status_updates):
        return None
    assert order.id is not None
    now = utcnow()
    receiving_application, receiving_facility = receiver_of(session, order, routing)
    message = OrderStatusMessage(
        control_id=new_control_id(),
        created_at=now.astimezone(routing.zone),
        sending_application=routing.sending_application,
        sending_facility=routing.sending_facility,
        receiving_application=receiving_application,
        receiving_facility=receiving_facility,
        status=status,
        patient_id=order.patient_id,
        issuer_of_patient_id=order.issuer_of_patient_id,
        patient_name=order.patient_name,
        patient_birth_date=order.patient_birth_date,
        patient_sex=order.patient_sex,
        placer_order_number=order.placer_order_number,
        filler_order_number=order.filler_order_number or order.accession_number,
        accession_number=order.accession_number,
        requested_procedure_id=order.requested_procedure_id,
        procedure_code=order.procedure_code,
        procedure_description=order.procedure_description or order.modality.value,
    )
    return enqueue(
        session,
        routing,
        (receiving_application, receiving_facility),
        message_type=ORDER_STATUS_MESSAGE_TYPE,
        control_id=message.control_id,
        raw=build_order_status_message(message),
        order_id=order.id,
        now=now,
        actor=actor,
        action="status_update.queued",
        order_status=status.value,
    )
