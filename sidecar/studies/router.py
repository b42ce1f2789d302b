"""Studies and their images (seed 001): listing and reading what Orthanc holds, correcting
clinical context, uploading files; one image's attributes: sidecar.studies.images_router."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, status
from pydantic import Field
from sqlalchemy import literal
from sqlmodel import col, select
from starlette.concurrency import run_in_threadpool

from sidecar.access.care_scope import CareScopeDep
from sidecar.accounts.dependencies import Clinician, Scheduler, StudyEditor
from sidecar.core import audit
from sidecar.core.api_errors import ErrorBody
from sidecar.core.dependencies import SessionDep, SettingsDep, provide, provide_optional
from sidecar.core.errors import ConflictingState, UnknownRecord
from sidecar.core.models import MAX_RECORD_ID, ApiInput, Page, join_multi, utcnow
from sidecar.core.pagination import (
    PaginationDep,
    RecordId,
    paginate,
    record_id_query,
)
from sidecar.ingest.orthanc_client import OrthancClient
from sidecar.ingest.sync import OrthancSync
from sidecar.orders.events import OrderEventsDep
from sidecar.orders.identifiers import new_accession_number, new_study_instance_uid
from sidecar.patients import service as patients
from sidecar.results.outbox import ResultOutboxDep
from sidecar.results.routing import ResultRoutingDep
from sidecar.studies import order_link, upload_body, uploads
from sidecar.studies import registry as study_registry
from sidecar.studies.lookup import (
    get_study_or_404,
    image_page,
    listed_studies,
    public_study,
    readable_study,
    study_detail,
)
from sidecar.studies.models import (
    Image,
    ImagePublic,
    Series,
    Study,
    StudyCreate,
    StudyDetail,
    StudyPublic,
    StudyStatus,
    StudyStatusUpdate,
    StudyUpdate,
)
from sidecar.studies.uploads import UploadResult
from sidecar.viewer.front import ViewerLinksDep

router = APIRouter(prefix="/api/studies", tags=["studies"])

# Who may mark key images, label them and keep a window preset: those who read them.


class LinkOrder(ApiInput):
    order_id: int = Field(ge=1, le=MAX_RECORD_ID)
    # An administrator's decision: the study (and its stored images) move to the order's patient.
    move_to_order_patient: bool = False


@router.get("", response_model=Page[StudyPublic])
def list_studies(
    links: ViewerLinksDep,
    session: SessionDep,
    _: Clinician,
    scope: CareScopeDep,
    pagination: PaginationDep,
    patient_id: Annotated[str | None, Query(alias="patientId", max_length=64)] = None,
    accession_number: Annotated[str | None, Query(alias="accessionNumber", max_length=16)] = None,
    modality: Annotated[str | None, Query(max_length=16, pattern=r"^[A-Z0-9_]{1,16}$")] = None,
    study_status: Annotated[StudyStatus | None, Query(alias="status")] = None,
    date_from: Annotated[date | None, Query(alias="studyDateFrom")] = None,
    date_to: Annotated[date | None, Query(alias="studyDateTo")] = None,
    matched: Annotated[
        bool | None, Query(description="true: linked to an imaging order; false: not linked")
    ] = None,
    patient_record_id: Annotated[int | None, record_id_query("patientRecordId")] = None,
) -> dict[str, Any]:
    conditions: list[Any] = [listed_studies(), *scope.studies()]
    if patient_record_id is not None:
        conditions.append(Study.patient_record_id == patient_record_id)
    if matched is not None:
        linked = col(Study.order_id)
        conditions.append(linked.is_not(None) if matched else linked.is_(None))
    if patient_id:
        conditions.append(Study.patient_id == patient_id)
    if accession_number:
        conditions.append(Study.accession_number == accession_number)
    if modality:
        # modalities is "CT,MR": wrap in commas so CT never matches CTA-like codes.
        wrapped = literal(",") + col(Study.modalities) + literal(",")
        # "_" is LIKE's one-character wildcard (and PET_CT has one): match it literally.
        literal_code = modality.replace("/", "//").replace("_", "/_").replace("%", "/%")
        conditions.append(wrapped.like(f"%,{literal_code},%", escape="/"))
    if study_status:
        conditions.append(Study.status == study_status)
    if date_from:
        conditions.append(col(Study.study_date) >= date_from)
    if date_to:
        conditions.append(col(Study.study_date) <= date_to)
    newest_first = [col(Study.study_date).desc().nulls_last(), col(Study.id).desc()]
    found = paginate(session, Study, conditions, newest_first, pagination)
    found["items"] = [public_study(links, study) for study in found["items"]]
    return found


@router.post("", response_model=StudyPublic, status_code=status.HTTP_201_CREATED)
def create_study(
    body: StudyCreate,
    session: SessionDep,
    user: Scheduler,
    links: ViewerLinksDep,
    settings: SettingsDep,
) -> StudyPublic:
    values = body.model_dump(exclude={"modalities"})
    uid = values.pop("study_instance_uid") or new_study_instance_uid()
    if session.exec(select(Study.id).where(Study.study_instance_uid == uid)).first():
        raise ConflictingState(f"a study with StudyInstanceUID {uid} already exists")
    study = Study(
        **values,
        study_instance_uid=uid,
        modalities=join_multi(body.modalities),
        status=StudyStatus.SCHEDULED,
    )
    study.accession_number = study.accession_number or new_accession_number(session)
    session.add(study)
    session.flush()
    patients.attach_study(
        session, study, default_issuer=settings.default_issuer or None, actor=user.username
    )
    audit.record(
        session,
        actor=user.username,
        action="study.created",
        entity_type="study",
        entity_id=study.id,
        status=study.status,
    )
    session.commit()
    session.refresh(study)
    return public_study(links, study)


@router.get("/accession/{accession_number}", response_model=StudyDetail)
def get_study_by_accession(
    accession_number: str,
    session: SessionDep,
    _: Clinician,
    scope: CareScopeDep,
    links: ViewerLinksDep,
) -> StudyDetail:
    matches = session.exec(
        select(Study)
        .where(Study.accession_number == accession_number, listed_studies(), *scope.studies())
        .limit(2)
    ).all()
    if not matches:
        raise UnknownRecord(f"no study with accession number {accession_number}")
    if len(matches) > 1:
        raise ConflictingState(
            f"several studies carry accession number {accession_number}; "
            "list them with GET /api/studies?accessionNumber=..."
        )
    return study_detail(session, matches[0], links)


@router.get("/{study_id}", response_model=StudyDetail)
def get_study(
    study_id: RecordId,
    session: SessionDep,
    _: Clinician,
    scope: CareScopeDep,
    links: ViewerLinksDep,
) -> StudyDetail:
    return study_detail(session, readable_study(session, study_id, scope), links)


@router.patch("/{study_id}", response_model=StudyPublic)
def update_study(
    study_id: RecordId,
    body: StudyUpdate,
    session: SessionDep,
    user: StudyEditor,
    links: ViewerLinksDep,
) -> StudyPublic:
    study = get_study_or_404(session, study_id)
    changes = body.model_dump(exclude_unset=True)
    if not changes:
        return public_study(links, study)
    for name, value in changes.items():
        setattr(study, name, value)
    study.updated_at = utcnow()
    session.add(study)
    audit.record(
        session,
        actor=user.username,
        action="study.updated",
        entity_type="study",
        entity_id=study.id,
        fields=sorted(changes),
    )
    session.commit()
    session.refresh(study)
    return public_study(links, study)


@router.patch("/{study_id}/status", response_model=StudyPublic)
def update_study_status(
    study_id: RecordId,
    body: StudyStatusUpdate,
    session: SessionDep,
    user: StudyEditor,
    links: ViewerLinksDep,
) -> StudyPublic:
    study = get_study_or_404(session, study_id)
    study_registry.change_status(session, study, body.status, actor=user.username)
    session.commit()
    session.refresh(study)
    return public_study(links, study)


@router.get("/{study_id}/images", response_model=Page[ImagePublic])
def list_study_images(
    study_id: RecordId,
    session: SessionDep,
    _: Clinician,
    scope: CareScopeDep,
    pagination: PaginationDep,
) -> dict[str, Any]:
    readable_study(session, study_id, scope)
    return image_page(session, pagination, Image.study_id == study_id)


@router.post(
    "/{study_id}/images",
    response_model=UploadResult,
    responses={
        400: {"model": ErrorBody},
        409: {"model": ErrorBody},
        413: {"model": ErrorBody},
        415: {"model": ErrorBody},
        503: {"model": ErrorBody},
    },
    openapi_extra={"requestBody": upload_body.REQUEST_BODY},
)
async def upload_images(
    study_id: RecordId,
    request: Request,
    session: SessionDep,
    user: StudyEditor,
    scope: CareScopeDep,
    settings: SettingsDep,
    orthanc: Annotated[OrthancClient, Depends(provide(OrthancClient))],
    sync: Annotated[OrthancSync | None, Depends(provide_optional(OrthancSync))],
    assign: Annotated[
        bool,
        Query(
            description="file a DICOM file of another Study Instance UID under this study when "
            "its accession number and patient id are the study's (its UID is rewritten)"
        ),
    ] = False,
) -> UploadResult:
    """Stores DICOM files (multipart field `files`, or one `application/dicom` body) in
    Orthanc, each only if it belongs to this study; answers each file's outcome. 200 when any
    file is stored (or was already), else the refusal the files share (422 when they differ)."""
    study = await run_in_threadpool(readable_study, session, study_id, scope)
    limit = settings.upload_max_mb * 1024 * 1024
    files = await upload_body.receive(request, limit)
    try:
        result = await run_in_threadpool(
            uploads.store_files,
            session,
            orthanc,
            study,
            files,
            assign=assign,
            limit_mb=settings.upload_max_mb,
            actor=user.username,
            now=utcnow(),
        )
    finally:
        for received in files:
            received.close()
    if (result.stored or result.already_stored) and sync is not None:
        sync.wake()
    refusal = uploads.refusal_of(result)
    if refusal is not None:
        raise refusal
    return result


@router.get("/{study_id}/series/{series_uid}/images", response_model=Page[ImagePublic])
def list_series_images(
    study_id: RecordId,
    series_uid: str,
    session: SessionDep,
    _: Clinician,
    scope: CareScopeDep,
    pagination: PaginationDep,
) -> dict[str, Any]:
    readable_study(session, study_id, scope)
    series = session.exec(
        select(Series).where(Series.study_id == study_id, Series.series_instance_uid == series_uid)
    ).first()
    if series is None:
        raise UnknownRecord(f"study {study_id} has no series {series_uid}")
    return image_page(session, pagination, Image.series_id == series.id)


@router.post("/{study_id}/link-order", response_model=StudyPublic)
def link_order(
    study_id: RecordId,
    body: LinkOrder,
    session: SessionDep,
    user: StudyEditor,
    scope: CareScopeDep,
    links: ViewerLinksDep,
    routing: ResultRoutingDep,
    outbox: ResultOutboxDep,
    events: OrderEventsDep,
) -> StudyPublic:
    """Links a study to an imaging order by hand. Images under another patient id: 409, unless
    an administrator moves the study to the order's patient (`moveToOrderPatient`)."""
    study = order_link.link_order(
        session,
        study_id,
        body.order_id,
        user,
        scope,
        move_to_order_patient=body.move_to_order_patient,
        routing=routing,
        outbox=outbox,
        events=events,
    )
    return public_study(links, study)
