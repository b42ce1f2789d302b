"""Results for the hospital: a signed report becomes an ORU^R01 in the outbox.

`queue_result` writes the message, complete and final, into `hl7_message` (direction out, status
pending) inside the caller's transaction: the signature and its result commit together or not
at all, and `sidecar.results.outbox` delivers what is pending. The message text is fixed when it
is queued, so a retry sends the same bytes with the same MSH-10 and a receiver that deduplicates
on the control id (as HL7 expects) files it once.
"""

from __future__ import annotations

from sqlmodel import Session

from hl7.ack import new_control_id
from hl7.order_status_message import OrderStatusCode
from hl7.result_message import (
    SECTION_CODES,
    ResultMessage,
    ResultStatus,
    Section,
    build_result_message,
)
from sidecar.accounts.models import User
from sidecar.core import audit
from sidecar.core.models import utcnow
from sidecar.orders import service as orders
from sidecar.orders.models import ORDER_WORKFLOW, ImagingOrder, OrderStatus
from sidecar.reports.models import SECTIONS, RadiologyReport, ReportStatus
from sidecar.reports.service import active_report
from sidecar.results.message_log import Hl7Message
from sidecar.results.routing import ResultRouting, enqueue, receiver_of
from sidecar.results.status_updates import queue_status_update
from sidecar.studies.models import Study

RESULT_MESSAGE_TYPE = "ORU^R01"


def result_status(report_status: ReportStatus) -> ResultStatus:
    """OBR-25: a signed report is F; every amendment or correction after it is C."""
    if report_status == ReportStatus.PRELIMINARY:
        return ResultStatus.PRELIMINARY
    if report_status == ReportStatus.FINAL:
        return ResultStatus.FINAL
    return ResultStatus.CORRECTED


def queue_result(
    session: Session, report: RadiologyReport, routing: ResultRouting, *, actor: str
) -> Hl7Message | None:
    """Adds the report's result to the outbox; None when there is nothing to send it to (no HIS
    configured, a preliminary result not wanted, or a study with no order to answer)."""
    status = result_status(ReportStatus(report.status))
    order = session.get(ImagingOrder, report.order_id) if report.order_id else None
    if not routing.enabled:
        if status is ResultStatus.FINAL and order is not None:
            complete_order(session, order, actor=actor)  # nobody to deliver the result to
        return None
    if status is ResultStatus.PRELIMINARY and not routing.send_preliminary:
        return None
    if order is None:
        audit.record(
            session,
            actor=actor,
            action="result.not_sent",
            entity_type="report",
            entity_id=report.id,
            reason="the study is not linked to an order",
        )
        return None
    study = session.get(Study, report.study_id)
    interpreter = session.get(User, report.signed_by_id or report.radiologist_id)
    assert study is not None and interpreter is not None
    now = utcnow()
    receiving_application, receiving_facility = receiver_of(session, order, routing)
    message = ResultMessage(
        control_id=new_control_id(),
        created_at=now.astimezone(routing.zone),
        sending_application=routing.sending_application,
        sending_facility=routing.sending_facility,
        receiving_application=receiving_application,
        receiving_facility=receiving_facility,
        status=status,
        patient_id=order.patient_id,
        issuer_of_patient_id=order.issuer_of_patient_id,
        patient_name=order.patient_name or study.patient_name,
        patient_birth_date=order.patient_birth_date or study.patient_birth_date,
        patient_sex=order.patient_sex or study.patient_sex,
        placer_order_number=order.placer_order_number,
        filler_order_number=order.filler_order_number or order.accession_number,
        accession_number=order.accession_number,
        requested_procedure_id=order.requested_procedure_id,
        procedure_code=order.procedure_code,
        procedure_description=order.procedure_description or order.modality.value,
        ordering_provider=order.ordering_provider,
        provider_id=order.provider_id,
        observed_at=(study.images_received_at or study.created_at).astimezone(routing.zone),
        reported_at=(report.signed_at or report.updated_at).astimezone(routing.zone),
        interpreter_id=str(interpreter.id),
        interpreter_name=interpreter.username,
        study_instance_uid=study.study_instance_uid,
        sections=[
            Section(*SECTION_CODES[name], text)
            for name in SECTIONS
            if (text := (getattr(report, name) or "").strip())
        ],
        findings_flagged=[
            finding
            for source in routing.finding_sources
            for finding in source(session, report.id or 0)
        ],
        embedded_pdf=routing.pdf_source(session, report) if routing.pdf_source else None,
    )
    row = enqueue(
        session,
        routing,
        (receiving_application, receiving_facility),
        message_type=RESULT_MESSAGE_TYPE,
        control_id=message.control_id,
        raw=build_result_message(message),
        order_id=order.id,
        now=now,
        actor=actor,
        action="result.queued",
        report_id=report.id,
        result_status=status.value,
    )
    if status is ResultStatus.FINAL:
        # The exam is done: the HIS hears it right after the final result (in that order).
        queue_status_update(session, order, OrderStatusCode.COMPLETED, routing, actor=actor)
    return row


def report_joins_order(
    session: Session, study_id: int, order: ImagingOrder, routing: ResultRouting, *, actor: str
) -> bool:
    """A study reported before its order was known has just been linked to one (by hand or by
    matching): its report joins the order, and a signed result now has somewhere to go. True
    when a result was queued (the outbox is to be woken once the caller commits)."""
    report = active_report(session, study_id)
    if report is None or report.order_id is not None:
        return False
    report.order_id = order.id
    session.add(report)
    if report.status == ReportStatus.PRELIMINARY:
        return False
    return queue_result(session, report, routing, actor=actor) is not None


def complete_order(session: Session, order: ImagingOrder, *, actor: str) -> bool:
    """The order's final result is delivered: the order is done (when its workflow allows)."""
    if not ORDER_WORKFLOW.can(OrderStatus(order.status), OrderStatus.COMPLETED):
        return False
    orders.change_status(session, order, OrderStatus.COMPLETED, actor=actor)
    return True
