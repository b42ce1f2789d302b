"""The reading worklist: studies ready to read, STAT first, then by due time (within a priority,
a study whose critical AI finding awaits review first).

One query: each study with its reading row, order, holder and preliminary report (outer joins)
and the count of the patient's prior studies (a correlated count on the indexed patient id).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, not_, or_
from sqlalchemy import select as sql_select
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select

from sidecar.accounts.models import User
from sidecar.core.models import split_multi
from sidecar.core.pagination import Pagination, page
from sidecar.orders.models import ImagingOrder, Modality, Priority
from sidecar.reading.models import Holder, Procedure, StudyReading, WorklistItem
from sidecar.reading.policy import (
    READY_TO_READ,
    ReadingPolicy,
    as_priority,
    priority_of,
    priority_rank,
    ready_time,
    review_first,
)
from sidecar.reports.models import RadiologyReport
from sidecar.studies.models import Study, StudyStatus
from sidecar.viewer.front import ViewerLinks

UNASSIGNED = "unassigned"
ORDER_MODALITIES = frozenset(m.value for m in Modality)


@dataclass(frozen=True)
class WorklistFilter:
    """`assigned_to`: a user id, or UNASSIGNED; None: everyone's."""

    assigned_to: int | str | None = None
    modality: str | None = None
    body_part: str | None = None
    priority: Priority | None = None
    overdue: bool | None = None


def worklist_filter(
    user: User,
    assigned_to: str | None,
    modality: str | None = None,
    body_part: str | None = None,
    priority: Priority | None = None,
    overdue: bool | None = None,
) -> WorklistFilter:
    """The filter of the API's query (and the worklist page's): `assigned_to` is "me" (the
    caller), UNASSIGNED, a user id as digits, or None (everyone's)."""
    who: int | str | None = assigned_to
    if assigned_to == "me":
        who = user.id
    elif assigned_to is not None and assigned_to != UNASSIGNED:
        who = int(assigned_to)
    return WorklistFilter(who, modality, body_part, priority, overdue)


def worklist(
    session: Session,
    policy: ReadingPolicy,
    wanted: WorklistFilter,
    scope: list[Any],
    pagination: Pagination,
    *,
    now: datetime,
    links: ViewerLinks | None = None,
) -> dict[str, Any]:
    conditions = [
        col(Study.status).in_(READY_TO_READ),
        # Images deleted in Orthanc (sidecar.ingest.deletions): nothing left to read.
        col(Study.images_deleted_at).is_(None),
        *scope,
        *_filters(policy, wanted, now),
    ]
    base = (
        select(Study.id)
        .outerjoin(StudyReading, col(StudyReading.study_id) == col(Study.id))
        .outerjoin(ImagingOrder, col(ImagingOrder.id) == col(Study.order_id))
        .where(*conditions)
    )
    total = session.exec(select(func.count()).select_from(base.subquery())).one()
    prior = aliased(Study)
    prior_count = (
        select(func.count())
        .where(
            col(prior.patient_id) == col(Study.patient_id),
            col(prior.issuer_of_patient_id).is_not_distinct_from(col(Study.issuer_of_patient_id)),
            col(prior.id) != col(Study.id),
            col(prior.status) != StudyStatus.CANCELLED,
            col(prior.created_at) < col(Study.created_at),
        )
        .correlate(Study)
        .scalar_subquery()
    )
    report = aliased(RadiologyReport)
    rows = session.execute(
        sql_select(Study, StudyReading, ImagingOrder, User, col(report.id), prior_count)
        .outerjoin(StudyReading, col(StudyReading.study_id) == col(Study.id))
        .outerjoin(ImagingOrder, col(ImagingOrder.id) == col(Study.order_id))
        .outerjoin(User, col(User.id) == col(StudyReading.assigned_to_id))
        .outerjoin(
            report, and_(col(report.study_id) == col(Study.id), col(report.deleted_at).is_(None))
        )
        .where(*conditions)
        .order_by(priority_rank(), *review_first(), ready_time(), col(Study.id))
        .offset(pagination.offset)
        .limit(pagination.limit)
    ).all()
    items = [
        _item(policy, now, study, reading, order, user, report_id, priors)
        for study, reading, order, user, report_id, priors in rows
    ]
    if links is not None:
        for item in items:
            item.viewer_url = links.study(item.study_instance_uid or "")
    return page(items, total, pagination)


def _filters(policy: ReadingPolicy, wanted: WorklistFilter, now: datetime) -> list[Any]:
    conditions: list[Any] = []
    if wanted.assigned_to == UNASSIGNED:
        conditions.append(col(StudyReading.assigned_to_id).is_(None))
    elif wanted.assigned_to is not None:
        conditions.append(col(StudyReading.assigned_to_id) == wanted.assigned_to)
    if wanted.modality is not None:
        m = wanted.modality
        like = m.replace("_", "\\_")  # a modality code is letters, digits and "_"
        conditions.append(
            or_(
                col(Study.modalities) == m,
                *(
                    col(Study.modalities).like(pattern, escape="\\")
                    for pattern in (f"{like},%", f"%,{like}", f"%,{like},%")
                ),
                *([col(ImagingOrder.modality) == m] if m in ORDER_MODALITIES else []),
            )
        )
    if wanted.body_part is not None:
        part = wanted.body_part.upper()
        conditions.append(
            or_(func.upper(Study.body_part) == part, func.upper(ImagingOrder.body_part) == part)
        )
    if wanted.priority is not None:
        conditions.append(priority_of() == wanted.priority.value)
    if wanted.overdue is not None:
        overdue = policy.overdue_condition(now)
        conditions.append(overdue if wanted.overdue else not_(func.coalesce(overdue, False)))
    return conditions


def _item(
    policy: ReadingPolicy,
    now: datetime,
    study: Study,
    reading: StudyReading | None,
    order: ImagingOrder | None,
    user: User | None,
    report_id: int | None,
    priors: int,
) -> WorklistItem:
    priority = as_priority(study.priority)
    ready = reading.ready_at if reading and reading.ready_at else study.images_received_at
    review_due_at = reading.review_due_at if reading else None
    due = policy.due(priority, ready, review_due_at)
    assert study.id is not None
    return WorklistItem(
        study_id=study.id,
        accession_number=study.accession_number,
        patient_name=study.patient_name,
        patient_id=study.patient_id,
        study_instance_uid=study.study_instance_uid,
        status=study.status.value,
        priority=priority,
        ready_at=ready,
        due_at=due,
        overdue=due is not None and due <= now,
        preliminary=study.status == StudyStatus.PRELIMINARY and report_id is not None,
        report_id=report_id,
        assigned_to=Holder(id=user.id, name=user.username) if user and user.id else None,
        assigned_at=reading.assigned_at if reading else None,
        claimed_at=reading.claimed_at if reading else None,
        modalities=split_multi(study.modalities),
        body_part=study.body_part or (order.body_part if order else None),
        procedure=Procedure(
            code=order.procedure_code if order else None,
            description=order.procedure_description if order else study.study_description,
        ),
        indication=study.clinical_indication or (order.clinical_indication if order else None),
        prior_studies=int(priors or 0),
        ai_review_due_at=review_due_at,
    )
