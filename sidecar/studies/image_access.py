"""Reaching one image's pixels: signed links (`/api/images/{id}/url`, then `/file` without a
token until the link expires; sidecar.studies.image_links), previews and study thumbnails
(cached PNG renderings; sidecar.studies.thumbnails).

Who may ask for a link, a preview or a thumbnail: whoever may read the image's study (the roles
and care-relationship scope of reading a study; 404 otherwise, as for a study that does not
exist). A link's use is checked by its signature alone, and audited.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Header, Query, Response
from fastapi.responses import StreamingResponse

from sidecar.access.care_scope import CareScopeDep
from sidecar.accounts.dependencies import ClientAddress, Clinician
from sidecar.core import audit
from sidecar.core.dependencies import ClockDep, SessionDep, SettingsDep
from sidecar.core.errors import UnknownRecord
from sidecar.core.models import ApiModel
from sidecar.core.pagination import RecordId
from sidecar.core.settings import Settings
from sidecar.studies.image_links import ImageFormat, check_link, link_key, make_link
from sidecar.studies.lookup import readable_image
from sidecar.studies.models import Image
from sidecar.studies.pictures import (
    OrthancDep,
    ThumbnailCacheDep,
    orthanc_errors,
    picture_response,
    study_thumbnail_picture,
)
from sidecar.studies.thumbnails import Rendering, render

router = APIRouter(tags=["images"])

#: The actor of a link's use: whoever holds the link (no account is presented).
LINK_ACTOR = "signed-link"
NO_STORE = {"Cache-Control": "private, no-store"}


class ImageLink(ApiModel):
    url: str
    expires_at: datetime


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


def _key(settings: Settings) -> bytes:
    return link_key(settings.jwt_secret)
