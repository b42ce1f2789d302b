"""Withdrawing images (IHE IOCM rejection): `DELETE /api/images/{id}` and
`DELETE /api/studies/{id}/series/{seriesUID}` with a `reason`, and the record of a study's
removals for administrators. The rules (who, which reason, signed reports) and how a removal
is carried out: sidecar.studies.rejection.

200: Orthanc has removed the images, the rows and counts follow. 202: Orthanc could not be
reached or failed; the removal is recorded and the removal worker carries it out (the answer's
`state` and `lastError` say so; GET .../removals follows it).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Response, status
from sqlmodel import Session, col, func, select

from sidecar.access.care_scope import CareScopeDep
from sidecar.accounts.dependencies import Admin, StudyEditor
from sidecar.accounts.models import User
from sidecar.core.api_errors import ErrorBody
from sidecar.core.dependencies import ClockDep, SessionDep, SettingsDep, provide
from sidecar.core.errors import UnknownRecord
from sidecar.core.models import Page
from sidecar.core.pagination import PaginationDep, RecordId, page
from sidecar.ingest.orthanc_client import OrthancClient
from sidecar.studies import rejection
from sidecar.studies.lookup import readable_image, readable_study
from sidecar.studies.models import Study
from sidecar.studies.removal_models import (
    ImageRemoval,
    ImageRemovalInstance,
    RejectionReason,
    RemovalPublic,
    RemovalState,
    RemovedInstance,
)
from sidecar.studies.removal_worker import ImageRemover, ImageRemoverDep

router = APIRouter(tags=["images"])

OrthancDep = Annotated[OrthancClient, Depends(provide(OrthancClient))]
ReasonQuery = Annotated[
    RejectionReason,
    Query(
        description="why the images are withdrawn (DICOM rejection reasons): QUALITY (113001), "
        "PATIENT_SAFETY (113037), WRONG_WORKLIST_ENTRY (113038), RETENTION (113039)"
    ),
]
SeriesUid = Annotated[str, Path(min_length=1, max_length=64)]
_ANSWERS: dict[int | str, dict[str, Any]] = {
    202: {"model": RemovalPublic, "description": "recorded; Orthanc will be asked again"},
    409: {"model": ErrorBody},
}


@router.delete("/api/images/{image_id}", response_model=RemovalPublic, responses=_ANSWERS)
def reject_image(
    image_id: RecordId,
    reason: ReasonQuery,
    session: SessionDep,
    user: StudyEditor,
    scope: CareScopeDep,
    orthanc: OrthancDep,
    settings: SettingsDep,
    clock: ClockDep,
    worker: ImageRemoverDep,
    response: Response,
) -> RemovalPublic:
    """Withdraws one image from its study and from Orthanc, for `reason`."""
    rejection.check_role(user, reason)
    target = rejection.image_target(session, readable_image(session, image_id, scope))
    return _remove(
        session,
        target,
        reason,
        user,
        orthanc,
        settings.result_retry_max_delay,
        clock(),
        worker,
        response,
    )


@router.delete(
    "/api/studies/{study_id}/series/{series_uid}",
    response_model=RemovalPublic,
    responses=_ANSWERS,
)
def reject_series(
    study_id: RecordId,
    series_uid: SeriesUid,
    reason: ReasonQuery,
    session: SessionDep,
    user: StudyEditor,
    scope: CareScopeDep,
    orthanc: OrthancDep,
    settings: SettingsDep,
    clock: ClockDep,
    worker: ImageRemoverDep,
    response: Response,
) -> RemovalPublic:
    """Withdraws every image of one series of the study, from Orthanc too, for `reason`."""
    rejection.check_role(user, reason)
    study = readable_study(session, study_id, scope)
    target = rejection.series_target(session, study, series_uid)
    return _remove(
        session,
        target,
        reason,
        user,
        orthanc,
        settings.result_retry_max_delay,
        clock(),
        worker,
        response,
    )


@router.get("/api/studies/{study_id}/removals", response_model=Page[RemovalPublic])
def list_removals(
    study_id: RecordId,
    session: SessionDep,
    _: Admin,
    scope: CareScopeDep,
    pagination: PaginationDep,
) -> dict[str, Any]:
    """The study's image removals, newest first: what, why, by whom, and whether done; still
    once the study left the lists because Orthanc holds none of its images any more (its last
    images withdrawn, sidecar.ingest.deletions): that is when the record matters most."""
    if scope.limited:
        readable_study(session, study_id, scope)
    elif session.get(Study, study_id) is None:
        raise UnknownRecord(f"study {study_id} not found")
    condition = ImageRemoval.study_id == study_id
    total = session.exec(select(func.count()).select_from(ImageRemoval).where(condition)).one()
    rows = session.exec(
        select(ImageRemoval)
        .where(condition)
        .order_by(col(ImageRemoval.id).desc())
        .offset(pagination.offset)
        .limit(pagination.limit)
    ).all()
    return page([public(session, row) for row in rows], total, pagination)


def _remove(
    session: Session,
    target: rejection.Target,
    reason: RejectionReason,
    user: User,
    orthanc: OrthancClient,
    max_delay: float,
    now: datetime,
    worker: ImageRemover | None,
    response: Response,
) -> RemovalPublic:
    removal = rejection.request_removal(session, target, reason, user, now=now)
    session.commit()
    assert removal.id is not None
    removal_id = removal.id
    done = rejection.carry_out(
        session, orthanc, removal_id, actor=user.username, max_delay=max_delay, now=now
    )
    if not done:
        response.status_code = status.HTTP_202_ACCEPTED
        if worker is not None:
            worker.wake()
    stored = session.get(ImageRemoval, removal_id)
    assert stored is not None
    return public(session, stored)


def public(session: Session, removal: ImageRemoval) -> RemovalPublic:
    instances = session.exec(
        select(ImageRemovalInstance)
        .where(ImageRemovalInstance.removal_id == removal.id)
        .order_by(col(ImageRemovalInstance.id))
    ).all()
    return RemovalPublic.model_validate(
        {
            **removal.model_dump(),
            "state": RemovalState(removal.state),
            "instances": [RemovedInstance.model_validate(i) for i in instances],
        }
    )
