"""Performed procedure steps as the modalities reported them (MPPS), for the department: what is
under way, what was discontinued and why, and the unscheduled steps to reconcile."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from sqlmodel import Session, col, select

from sidecar.access.care_scope import CareScopeDep
from sidecar.accounts.dependencies import require_roles
from sidecar.accounts.models import Role, User
from sidecar.core.dependencies import SessionDep
from sidecar.core.errors import UnknownRecord
from sidecar.core.models import Page, SupportedTime
from sidecar.core.pagination import PaginationDep, RecordId, equal_to, paginate, record_id_query
from sidecar.mpps.models import PerformedProcedureStep, PerformedStepPublic, PerformedStepStatus
from sidecar.mpps.service import in_reach
from sidecar.studies.models import Study

router = APIRouter(prefix="/api/performed-procedure-steps", tags=["performed procedure steps"])

_R = Role
StepReader = Annotated[
    User, Depends(require_roles(_R.ADMIN, _R.TECHNOLOGIST, _R.RADIOLOGIST, _R.INTEGRATION))
]


@router.get("", response_model=Page[PerformedStepPublic])
def list_steps(
    session: SessionDep,
    _: StepReader,
    scope: CareScopeDep,
    pagination: PaginationDep,
    status: PerformedStepStatus | None = None,
    order_id: Annotated[int | None, record_id_query("orderId")] = None,
    accession_number: Annotated[str | None, Query(alias="accessionNumber", max_length=16)] = None,
    study_instance_uid: Annotated[
        str | None, Query(alias="studyInstanceUID", max_length=64)
    ] = None,
    station: Annotated[
        str | None,
        Query(max_length=16, description="the Performed Station AE Title"),
    ] = None,
    unscheduled: Annotated[
        bool | None,
        Query(description="true: steps linked to no order, to reconcile; false: linked ones"),
    ] = None,
    started_from: Annotated[SupportedTime | None, Query(alias="startedFrom")] = None,
    started_to: Annotated[SupportedTime | None, Query(alias="startedTo")] = None,
) -> dict[str, Any]:
    conditions = equal_to(
        (PerformedProcedureStep.status, status),
        (PerformedProcedureStep.order_id, order_id),
        (PerformedProcedureStep.accession_number, accession_number),
        (PerformedProcedureStep.study_instance_uid, study_instance_uid),
        (PerformedProcedureStep.performed_station_ae_title, station),
    )
    if unscheduled is not None:
        linked = col(PerformedProcedureStep.order_id)
        conditions.append(linked.is_(None) if unscheduled else linked.is_not(None))
    if started_from:
        conditions.append(col(PerformedProcedureStep.started_at) >= started_from)
    if started_to:
        conditions.append(col(PerformedProcedureStep.started_at) <= started_to)
    conditions.extend(in_reach(scope))
    found = paginate(
        session,
        PerformedProcedureStep,
        conditions,
        [col(PerformedProcedureStep.id).desc()],
        pagination,
    )
    found["items"] = public_steps(session, found["items"])
    return found


@router.get("/{step_id}", response_model=PerformedStepPublic)
def get_step(
    step_id: RecordId, session: SessionDep, _: StepReader, scope: CareScopeDep
) -> PerformedStepPublic:
    step = session.exec(
        select(PerformedProcedureStep).where(PerformedProcedureStep.id == step_id, *in_reach(scope))
    ).first()
    if step is None:
        raise UnknownRecord(f"performed procedure step {step_id} not found")
    return public_steps(session, [step])[0]


def public_steps(
    session: Session, steps: list[PerformedProcedureStep]
) -> list[PerformedStepPublic]:
    """Each step with the id of the study it performed, when that study is here."""
    uids = {step.study_instance_uid for step in steps}
    studies = (
        dict(
            session.exec(
                select(Study.study_instance_uid, Study.id).where(
                    col(Study.study_instance_uid).in_(uids)
                )
            ).all()
        )
        if uids
        else {}
    )
    return [
        PerformedStepPublic.model_validate(step).model_copy(
            update={
                "study_id": studies.get(step.study_instance_uid),
                "unscheduled": step.order_id is None,
            }
        )
        for step in steps
    ]
