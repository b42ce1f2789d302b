"""What the study and image routes share: finding a study (404 when unknown, and outside the
caller's care scope, as for a study that does not exist), and studies and images as the API
shows them."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, col, func, select

from sidecar.access.care_scope import CareScope
from sidecar.core.errors import UnknownRecord
from sidecar.core.pagination import Pagination, page
from sidecar.mpps.models import PerformedProcedureStep
from sidecar.studies.models import Image, ImagePublic, Series, Study, StudyDetail, StudyPublic
from sidecar.viewer.front import ViewerLinks


def get_study_or_404(session: Session, study_id: int) -> Study:
    """The study; 404 when unknown, or removed after its images were deleted in Orthanc
    (sidecar.ingest.deletions: the row stays only for the records that name it)."""
    study = session.get(Study, study_id)
    if study is None or study.removed_at is not None:
        raise UnknownRecord(f"study {study_id} not found")
    return study


def listed_studies() -> Any:
    """The condition of every study the sidecar still shows (not removed)."""
    return col(Study.removed_at).is_(None)


def readable_study(session: Session, study_id: int, scope: CareScope) -> Study:
    """The study, when the caller may read it; 404 otherwise, as for one that does not exist."""
    if not scope.limited:
        return get_study_or_404(session, study_id)
    study = session.exec(
        select(Study).where(Study.id == study_id, listed_studies(), *scope.studies())
    ).first()
    if study is None:
        raise UnknownRecord(f"study {study_id} not found")
    return study


def readable_image(session: Session, image_id: int, scope: CareScope) -> Image:
    """The image, when the caller may read its study; 404 otherwise."""
    return readable_image_in_series(session, image_id, scope)[0]


def readable_image_in_series(
    session: Session, image_id: int, scope: CareScope
) -> tuple[Image, str]:
    """The image and its Series Instance UID, when the caller may read its study; 404
    otherwise."""
    row = session.exec(
        select(Image, Series.series_instance_uid)
        .join(Series, col(Series.id) == col(Image.series_id))
        .where(Image.id == image_id, *scope.images())
    ).first()
    if row is None:
        raise UnknownRecord(f"image {image_id} not found")
    return row[0], row[1]


def public_study(links: ViewerLinks, study: Study) -> StudyPublic:
    """The study as the API shows it, with its viewer link when a viewer is configured."""
    shown = StudyPublic.model_validate(study)
    shown.viewer_url = links.study(study.study_instance_uid)
    return shown


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


def study_detail(session: Session, study: Study, links: ViewerLinks) -> StudyDetail:
    """The study with its series and performed procedure steps (GET /api/studies/{id})."""
    series = session.exec(
        select(Series)
        .where(Series.study_id == study.id)
        .order_by(col(Series.series_number).nulls_last(), col(Series.id))
    ).all()
    steps = session.exec(
        select(PerformedProcedureStep)
        .where(PerformedProcedureStep.study_instance_uid == study.study_instance_uid)
        .order_by(col(PerformedProcedureStep.id))
    ).all()
    return StudyDetail.model_validate(
        {
            **public_study(links, study).model_dump(),
            "series": series,
            "performed_procedure_steps": steps,
        }
    )
