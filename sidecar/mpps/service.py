"""What a performed procedure step does to the orders (IHE Scheduled Workflow, RAD-6 and RAD-7).

- Started (N-CREATE IN PROGRESS) for a known order: the order is IN_PROGRESS (it leaves the
  worklist) and the HIS is told IP. The order is found by the scheduled step the modality names:
  accession number, then Study Instance UID, then requested procedure id. A patient id that
  differs from the order's (or an issuer, when both name one) links nothing: the step is kept
  with the reason, as a study is (sidecar.orders.matching). No order: "unscheduled", listed for
  reconciliation.
- Completed: the performed series and instances are recorded; the study's images are compared
  with them once they are here (Study.instances_announced).
- Discontinued: recorded with its reason; the order goes back to the worklist (and the HIS is
  told DC) unless images arrived or another step of it is under way or done.

Every change commits with its audit record before the modality hears success; listeners (the
worklist) and the outbox are told after the commit by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, func, select

from hl7.order_status_message import OrderStatusCode
from sidecar.core import audit
from sidecar.core.models import utcnow
from sidecar.core.workflow import move
from sidecar.mpps.attributes import (
    DUPLICATE_SOP_INSTANCE,
    NO_SUCH_SOP_INSTANCE,
    PROCESSING_FAILURE,
    StepEnd,
    StepRefused,
    StepStart,
    check_final,
)
from sidecar.mpps.models import (
    PERFORMED_STEP_WORKFLOW,
    PerformedProcedureStep,
    PerformedStepStatus,
)
from sidecar.orders import service as orders
from sidecar.orders.matching import PATIENT_MISMATCH, PatientMatch, patient_match
from sidecar.orders.models import EXAM_DISCONTINUED, ImagingOrder, OrderStatus
from sidecar.results.routing import ResultRouting
from sidecar.results.status_updates import queue_status_update
from sidecar.studies.models import Study

if TYPE_CHECKING:  # the care scope is the caller's; imported for its type only
    from sidecar.access.care_scope import CareScope

MPPS_ACTOR = "system:mpps"
NO_ORDER = "no order with this accession number, Study Instance UID or requested procedure id"
#: PS3.4 F.7.2.2.2: a step in a final state is not changed again.
FINAL_STATES = frozenset({PerformedStepStatus.COMPLETED, PerformedStepStatus.DISCONTINUED})


@dataclass
class StepOutcome:
    """What changed, for the caller to announce once it has committed."""

    step: PerformedProcedureStep
    orders_changed: list[int] = field(default_factory=list)
    status_queued: bool = False

    def changed(
        self,
        session: Session,
        order: ImagingOrder,
        status: OrderStatusCode,
        routing: ResultRouting,
    ) -> None:
        """The step moved this order: listeners hear of it, and the HIS of its new status."""
        assert order.id is not None
        self.orders_changed.append(order.id)
        queued = queue_status_update(session, order, status, routing, actor=MPPS_ACTOR)
        self.status_queued = self.status_queued or queued is not None


def start_step(
    session: Session,
    sop_instance_uid: str,
    start: StepStart,
    *,
    calling_ae_title: str,
    routing: ResultRouting,
) -> StepOutcome:
    """Records a new step (N-CREATE); the caller commits. Raises StepRefused for a UID in use
    (the unique key says so, whether the step was created before or by a racing association:
    a modality's retry)."""
    scheduled = start.scheduled
    now = utcnow()
    step = PerformedProcedureStep(
        sop_instance_uid=sop_instance_uid,
        status=PerformedStepStatus.IN_PROGRESS,
        study_instance_uid=scheduled.study_instance_uid,
        accession_number=scheduled.accession_number,
        requested_procedure_id=scheduled.requested_procedure_id,
        scheduled_procedure_step_id=scheduled.scheduled_procedure_step_id,
        patient_id=start.patient_id,
        issuer_of_patient_id=start.issuer_of_patient_id,
        performed_procedure_step_id=start.performed_procedure_step_id,
        performed_station_ae_title=start.performed_station_ae_title,
        calling_ae_title=calling_ae_title,
        modality=start.modality,
        procedure_description=start.description,
        started_at=start.started_at,
        series_count=start.end.series_count,
        instance_count=start.end.instance_count,
        created_at=now,
        updated_at=now,
    )
    outcome = StepOutcome(step)
    order = find_order(session, step)
    if order is None:
        step.order_match_issue = NO_ORDER
    elif patient_match(session, step.patient_id, step.issuer_of_patient_id, order) is (
        PatientMatch.OTHER
    ):
        step.order_match_issue = PATIENT_MISMATCH
    elif OrderStatus(order.status) in (OrderStatus.COMPLETED, OrderStatus.CANCELLED):
        # An exam performed on an order that is over: someone must look at it.
        step.order_match_issue = f"the order is {OrderStatus(order.status).value}"
    else:
        step.order_id = order.id
    session.add(step)
    try:
        session.flush()
    except IntegrityError:
        raise StepRefused(DUPLICATE_SOP_INSTANCE, "this MPPS SOP Instance UID exists") from None
    audit.record(
        session,
        actor=MPPS_ACTOR,
        action="performed_step.started",
        entity_type="performed_procedure_step",
        entity_id=step.id,
        order_id=step.order_id,
        calling_ae_title=calling_ae_title,
        unscheduled=step.order_id is None,
    )
    if step.order_id is not None and order is not None:
        _order_started(session, order, routing, outcome)
    return outcome


def end_step(
    session: Session, sop_instance_uid: str, end: StepEnd, *, routing: ResultRouting
) -> StepOutcome:
    """Applies an N-SET; the caller commits. Raises StepRefused for an unknown step or one in a
    final state."""
    step = session.exec(
        select(PerformedProcedureStep).where(
            PerformedProcedureStep.sop_instance_uid == sop_instance_uid
        )
    ).first()
    if step is None:
        raise StepRefused(NO_SUCH_SOP_INSTANCE, "no such performed procedure step")
    if step.status in FINAL_STATES:
        raise StepRefused(
            PROCESSING_FAILURE, "Performed Procedure Step Object may no longer be updated"
        )
    outcome = StepOutcome(step)
    if end.ended_at is not None:
        step.ended_at = end.ended_at
    if end.series_count is not None:
        step.series_count, step.instance_count = end.series_count, end.instance_count
    if end.description is not None:
        step.procedure_description = end.description
    if end.discontinuation_reason_code or end.discontinuation_reason:
        step.discontinuation_reason_code = end.discontinuation_reason_code
        step.discontinuation_reason = end.discontinuation_reason
    step.updated_at = utcnow()
    target = end.status
    if target is None or target is PerformedStepStatus.IN_PROGRESS:
        session.add(step)
        audit.record(
            session,
            actor=MPPS_ACTOR,
            action="performed_step.updated",
            entity_type="performed_procedure_step",
            entity_id=step.id,
            order_id=step.order_id,
        )
        return outcome
    check_final(target, step.ended_at, step.series_count, end)
    move(session, step, PERFORMED_STEP_WORKFLOW, target, actor=MPPS_ACTOR, audited=False)
    session.add(step)
    audit.record(
        session,
        actor=MPPS_ACTOR,
        action=f"performed_step.{target.value.lower()}",
        entity_type="performed_procedure_step",
        entity_id=step.id,
        order_id=step.order_id,
        series_count=step.series_count,
        instance_count=step.instance_count,
        reason_code=step.discontinuation_reason_code,
    )
    session.flush()
    if target is PerformedStepStatus.COMPLETED:
        study = session.exec(
            select(Study).where(Study.study_instance_uid == step.study_instance_uid)
        ).first()
        if study is not None:  # else its registration reads the count (sidecar.ingest.sync)
            announce_to_study(session, study)
    elif step.order_id is not None:
        order = session.get(ImagingOrder, step.order_id)
        assert order is not None
        _order_discontinued(session, order, step, routing, outcome)
    return outcome


def find_order(session: Session, step: PerformedProcedureStep) -> ImagingOrder | None:
    """The order a step performs: by accession number, Study Instance UID, requested procedure
    id (the first that names exactly one order)."""
    for column, value in (
        (ImagingOrder.accession_number, step.accession_number),
        (ImagingOrder.study_instance_uid, step.study_instance_uid),
        (ImagingOrder.requested_procedure_id, step.requested_procedure_id),
    ):
        if not value:
            continue
        found = session.exec(select(ImagingOrder).where(column == value).limit(2)).all()
        if len(found) == 1:
            return found[0]
    return None


def announce_to_study(session: Session, study: Study) -> None:
    """Writes on the study how many instances its completed steps announced."""
    announced = instances_announced(session, study.study_instance_uid)
    if announced is not None and study.instances_announced != announced:
        study.instances_announced = announced
        session.add(study)


def instances_announced(session: Session, study_instance_uid: str) -> int | None:
    """The instances the study's completed steps referenced; None when none completed."""
    total = session.exec(
        select(func.sum(PerformedProcedureStep.instance_count)).where(
            PerformedProcedureStep.study_instance_uid == study_instance_uid,
            PerformedProcedureStep.status == PerformedStepStatus.COMPLETED,
        )
    ).one()
    return int(total) if total is not None else None


def _order_started(
    session: Session, order: ImagingOrder, routing: ResultRouting, outcome: StepOutcome
) -> None:
    """The exam began: the order leaves the worklist and the HIS hears IP (once: an order
    already under way, or done, stays as it is)."""
    if not orders.start(session, order, actor=MPPS_ACTOR):
        return
    outcome.changed(session, order, OrderStatusCode.IN_PROCESS, routing)


def _order_discontinued(
    session: Session,
    order: ImagingOrder,
    step: PerformedProcedureStep,
    routing: ResultRouting,
    outcome: StepOutcome,
) -> None:
    """The modality stopped the exam: back to the worklist, unless something was acquired."""
    if OrderStatus(order.status) != OrderStatus.IN_PROGRESS or _acquired(session, order, step):
        return
    # Scheduled again if it has a time; else it waits for one, as a new order without does.
    target = orders.initial_status(order)
    move(session, order, EXAM_DISCONTINUED, target, actor=MPPS_ACTOR)
    outcome.changed(session, order, OrderStatusCode.DISCONTINUED, routing)


def _acquired(session: Session, order: ImagingOrder, step: PerformedProcedureStep) -> bool:
    """Whether the order has images (here, or referenced by the discontinued step: they may
    still be on their way), or another step of it under way or completed."""
    if step.instance_count:
        return True
    images = session.exec(
        select(Study.id).where(Study.order_id == order.id, col(Study.instance_count) > 0)
    ).first()
    if images is not None:
        return True
    other = session.exec(
        select(PerformedProcedureStep.id).where(
            PerformedProcedureStep.order_id == order.id,
            PerformedProcedureStep.id != step.id,
            col(PerformedProcedureStep.status).in_(
                (PerformedStepStatus.IN_PROGRESS, PerformedStepStatus.COMPLETED)
            ),
        )
    ).first()
    return other is not None


def in_reach(scope: CareScope) -> list[Any]:
    """A caller limited to facilities sees the steps of the orders in reach (an unscheduled step
    belongs to no facility yet: an unlimited user reconciles it)."""
    if not scope.limited:
        return []
    return [
        col(PerformedProcedureStep.order_id).in_(select(ImagingOrder.id).where(*scope.orders()))
    ]
