"""From Orthanc's JSON to the sidecar's records: pure functions, no database, no Orthanc."""

from __future__ import annotations

from datetime import date, time
from typing import Any

import pytest

from sidecar.core.dicom_text import parse_da, parse_tm
from sidecar.ingest.dicom_mapping import (
    IncompleteStudy,
    image_records,
    parse_ds,
    parse_is,
    parse_pixel_spacing,
)

from builders import UID_ROOT, SeriesSpec, orthanc_study


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("20240115", date(2024, 1, 15)),
        (" 20240229 ", date(2024, 2, 29)),
        ("20230229", None),  # not a leap year
        ("20241301", None),
        ("2024-01-15", None),
        ("2024011", None),
        ("202401150", None),
        ("2024O115", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_da(value: str | None, expected: date | None) -> None:
    assert parse_da(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("101500", time(10, 15, 0)),
        ("101500.123", time(10, 15, 0, 123000)),
        ("235959.999999", time(23, 59, 59, 999999)),
        ("101500.1234567", time(10, 15, 0, 123456)),
        ("1015", time(10, 15)),
        ("10", time(10, 0)),
        ("10:15:30", time(10, 15, 30)),  # ACR-NEMA style
        ("235960", time(23, 59, 59)),  # leap second clamps
        ("", None),
        (None, None),
        ("240000", None),
        ("106000", None),
        ("10150", None),
        ("10a500", None),
        ("101500.12x", None),
    ],
)
def test_parse_tm(value: str | None, expected: time | None) -> None:
    assert parse_tm(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("12", 12),
        (" 7 ", 7),
        ("-3", -3),
        ("+5", 5),
        ("4\\5", 4),
        (512, 512),
        ("", None),
        (None, None),
        ("1.5", None),
        ("abc", None),
    ],
)
def test_parse_is(value: Any, expected: int | None) -> None:
    assert parse_is(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0.5", 0.5),
        (" 40 ", 40.0),
        ("-1000", -1000.0),
        ("1e2", 100.0),
        ("40\\400", 40.0),
        ("", None),
        (None, None),
        ("abc", None),
        ("\\400", None),
    ],
)
def test_parse_ds(value: Any, expected: float | None) -> None:
    assert parse_ds(value) == expected


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-inf", "nan\\40"])
def test_parse_ds_rejects_non_finite_values(value: str) -> None:
    assert parse_ds(value) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0.703125\\0.703125", (0.703125, 0.703125)),
        ("0.5\\0.25", (0.5, 0.25)),
        (" 1 \\ 2 ", (1.0, 2.0)),
        ("0.5", None),
        ("0.5\\0.5\\0.5", None),
        ("0.5\\", None),
        ("a\\b", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_pixel_spacing(value: Any, expected: tuple[float, float] | None) -> None:
    assert parse_pixel_spacing(value) == expected


def test_study_record_maps_orthanc_tags() -> None:
    study = orthanc_study(f"{UID_ROOT}.1")

    record = study.record()

    assert record.orthanc_id == study.orthanc_id
    assert record.orthanc_last_update == "20240115T101800"
    assert record.study_instance_uid == f"{UID_ROOT}.1"
    assert (record.accession_number, record.patient_id) == ("ACC0001", "PAT-0001")
    assert (record.patient_name, record.patient_sex) == ("DOE^JANE", "F")
    assert record.patient_birth_date == date(1970, 1, 1)
    assert (record.study_date, record.study_time) == (date(2024, 1, 15), time(10, 15))
    assert record.study_description == "CT CHEST W/O CONTRAST"
    assert record.referring_physician == "HOUSE^GREGORY"
    assert record.body_part == "CHEST"
    assert record.instance_count == 2
    [series] = record.series
    assert (series.series_number, series.modality, series.instance_count) == (1, "CT", 2)


def test_study_record_turns_blank_and_malformed_values_into_none() -> None:
    study = orthanc_study(accession_number="  ", study_date="2024-01-15", study_time="late")
    study.study_json["PatientMainDicomTags"]["PatientBirthDate"] = ""

    record = study.record()

    assert record.accession_number is None
    assert record.study_date is None and record.study_time is None
    assert record.patient_birth_date is None


def test_study_record_without_study_instance_uid_is_incomplete() -> None:
    study = orthanc_study()
    del study.study_json["MainDicomTags"]["StudyInstanceUID"]
    with pytest.raises(IncompleteStudy):
        study.record()
    study.study_json["MainDicomTags"]["StudyInstanceUID"] = "   "
    with pytest.raises(IncompleteStudy):
        study.record()


def test_study_record_with_a_series_without_uid_is_incomplete() -> None:
    study = orthanc_study()
    del study.series_json[0]["MainDicomTags"]["SeriesInstanceUID"]
    with pytest.raises(IncompleteStudy):
        study.record()


def test_series_are_sorted_by_number_with_unnumbered_last() -> None:
    base = f"{UID_ROOT}.1"
    study = orthanc_study(
        base,
        series=[
            SeriesSpec(uid=f"{base}.9", number=None, modality="SR"),
            SeriesSpec(uid=f"{base}.30", number=30, modality="CT"),
            SeriesSpec(uid=f"{base}.2", number=2, modality="CT"),
            SeriesSpec(uid=f"{base}.8", number=None, modality="PR"),
            SeriesSpec(uid=f"{base}.4", number=4, modality="MR"),
        ],
    )

    record = study.record()

    assert [s.series_number for s in record.series] == [2, 4, 30, None, None]
    # Unnumbered series fall back to UID order, so the result does not depend on Orthanc's.
    assert [s.series_instance_uid for s in record.series[3:]] == [f"{base}.8", f"{base}.9"]


def test_modalities_are_deduplicated_in_series_order() -> None:
    base = f"{UID_ROOT}.1"
    study = orthanc_study(
        base,
        series=[
            SeriesSpec(uid=f"{base}.5", number=5, modality="SR", body_part=None),
            SeriesSpec(uid=f"{base}.3", number=3, modality="CT", body_part="ABDOMEN"),
            SeriesSpec(uid=f"{base}.1", number=1, modality="PT", body_part=None),
            SeriesSpec(uid=f"{base}.2", number=2, modality="CT", body_part="CHEST"),
            SeriesSpec(uid=f"{base}.4", number=4, modality=None),
        ],
    )

    record = study.record()

    assert record.modalities == ("PT", "CT", "SR")
    assert record.body_part == "CHEST"  # the first series, in series order, that names one
    assert record.instance_count == 10


def test_image_records_map_instance_tags() -> None:
    study = orthanc_study(series=[SeriesSpec(uid=f"{UID_ROOT}.1.1", instances=1)])
    [(instance_id, tags)] = study.instances_tags.items()
    tags["0028,1050"] = "40\\50"

    [image] = image_records(study.instances_tags)

    assert image.orthanc_id == instance_id
    assert image.sop_instance_uid == f"{UID_ROOT}.1.1.1"
    assert image.sop_class_uid == "1.2.840.10008.5.1.4.1.1.2"
    assert image.series_instance_uid == f"{UID_ROOT}.1.1"
    assert image.instance_number == 1
    assert (image.rows, image.columns) == (512, 512)
    assert image.pixel_spacing == (0.703125, 0.703125)
    assert image.slice_thickness == 5.0
    assert (image.window_center, image.window_width) == (40.0, 400.0)


def test_image_records_skip_instances_without_sop_or_series_uid() -> None:
    study = orthanc_study(series=[SeriesSpec(uid=f"{UID_ROOT}.1.1", instances=4)])
    ids = list(study.instances_tags)
    del study.instances_tags[ids[0]]["0008,0018"]
    del study.instances_tags[ids[1]]["0020,000e"]
    study.instances_tags[ids[2]]["0008,0018"] = " "

    records = image_records(study.instances_tags)

    assert [r.orthanc_id for r in records] == [ids[3]]


def test_image_records_tolerate_missing_optional_tags() -> None:
    instance = {"0008,0018": "1.2.3.4", "0020,000e": "1.2.3"}

    [image] = image_records({"abc": instance})

    assert image.sop_class_uid is None
    assert image.instance_number is None
    assert (image.rows, image.columns, image.pixel_spacing) == (None, None, None)
    assert (image.slice_thickness, image.window_center, image.window_width) == (None, None, None)


def test_image_records_of_an_empty_study() -> None:
    assert image_records({}) == []
