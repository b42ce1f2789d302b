"""De-identified copies through the API: making one (`POST /api/studies/{id}/deidentify`),
a new link to one (`GET /api/deidentified/{id}/url`) and the link's ZIP archive
(`GET /api/deidentified/{id}/archive`, without a token: its signature is its credential).

Administrators and radiologists, for a study they may read (404 otherwise, as for a study that
does not exist). Every copy, link and download is audited; the purpose is required.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response, status
from fastapi.responses import StreamingResponse
from sqlmodel import Session

from sidecar.access.care_scope import CareScope, CareScopeDep
from sidecar.accounts.dependencies import ClientAddress, require_roles
from sidecar.accounts.models import Role, User
from sidecar.core import audit, signed_links
from sidecar.core.dependencies import ClockDep, SessionDep, SettingsDep, provide
from sidecar.core.errors import ConflictingState, Unavailable, UnknownRecord
from sidecar.core.pagination import RecordId
from sidecar.core.settings import Settings
from sidecar.ingest.orthanc_client import (
    AnonymizedStudy,
    OrthancClient,
    OrthancError,
    OrthancNotFound,
)
from sidecar.studies.deidentification import (
    ANONYMIZE_TIMEOUT,
    CopyStatus,
    DeidentifiedCopy,
    DeidentifiedCopyPublic,
    DeidentifyRequest,
    archive_link,
    check_archive_link,
    nested_identity_paths,
    orthanc_options,
    public_copy,
    record_copy,
)
from sidecar.studies.deidentify_sweep import wait_for_job
from sidecar.studies.lookup import readable_study

log = logging.getLogger(__name__)

router = APIRouter(tags=["de-identified copies"])

Deidentifier = Annotated[User, Depends(require_roles(Role.ADMIN, Role.RADIOLOGIST))]
OrthancDep = Annotated[OrthancClient, Depends(provide(OrthancClient))]
#: The actor of a link's use: whoever holds the link (no account is presented).
LINK_ACTOR = "signed-link"
NO_STORE = {"Cache-Control": "private, no-store"}


@router.post(
    "/api/studies/{study_id}/deidentify",
    response_model=DeidentifiedCopyPublic,
    status_code=status.HTTP_201_CREATED,
)
def deidentify_study(
    study_id: RecordId,
    body: DeidentifyRequest,
    session: SessionDep,
    user: Deidentifier,
    scope: CareScopeDep,
    settings: SettingsDep,
    clock: ClockDep,
    orthanc: OrthancDep,
    response: Response,
) -> DeidentifiedCopyPublic:
    """A de-identified copy of the study's images in Orthanc (DICOM PS3.15 Basic Application
    Level Confidentiality Profile: new UIDs, a pseudonym for the patient, no birth date,
    accession number, institution or physician), not linked to the patient, with a link to
    it as a ZIP that works without a token until `archiveExpiresAt` (IMAGE_URL_MINUTES)."""
    study = readable_study(session, study_id, scope)
    if not study.orthanc_id:
        raise ConflictingState(f"study {study_id} has no images in Orthanc to de-identify")
    source_orthanc_id = study.orthanc_id
    # This node's Orthanc makes it: only this node can follow the job (deidentify_sweep).
    copy = record_copy(
        session, study_id, body.purpose, user.username, clock(), orthanc_node=settings.node_name
    )
    asked = False  # whether Orthanc may have started writing the copy
    try:
        nested = nested_identity_paths(orthanc.study_instances_tags(source_orthanc_id))
        asked = True
        copy.orthanc_job_id = orthanc.start_anonymize_study(
            source_orthanc_id, orthanc_options(copy, nested)
        )
    except OrthancError as exc:
        _failed(session, orthanc, copy, user, exc, written=asked)
        if isinstance(exc, OrthancNotFound):
            raise ConflictingState(
                f"the images of study {study_id} are no longer in Orthanc: nothing to de-identify"
            ) from exc
        raise Unavailable("Orthanc is not answering: no copy was made; try again shortly") from exc
    session.add(copy)
    session.commit()  # the job known: a sweep after a crash waits for it to end
    job_id = copy.orthanc_job_id
    try:
        job = wait_for_job(orthanc, job_id, timeout=ANONYMIZE_TIMEOUT)
    except OrthancError as exc:
        _abandoned(session, orthanc, copy, user, "Orthanc stopped answering during the copy")
        raise Unavailable(
            "Orthanc stopped answering while making the copy: no copy was kept; what Orthanc "
            "wrote of it will be deleted"
        ) from exc
    if job is None:
        _abandoned(session, orthanc, copy, user, "Orthanc did not finish the copy in time")
        raise Unavailable(
            f"Orthanc did not finish the copy within {ANONYMIZE_TIMEOUT:.0f} s: it was asked "
            "to stop, no copy was kept; what Orthanc wrote of it will be deleted"
        )
    try:
        if job.get("State") != "Success":
            raise _Incomplete(None, 0)
        made = AnonymizedStudy.of_job(job)
        if made.failed_instances:
            raise _Incomplete(made.orthanc_id, made.failed_instances)
    except (OrthancError, _Incomplete) as exc:
        _failed(session, orthanc, copy, user, exc)
        count = f"{exc.failed} of " if isinstance(exc, _Incomplete) and exc.failed else ""
        raise ConflictingState(
            f"Orthanc could not de-identify {count}the images of study {study_id}: no copy was kept"
        ) from exc
    copy.orthanc_id = made.orthanc_id
    copy.instance_count = made.instances
    copy.status = CopyStatus.READY
    session.add(copy)
    assert copy.id is not None
    audit.record(
        session,
        actor=user.username,
        action="study.deidentified",
        entity_type="study",
        entity_id=study_id,
        copy_id=copy.id,
        copy_orthanc_id=made.orthanc_id,
        instances=made.instances,
        purpose=copy.purpose,
    )
    link = archive_link(
        _key(settings),
        settings.public_url,
        copy.id,
        now=clock(),
        minutes=settings.image_url_minutes,
    )
    session.commit()
    session.refresh(copy)
    response.headers.update(NO_STORE)
    return public_copy(copy, link)


@router.get("/api/deidentified/{copy_id}/url", response_model=DeidentifiedCopyPublic)
def deidentified_copy_link(
    copy_id: RecordId,
    session: SessionDep,
    user: Deidentifier,
    scope: CareScopeDep,
    settings: SettingsDep,
    clock: ClockDep,
    response: Response,
) -> DeidentifiedCopyPublic:
    """The copy, with a new link to its ZIP archive."""
    copy = _readable_copy(session, copy_id, scope)
    if copy.status is not CopyStatus.READY:
        raise ConflictingState(f"de-identified copy {copy_id} was not completed: no archive")
    link = archive_link(
        _key(settings),
        settings.public_url,
        copy_id,
        now=clock(),
        minutes=settings.image_url_minutes,
    )
    audit.record(
        session,
        actor=user.username,
        action="deidentified_copy.link_created",
        entity_type="deidentified_copy",
        entity_id=copy_id,
        expires_at=link.expires_at,
    )
    session.commit()
    response.headers.update(NO_STORE)
    return public_copy(copy, link)


@router.get(
    "/api/deidentified/{copy_id}/archive",
    response_class=Response,
    responses={200: {"content": {"application/zip": {}}}},
)
def deidentified_archive(
    copy_id: RecordId,
    session: SessionDep,
    settings: SettingsDep,
    clock: ClockDep,
    orthanc: OrthancDep,
    address: ClientAddress,
    expires: Annotated[str | None, Query(max_length=32)] = None,
    signature: Annotated[str | None, Query(max_length=128)] = None,
) -> Response:
    """The de-identified copy a signed link names, as a ZIP of its DICOM files, without a
    token: 403 when the link was altered, is incomplete or has expired."""
    check_archive_link(_key(settings), copy_id, expires=expires, signature=signature, now=clock())
    copy = session.get(DeidentifiedCopy, copy_id)
    if copy is None or copy.status is not CopyStatus.READY or not copy.orthanc_id:
        raise UnknownRecord(f"de-identified copy {copy_id} not found")
    try:
        chunks = orthanc.study_archive(copy.orthanc_id)
    except OrthancNotFound as exc:
        raise UnknownRecord(f"de-identified copy {copy_id} is no longer in Orthanc") from exc
    except OrthancError as exc:
        raise Unavailable("Orthanc is not answering: try again shortly") from exc
    audit.record(
        session,
        actor=LINK_ACTOR,
        action="deidentified_copy.archive_downloaded",
        entity_type="deidentified_copy",
        entity_id=copy_id,
        address=address,
    )
    session.commit()
    headers = {
        **NO_STORE,
        "Content-Disposition": f'attachment; filename="deidentified-{copy_id}.zip"',
    }
    return StreamingResponse(chunks, media_type="application/zip", headers=headers)


class _Incomplete(Exception):
    def __init__(self, orthanc_id: str | None, failed: int) -> None:
        super().__init__(f"{failed} instances failed")
        self.orthanc_id = orthanc_id
        self.failed = failed


def _failed(
    session: Session,
    orthanc: OrthancClient,
    copy: DeidentifiedCopy,
    user: User,
    cause: Exception,
    *,
    written: bool = True,
) -> None:
    """Orthanc did not make the whole copy (its job, if any, is over): what it wrote is
    deleted and the record stays, failed, so that a part left behind is never registered.
    Orthanc not answering the deletion: the copy stays "creating" for the sweep to delete."""
    copy.failure_reason = (
        "Orthanc could not copy every image"
        if isinstance(cause, _Incomplete)
        else f"Orthanc failed: {type(cause).__name__}"
    )
    copy.status = CopyStatus.FAILED
    try:
        if written:
            for orthanc_id in orthanc.studies_with_uid(copy.study_instance_uid):
                orthanc.delete_study(orthanc_id)
    except OrthancError:
        copy.status = CopyStatus.CREATING  # swept once abandoned (deidentify_sweep)
    session.add(copy)
    audit.record(
        session,
        actor=user.username,
        action="study.deidentify_failed",
        entity_type="study",
        entity_id=copy.source_study_id,
        copy_id=copy.id,
        error=type(cause).__name__,
    )
    session.commit()
    log.warning(
        "de-identified copy %s of study %s failed: %s", copy.id, copy.source_study_id, cause
    )


def _abandoned(
    session: Session, orthanc: OrthancClient, copy: DeidentifiedCopy, user: User, reason: str
) -> None:
    """Orthanc may still be writing the copy: it is asked to stop (when it answers), and the
    copy stays "creating" for the sweep (sidecar.studies.deidentify_sweep), which deletes what
    Orthanc wrote once its job is over."""
    assert copy.orthanc_job_id is not None
    with contextlib.suppress(OrthancError):
        orthanc.cancel_job(copy.orthanc_job_id)
    copy.failure_reason = reason
    session.add(copy)
    audit.record(
        session,
        actor=user.username,
        action="study.deidentify_failed",
        entity_type="study",
        entity_id=copy.source_study_id,
        copy_id=copy.id,
        error=reason,
    )
    session.commit()
    log.warning(
        "de-identified copy %s of study %s left for the sweep: %s",
        copy.id,
        copy.source_study_id,
        reason,
    )


def _readable_copy(session: Session, copy_id: int, scope: CareScope) -> DeidentifiedCopy:
    """The copy, when the caller may read its source study (anyone unlimited by care scope,
    once the source study is deleted); 404 otherwise."""
    copy = session.get(DeidentifiedCopy, copy_id)
    if copy is None:
        raise UnknownRecord(f"de-identified copy {copy_id} not found")
    if scope.limited:
        try:
            readable_study(session, copy.source_study_id, scope)
        except UnknownRecord as exc:
            raise UnknownRecord(f"de-identified copy {copy_id} not found") from exc
    return copy


def _key(settings: Settings) -> bytes:
    return signed_links.link_key(settings.jwt_secret)
