"""Images (seed 001): per-instance attributes recorded from Orthanc."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlmodel import Session, col, func, select

from sidecar.api.deps import Clinician, Pagination, RecordId, SessionDep, page
from sidecar.errors import NotFound
from sidecar.models.studies import Image, ImagePublic, Series

router = APIRouter(prefix="/api/images", tags=["images"])


@router.get("/{image_id}", response_model=ImagePublic)
def get_image(image_id: RecordId, session: SessionDep, _: Clinician) -> ImagePublic:
    row = session.exec(
        select(Image, Series.series_instance_uid)
        .join(Series, col(Series.id) == col(Image.series_id))
        .where(Image.id == image_id)
    ).first()
    if row is None:
        raise NotFound(f"image {image_id} not found")
    return to_public(*row)


def to_public(image: Image, series_uid: str) -> ImagePublic:
    spacing = (
        [image.pixel_spacing_row, image.pixel_spacing_column]
        if image.pixel_spacing_row is not None and image.pixel_spacing_column is not None
        else None
    )
    return ImagePublic.model_validate(
        {
            **image.model_dump(exclude={"pixel_spacing_row", "pixel_spacing_column"}),
            "series_instance_uid": series_uid,
            "pixel_spacing": spacing,
        }
    )


def image_page(session: Session, pagination: Pagination, condition: Any) -> dict[str, Any]:
    total = session.exec(select(func.count()).select_from(Image).where(condition)).one()
    rows = session.exec(
        select(Image, Series.series_instance_uid)
        .join(Series, col(Series.id) == col(Image.series_id))
        .where(condition)
        .order_by(
            col(Series.series_number).nulls_last(),
            col(Image.instance_number).nulls_last(),
            col(Image.id),
        )
        .offset(pagination.offset)
        .limit(pagination.limit)
    ).all()
    return page([to_public(image, uid) for image, uid in rows], total, pagination)
