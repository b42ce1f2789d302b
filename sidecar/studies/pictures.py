"""Serving renderings of images (previews, study thumbnails) to whoever may read their study:
what the API's image routes (sidecar.studies.image_access) and the study page
(sidecar.web.study_page) share, so both answer a thumbnail the same way, from the same cache."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import Depends, Response
from sqlmodel import Session

from sidecar.access.care_scope import CareScope
from sidecar.core.dependencies import SettingsDep, provide
from sidecar.core.errors import ConflictingState, Unavailable, UnknownRecord
from sidecar.ingest.orthanc_client import (
    OrthancCannotRender,
    OrthancClient,
    OrthancError,
    OrthancNotFound,
)
from sidecar.studies.lookup import readable_study
from sidecar.studies.thumbnails import Picture, Rendering, ThumbnailCache, matches, render
from sidecar.studies.thumbnails import representative_image as study_thumbnail_image

OrthancDep = Annotated[OrthancClient, Depends(provide(OrthancClient))]
# Renderings of an instance do not change; a browser may keep them a few minutes.
PICTURE_CACHE_CONTROL = "private, max-age=300"


def thumbnail_cache(settings: SettingsDep) -> ThumbnailCache:
    return ThumbnailCache(
        settings.data_dir / "thumbnails", max_bytes=settings.thumbnail_cache_mb * 1024 * 1024
    )


ThumbnailCacheDep = Annotated[ThumbnailCache, Depends(thumbnail_cache)]


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
