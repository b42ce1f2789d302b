"""Forgetting images Orthanc no longer holds: their rows go and the counts follow.

One step, for whatever removed the images (a rejection through the API, sidecar.studies.
rejection; a deletion made in Orthanc itself): `drop_image_rows`. It can run again on the same
input and change nothing more, so a retried removal never counts twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlmodel import Session, col, func, select

from sidecar.core.models import join_multi, split_multi, utcnow
from sidecar.studies.models import Image, Series, Study

_CHUNK = 500


@dataclass(frozen=True)
class DroppedRows:
    images: int  # image rows deleted
    series: tuple[str, ...]  # Series Instance UIDs whose rows were deleted (emptied or named)
    study_instance_count: int  # the study's counts afterwards
    study_series_count: int


def drop_image_rows(
    session: Session,
    study_id: int,
    *,
    sop_instance_uids: Iterable[str] = (),
    series_instance_uids: Iterable[str] = (),
) -> DroppedRows:
    """Deletes the study's image rows of these SOP Instance UIDs, and every row of these series
    (the series' own rows too); a series left with no instance goes as well. Each series'
    instance count drops by the images removed from it, the study's counts are the sum of what
    is left, and its modalities those of the series left. The caller commits (and audits).

    Counts drop by the rows deleted rather than being recounted from the rows, because image
    rows may lag Orthanc's counts (they are registered in a later lane, sidecar.ingest.sync)."""
    study = session.get(Study, study_id)
    series_uids = set(series_instance_uids)
    series_rows = {
        s.id: s for s in session.exec(select(Series).where(Series.study_id == study_id)).all()
    }
    removed_per_series: dict[int, int] = {}
    uids = list(dict.fromkeys(sop_instance_uids))
    for start in range(0, len(uids), _CHUNK):
        for image in session.exec(
            select(Image).where(
                Image.study_id == study_id,
                col(Image.sop_instance_uid).in_(uids[start : start + _CHUNK]),
            )
        ).all():
            removed_per_series[image.series_id] = removed_per_series.get(image.series_id, 0) + 1
            session.delete(image)
    dropped_images = sum(removed_per_series.values())
    dropped_series: list[str] = []
    for series_id, series in series_rows.items():
        assert series_id is not None
        if series.series_instance_uid in series_uids:
            rest = session.exec(select(Image).where(Image.series_id == series_id)).all()
            for image in rest:
                session.delete(image)
            dropped_images += len(rest)
            series.instance_count = 0
        else:
            removed = removed_per_series.get(series_id, 0)
            if not removed:
                continue
            series.instance_count = max(0, series.instance_count - removed)
        if series.instance_count == 0 and not _has_images(session, series_id):
            dropped_series.append(series.series_instance_uid)
            session.delete(series)
        else:
            session.add(series)
    session.flush()
    if study is None:
        return DroppedRows(dropped_images, tuple(dropped_series), 0, 0)
    left = [s for s in series_rows.values() if s.series_instance_uid not in dropped_series]
    if dropped_images or dropped_series:
        study.instance_count = sum(s.instance_count for s in left)
        study.series_count = len(left)
        modalities = [s.modality for s in left if s.modality]
        kept = [m for m in split_multi(study.modalities) if m in modalities]
        study.modalities = join_multi(list(dict.fromkeys(kept + modalities)))
        study.updated_at = utcnow()
        session.add(study)
        session.flush()
    return DroppedRows(
        dropped_images, tuple(dropped_series), study.instance_count, study.series_count
    )


def _has_images(session: Session, series_id: int) -> bool:
    count = session.exec(
        select(func.count()).select_from(Image).where(Image.series_id == series_id)
    ).one()
    return bool(count)
