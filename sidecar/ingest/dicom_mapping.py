"""From Orthanc's JSON to what the sidecar records: pure functions, no I/O.

DICOM values arrive as strings in Orthanc's answers; a malformed optional value (a date that is
not a date, a number that is not a number) becomes None rather than rejecting a whole study,
because the images are already stored and must not be lost for a cosmetic tag.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any

from sidecar.core.dicom_text import parse_da, parse_tm

# Tags read per instance from /studies/{id}/instances-tags?short.
SOP_CLASS_UID = "0008,0016"
SOP_INSTANCE_UID = "0008,0018"
SERIES_INSTANCE_UID = "0020,000e"
INSTANCE_NUMBER = "0020,0013"
ROWS = "0028,0010"
COLUMNS = "0028,0011"
PIXEL_SPACING = "0028,0030"
SLICE_THICKNESS = "0018,0050"
WINDOW_CENTER = "0028,1050"
WINDOW_WIDTH = "0028,1051"
ISSUER_OF_PATIENT_ID = "0010,0021"


class IncompleteStudy(Exception):
    """Orthanc's answer lacks what identifies the study (it cannot be registered)."""


@dataclass(frozen=True)
class ImageRecord:
    orthanc_id: str
    sop_instance_uid: str
    sop_class_uid: str | None
    series_instance_uid: str
    instance_number: int | None
    rows: int | None
    columns: int | None
    pixel_spacing: tuple[float, float] | None
    slice_thickness: float | None
    window_center: float | None
    window_width: float | None


@dataclass(frozen=True)
class SeriesRecord:
    orthanc_id: str
    series_instance_uid: str
    series_number: int | None
    series_description: str | None
    modality: str | None
    body_part: str | None
    instance_count: int


@dataclass(frozen=True)
class StudyRecord:
    orthanc_id: str
    orthanc_last_update: str | None
    study_instance_uid: str
    accession_number: str | None
    patient_id: str | None
    patient_name: str | None
    patient_birth_date: date | None
    patient_sex: str | None
    study_date: date | None
    study_time: time | None
    study_description: str | None
    referring_physician: str | None
    body_part: str | None
    modalities: tuple[str, ...]
    series: tuple[SeriesRecord, ...]

    @property
    def instance_count(self) -> int:
        return sum(s.instance_count for s in self.series)


def parse_is(value: Any) -> int | None:
    try:
        return int(str(value).strip().split("\\")[0])
    except (TypeError, ValueError):
        return None


def parse_ds(value: Any) -> float | None:
    """First value of a decimal string (window settings may be multi-valued).

    NaN and infinities are not DICOM DS values (and PostgreSQL would store NaN where SQLite
    stores NULL), so they become None like any other malformed number.
    """
    try:
        number = float(str(value).strip().split("\\")[0])
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def parse_pixel_spacing(value: Any) -> tuple[float, float] | None:
    parts = str(value or "").split("\\")
    if len(parts) != 2:
        return None
    row, column = parse_ds(parts[0]), parse_ds(parts[1])
    return (row, column) if row is not None and column is not None else None


def _text(tags: dict[str, Any], name: str) -> str | None:
    value = tags.get(name)
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def study_record(study: dict[str, Any], series: list[dict[str, Any]]) -> StudyRecord:
    """`study` is GET /studies/{id}; `series` is GET /studies/{id}/series."""
    tags = study.get("MainDicomTags", {})
    patient = study.get("PatientMainDicomTags", {})
    uid = _text(tags, "StudyInstanceUID")
    if not uid:
        raise IncompleteStudy("the study has no StudyInstanceUID")
    series_records = tuple(sorted((series_record(s) for s in series), key=_series_order))
    modalities = tuple(dict.fromkeys(s.modality for s in series_records if s.modality))
    body_parts = [s.body_part for s in series_records if s.body_part]
    return StudyRecord(
        orthanc_id=str(study["ID"]),
        orthanc_last_update=study.get("LastUpdate"),
        study_instance_uid=uid,
        accession_number=_text(tags, "AccessionNumber"),
        patient_id=_text(patient, "PatientID"),
        patient_name=_text(patient, "PatientName"),
        patient_birth_date=parse_da(patient.get("PatientBirthDate")),
        patient_sex=_text(patient, "PatientSex"),
        study_date=parse_da(tags.get("StudyDate")),
        study_time=parse_tm(tags.get("StudyTime")),
        study_description=_text(tags, "StudyDescription"),
        referring_physician=_text(tags, "ReferringPhysicianName"),
        body_part=body_parts[0] if body_parts else None,
        modalities=modalities,
        series=series_records,
    )


def _series_order(series: SeriesRecord) -> tuple[int, str]:
    return (
        series.series_number if series.series_number is not None else 1 << 30,
        series.series_instance_uid,
    )


def series_record(series: dict[str, Any]) -> SeriesRecord:
    tags = series.get("MainDicomTags", {})
    uid = _text(tags, "SeriesInstanceUID")
    if not uid:
        raise IncompleteStudy("a series has no SeriesInstanceUID")
    return SeriesRecord(
        orthanc_id=str(series["ID"]),
        series_instance_uid=uid,
        series_number=parse_is(tags.get("SeriesNumber")),
        series_description=_text(tags, "SeriesDescription"),
        modality=_text(tags, "Modality"),
        body_part=_text(tags, "BodyPartExamined"),
        instance_count=len(series.get("Instances", [])),
    )


def image_records(instances_tags: dict[str, dict[str, Any]]) -> list[ImageRecord]:
    """`instances_tags` is GET /studies/{id}/instances-tags?short."""
    records = []
    for orthanc_id, tags in instances_tags.items():
        sop_uid, series_uid = _text(tags, SOP_INSTANCE_UID), _text(tags, SERIES_INSTANCE_UID)
        if not sop_uid or not series_uid:
            continue  # Orthanc refuses such instances at C-STORE; nothing to record.
        records.append(
            ImageRecord(
                orthanc_id=orthanc_id,
                sop_instance_uid=sop_uid,
                sop_class_uid=_text(tags, SOP_CLASS_UID),
                series_instance_uid=series_uid,
                instance_number=parse_is(tags.get(INSTANCE_NUMBER)),
                rows=parse_is(tags.get(ROWS)),
                columns=parse_is(tags.get(COLUMNS)),
                pixel_spacing=parse_pixel_spacing(tags.get(PIXEL_SPACING)),
                slice_thickness=parse_ds(tags.get(SLICE_THICKNESS)),
                window_center=parse_ds(tags.get(WINDOW_CENTER)),
                window_width=parse_ds(tags.get(WINDOW_WIDTH)),
            )
        )
    return records


def study_issuer(instances_tags: dict[str, dict[str, Any]]) -> str | None:
    """The study's IssuerOfPatientID, from the first instance that has one."""
    for tags in instances_tags.values():
        issuer = _text(tags, ISSUER_OF_PATIENT_ID)
        if issuer:
            return issuer[:64]
    return None


def orthanc_time(value: object) -> datetime | None:
    """Orthanc's "20261201T052203" (UTC), or None when absent or not that."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.strptime(value, "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None
