"""Registration of what Orthanc holds, against a real database: idempotent, keyed on the UID."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, func, select

from sidecar.core.audit import ORTHANC_SYNC_ACTOR
from sidecar.studies.models import Image, Series, Study, StudyStatus
from sidecar.studies.registry import known_image_orthanc_ids, register_images, register_study

from builders import (
    UID_ROOT,
    OrthancStudy,
    SeriesSpec,
    audit_events,
    orthanc_study,
    seed_study,
    with_more_instances,
)

STUDY_UID = f"{UID_ROOT}.7"


def two_series(**overrides: Any) -> OrthancStudy:
    return orthanc_study(
        STUDY_UID,
        series=[
            SeriesSpec(uid=f"{STUDY_UID}.2", number=2, modality="CT", instances=3),
            SeriesSpec(uid=f"{STUDY_UID}.1", number=1, modality="CT", instances=2),
        ],
        **overrides,
    )


def count(engine: Engine, model: type) -> int:
    with Session(engine) as session:
        return session.exec(select(func.count()).select_from(model)).one()


def the_study(engine: Engine) -> Study:
    with Session(engine) as session:
        study = session.exec(select(Study).where(Study.study_instance_uid == STUDY_UID)).one()
        session.expunge(study)
        return study


def series_counts(engine: Engine) -> dict[str, int]:
    with Session(engine) as session:
        return {s.series_instance_uid: s.instance_count for s in session.exec(select(Series))}


def announce(engine: Engine, **values: Any) -> int:
    """A study created ahead of its images, as POST /api/studies does."""
    with Session(engine) as session:
        study = Study(study_instance_uid=STUDY_UID, status=StudyStatus.SCHEDULED, **values)
        session.add(study)
        session.commit()
        assert study.id is not None
        return study.id


def test_first_registration_records_study_series_and_one_audit_event(engine: Engine) -> None:
    study = two_series()

    study_id = seed_study(engine, study)

    row = the_study(engine)
    assert row.id == study_id
    assert row.status is StudyStatus.COMPLETED
    assert (row.series_count, row.instance_count) == (2, 5)
    assert row.modalities == "CT"
    assert row.accession_number == "ACC0001"
    assert row.patient_birth_date == date(1970, 1, 1)
    assert row.orthanc_id == study.orthanc_id
    assert row.images_received_at is not None
    assert series_counts(engine) == {f"{STUDY_UID}.1": 2, f"{STUDY_UID}.2": 3}
    assert count(engine, Image) == 5
    [event] = audit_events(engine)
    assert (event.action, event.actor, event.entity_id) == (
        "study.registered",
        ORTHANC_SYNC_ACTOR,
        str(study_id),
    )
    assert event.detail == {
        "orthanc_id": row.orthanc_id,
        "series_count": 2,
        "instance_count": 5,
        "status": "COMPLETED",
    }


def test_registering_the_same_record_twice_leaves_one_row_and_one_event(engine: Engine) -> None:
    study = two_series()

    first = seed_study(engine, study)
    second = seed_study(engine, study)

    assert first == second
    assert count(engine, Study) == 1
    assert count(engine, Series) == 2
    assert count(engine, Image) == 5
    assert [e.action for e in audit_events(engine)] == ["study.registered"]


def test_late_instances_update_the_counts_with_one_event(engine: Engine) -> None:
    study = two_series()
    study_id = seed_study(engine, study)
    grown = with_more_instances(study, series_index=0, extra=4)

    assert seed_study(engine, grown) == study_id
    seed_study(engine, grown)  # stable again, nothing new

    row = the_study(engine)
    assert (row.series_count, row.instance_count) == (2, 9)
    assert row.orthanc_last_update == grown.study_json["LastUpdate"]
    assert series_counts(engine) == {f"{STUDY_UID}.1": 2, f"{STUDY_UID}.2": 7}
    assert count(engine, Study) == 1
    assert count(engine, Image) == 9
    events = audit_events(engine)
    assert [e.action for e in events] == ["study.registered", "study.images_updated"]
    assert events[1].detail["instance_count"] == 9
    assert events[1].entity_id == str(study_id)


def test_a_new_series_updates_series_count_and_modalities(engine: Engine) -> None:
    seed_study(
        engine,
        orthanc_study(
            STUDY_UID, series=[SeriesSpec(uid=f"{STUDY_UID}.1", number=1, modality="CT")]
        ),
    )
    seed_study(
        engine,
        orthanc_study(
            STUDY_UID,
            series=[
                SeriesSpec(uid=f"{STUDY_UID}.1", number=1, modality="CT"),
                SeriesSpec(uid=f"{STUDY_UID}.2", number=2, modality="SR", instances=1),
            ],
        ),
    )

    row = the_study(engine)
    assert (row.series_count, row.instance_count, row.modalities) == (2, 3, "CT,SR")
    assert [e.action for e in audit_events(engine)] == ["study.registered", "study.images_updated"]


def test_clinical_context_set_by_a_user_survives_registration(engine: Engine) -> None:
    study_id = seed_study(engine, two_series(), with_images=False)
    with Session(engine) as session:
        row = session.get(Study, study_id)
        assert row is not None
        row.study_description = "CT CHEST - CORRECTED"
        row.referring_physician = "WILSON^JAMES"
        row.accession_number = "ORD-1"
        row.body_part = "THORAX"
        session.add(row)
        session.commit()
    grown = with_more_instances(two_series(), series_index=1, extra=1)

    seed_study(engine, grown)

    row = the_study(engine)
    assert row.study_description == "CT CHEST - CORRECTED"
    assert row.referring_physician == "WILSON^JAMES"
    assert row.accession_number == "ORD-1"
    assert row.body_part == "THORAX"
    # What Orthanc stores always wins.
    assert (row.series_count, row.instance_count) == (2, 6)
    assert row.modalities == "CT"
    assert row.orthanc_id == grown.orthanc_id


def test_orthanc_id_follows_orthanc(engine: Engine) -> None:
    study = two_series()
    seed_study(engine, study, with_images=False)
    moved = two_series()
    moved.study_json["ID"] = "00000000-11111111-22222222-33333333-44444444"

    seed_study(engine, moved, with_images=False)

    assert the_study(engine).orthanc_id == "00000000-11111111-22222222-33333333-44444444"


def test_an_announced_study_fills_its_empty_fields_from_dicom(engine: Engine) -> None:
    announce(
        engine,
        patient_id="PAT-ORDER",
        accession_number="ORD-9",
        study_description=None,
        modalities="MR",
    )

    seed_study(engine, two_series())

    row = the_study(engine)
    assert (row.patient_id, row.accession_number) == ("PAT-ORDER", "ORD-9")
    assert row.study_description == "CT CHEST W/O CONTRAST"
    assert row.patient_name == "DOE^JANE"
    assert row.study_date == date(2024, 1, 15)
    assert row.modalities == "CT"


@pytest.mark.parametrize(
    "status", [StudyStatus.SCHEDULED, StudyStatus.ARRIVED, StudyStatus.IN_PROGRESS]
)
def test_images_complete_an_announced_study(engine: Engine, status: StudyStatus) -> None:
    study_id = announce(engine, patient_id="PAT-ORDER")
    with Session(engine) as session:
        row = session.get(Study, study_id)
        assert row is not None
        row.status = status
        session.add(row)
        session.commit()

    assert seed_study(engine, two_series()) == study_id

    assert the_study(engine).status is StudyStatus.COMPLETED
    assert count(engine, Study) == 1
    [event] = audit_events(engine)
    assert event.action == "study.images_updated"
    assert event.detail["status"] == "COMPLETED"


@pytest.mark.parametrize(
    "status",
    [StudyStatus.COMPLETED, StudyStatus.PRELIMINARY, StudyStatus.FINAL, StudyStatus.CANCELLED],
)
def test_late_images_do_not_move_a_study_past_acquisition(
    engine: Engine, status: StudyStatus
) -> None:
    study_id = seed_study(engine, two_series())
    with Session(engine) as session:
        row = session.get(Study, study_id)
        assert row is not None
        row.status = status
        session.add(row)
        session.commit()

    seed_study(engine, with_more_instances(two_series(), 0, 1))

    row = the_study(engine)
    assert row.status is status
    assert row.instance_count == 6


def test_register_images_is_idempotent(engine: Engine) -> None:
    study = two_series()
    with Session(engine) as session:
        row = register_study(session, study.record())
        first = register_images(session, row, study.images())
        second = register_images(session, row, study.images())
        session.commit()
        assert row.id is not None
        known = known_image_orthanc_ids(session, row.id)

    assert (first, second) == (5, 0)
    assert count(engine, Image) == 5
    assert known == set(study.instance_ids())


def test_register_images_adds_only_the_new_ones(engine: Engine) -> None:
    study = two_series()
    seed_study(engine, study)
    grown = with_more_instances(study, 1, 2)
    with Session(engine) as session:
        row = register_study(session, grown.record())
        created = register_images(session, row, grown.images())
        session.commit()

    assert created == 2
    assert count(engine, Image) == 7


def test_register_images_ignores_instances_of_unknown_series(engine: Engine) -> None:
    study = two_series()
    stray = orthanc_study(f"{UID_ROOT}.8", series=[SeriesSpec(uid=f"{UID_ROOT}.8.1")])
    with Session(engine) as session:
        row = register_study(session, study.record())
        created = register_images(session, row, stray.images())
        session.commit()

    assert created == 0
    assert count(engine, Image) == 0


def test_images_are_linked_to_their_series_with_parsed_attributes(engine: Engine) -> None:
    seed_study(engine, two_series())

    with Session(engine) as session:
        series = {s.id: s.series_instance_uid for s in session.exec(select(Series))}
        images = session.exec(select(Image)).all()
        by_series = sorted((series[i.series_id], i.instance_number) for i in images)
        sample = images[0]

    assert by_series == [
        (f"{STUDY_UID}.1", 1),
        (f"{STUDY_UID}.1", 2),
        (f"{STUDY_UID}.2", 1),
        (f"{STUDY_UID}.2", 2),
        (f"{STUDY_UID}.2", 3),
    ]
    assert (sample.rows, sample.columns) == (512, 512)
    assert (sample.pixel_spacing_row, sample.pixel_spacing_column) == (0.703125, 0.703125)
    assert (sample.window_center, sample.window_width) == (40.0, 400.0)
    assert sample.slice_thickness == 5.0
