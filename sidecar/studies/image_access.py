"""Reaching one image's pixels: signed links (`/api/images/{id}/url`, then `/file` without a
token until the link expires; sidecar.studies.image_links), previews and study thumbnails
(cached PNG renderings; sidecar.studies.thumbnails).

Who may ask for a link, a preview or a thumbnail: whoever may read the image's study (the roles
and care-relationship scope of reading a study; 404 otherwise, as for a study that does not
exist). A link's use is checked by its signature alone, and audited.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Response
from fastapi.responses import StreamingResponse
from sqlmodel import Session

from sidecar.access.care_scope import CareScope, CareScopeDep
from sidecar.accounts.dependencies import ClientAddress, Clinician
from sidecar.core import audit
from sidecar.core.dependencies import ClockDep, SessionDep, SettingsDep, provide
from sidecar.core.errors import ConflictingState, Unavailable, UnknownRecord
from sidecar.core.models import ApiModel
from sidecar.core.pagination import RecordId
from sidecar.core.settings import Settings
from sidecar.ingest.orthanc_client import (
    OrthancCannotRender,
    OrthancClient,
    OrthancError,
    OrthancNotFound,
)
from sidecar.studies.image_links import ImageFormat, check_link, link_key, make_link
from sidecar.studies.lookup import readable_image, readable_study
from sidecar.studies.models import Image
from sidecar.studies.thumbnails import Picture, Rendering, ThumbnailCache, matches, render
from sidecar.studies.thumbnails import representative_image as study_thumbnail_image

router = APIRouter(tags=["images"])

OrthancDep = Annotated[OrthancClient, Depends(provide(OrthancClient))]
#: The actor of a link's use: whoever holds the link (no account is presented).
LINK_ACTOR = "signed-link"
NO_STORE = {"Cache-Control": "private, no-store"}
# Renderings of an instance do not change; a browser may keep them a few minutes.
PICTURE_CACHE_CONTROL = "private, max-age=300"


class ImageLink(ApiModel):
    url: str
    expires_at: datetime


def thumbnail_cache(settings: SettingsDep) -> ThumbnailCache:
    return ThumbnailCache(
        settings.data_dir / "thumbnails", max_bytes=settings.thumbnail_cache_mb * 1024 * 1024
    )


ThumbnailCacheDep = Annotated[ThumbnailCache, Depends(thumbnail_cache)]


@router.get("/api/images/{image_id}/url", response_model=ImageLink)
def image_link(
    image_id: RecordId,
    session: SessionDep,
    user: Clinician,
    scope: CareScopeDep,
    settings: SettingsDep,
    clock: ClockDep,
    response: Response,
    image_format: Annotated[ImageFormat, Query(alias="format")] = ImageFormat.DICOM,
) -> ImageLink:
    """A link to the image's DICOM file (`format=dicom`, the default) or Orthanc's rendering of
    it (`png`, `jpeg`) that works without a token until `expiresAt` (IMAGE_URL_MINUTES)."""
    readable_image(session, image_id, scope)
    link = make_link(
        _key(settings),
        settings.public_url,
        image_id,
        image_format,
        now=clock(),
        minutes=settings.image_url_minutes,
    )
    audit.record(
        session,
        actor=user.username,
        action="image.link_created",
        entity_type="image",
        entity_id=image_id,
        format=image_format,
        expires_at=link.expires_at,
    )
    session.commit()
    response.headers.update(NO_STORE)
    return ImageLink(url=link.url, expires_at=link.expires_at)


@router.get(
    "/api/images/{image_id}/file",
    response_class=Response,
    responses={200: {"content": {f.media_type: {} for f in ImageFormat}}},
)
def image_by_link(
    image_id: RecordId,
    session: SessionDep,
    settings: SettingsDep,
    clock: ClockDep,
    orthanc: OrthancDep,
    address: ClientAddress,
    image_format: Annotated[str | None, Query(alias="format", max_length=16)] = None,
    expires: Annotated[str | None, Query(max_length=32)] = None,
    signature: Annotated[str | None, Query(max_length=128)] = None,
) -> Response:
    """The image a signed link names, without a token: 403 when the link was altered, is
    incomplete or has expired."""
    chosen = check_link(
        _key(settings),
        image_id,
        image_format=image_format,
        expires=expires,
        signature_given=signature,
        now=clock(),
    )
    image = session.get(Image, image_id)
    if image is None or image.orthanc_id is None:
        raise UnknownRecord(f"image {image_id} not found")
    orthanc_id = image.orthanc_id
    headers = dict(NO_STORE)
    body: bytes | Iterator[bytes]
    with orthanc_errors(image_id):
        if chosen is ImageFormat.DICOM:
            body = orthanc.instance_file(orthanc_id)
            headers["Content-Disposition"] = f'attachment; filename="image-{image_id}.dcm"'
        else:
            body = orthanc.instance_rendered(orthanc_id, chosen.media_type)
    audit.record(
        session,
        actor=LINK_ACTOR,
        action="image.link_used",
        entity_type="image",
        entity_id=image_id,
        format=chosen,
        address=address,
    )
    session.commit()
    if isinstance(body, bytes):
        return Response(body, media_type=chosen.media_type, headers=headers)
    return StreamingResponse(body, media_type=chosen.media_type, headers=headers)


@router.get(
    "/api/images/{image_id}/preview",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, 304: {"description": "not modified"}},
)
def image_preview(
    image_id: RecordId,
    session: SessionDep,
    _: Clinician,
    scope: CareScopeDep,
    orthanc: OrthancDep,
    cache: ThumbnailCacheDep,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """The image at full size, as PNG (Orthanc's rendering, cached)."""
    image = readable_image(session, image_id, scope)
    if image.orthanc_id is None:
        raise UnknownRecord(f"image {image_id} is not in Orthanc")
    with orthanc_errors(image_id):
        picture = render(orthanc, cache, image.orthanc_id, Rendering.PREVIEW)
    return picture_response(picture, if_none_match)


@router.get(
    "/api/studies/{study_id}/thumbnail",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, 304: {"description": "not modified"}},
)
def study_thumbnail(
    study_id: RecordId,
    session: SessionDep,
    _: Clinician,
    scope: CareScopeDep,
    orthanc: OrthancDep,
    cache: ThumbnailCacheDep,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """The study's thumbnail, as PNG: the middle instance of its first series, scaled down
    (cached)."""
    picture = study_thumbnail_picture(session, study_id, scope, orthanc, cache)
    return picture_response(picture, if_none_match)


def study_thumbnail_picture(
    session: Session,
    study_id: int,
    scope: CareScope,
    orthanc: OrthancClient,
    cache: ThumbnailCache,
) -> Picture:
    """The thumbnail of a study the caller may read (404 otherwise), for the API and the
    study page alike."""
    readable_study(session, study_id, scope)
    image = study_thumbnail_image(session, study_id)
    if image is None or image.orthanc_id is None:
        raise UnknownRecord(f"study {study_id} has no images yet: no thumbnail to show")
    with orthanc_errors(image.id or 0):
        return render(orthanc, cache, image.orthanc_id, Rendering.THUMBNAIL)


def picture_response(picture: Picture, if_none_match: str | None) -> Response:
    headers = {"ETag": picture.etag, "Cache-Control": PICTURE_CACHE_CONTROL}
    if matches(if_none_match, picture.etag):
        return Response(status_code=304, headers=headers)
    return Response(picture.content, media_type="image/png", headers=headers)


@contextmanager
def orthanc_errors(image_id: int) -> Iterator[None]:
    """Orthanc's errors as the API's refusals."""
    try:
        yield
    except OrthancNotFound as exc:
        raise UnknownRecord(f"image {image_id} is no longer in Orthanc") from exc
    except OrthancCannotRender as exc:
        raise ConflictingState(
            f"Orthanc cannot render image {image_id} (it holds no picture Orthanc can draw); "
            "its DICOM file is still available"
        ) from exc
    except OrthancError as exc:
        raise Unavailable("Orthanc is not answering: try again shortly") from exc


def _key(settings: Settings) -> bytes:
    return link_key(settings.jwt_secret)
