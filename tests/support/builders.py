"""Small builders of what Orthanc answers, and of what the sidecar records from it.

`orthanc_study(...)` returns an OrthancStudy holding the three JSON answers the sidecar reads for
one study, shaped like Orthanc's own (GET /studies/{id}, GET /studies/{id}/series and
GET /studies/{id}/instances-tags?short), so tests go through sidecar.ingest.dicom_mapping as
production does. Identifiers are derived from the UIDs, so the same arguments always give the same
study.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from sidecar.core.audit import AuditEvent
from sidecar.ingest.dicom_mapping import ImageRecord, StudyRecord, image_records, study_record
from sidecar.studies.registry import register_images, register_study

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
UID_ROOT = "1.2.826.0.1.3680043.8.498"


def orthanc_id(seed: str) -> str:
    """An identifier shaped like Orthanc's (five groups of eight hex digits)."""
    digest = hashlib.sha256(seed.encode()).hexdigest()[:40]
    return "-".join(digest[i : i + 8] for i in range(0, 40, 8))


@dataclass(frozen=True)
class SeriesSpec:
    uid: str
    number: int | None = 1
    modality: str | None = "CT"
    instances: int = 2
    description: str | None = "AXIAL 5mm"
    body_part: str | None = "CHEST"
    pixel_spacing: str | None = "0.703125\\0.703125"
    # Instance numbers in the order Orthanc lists the instances (default 1..instances).
    instance_numbers: Sequence[int | None] | None = None

    def sop_uids(self) -> list[str]:
        return [f"{self.uid}.{n}" for n in range(1, self.instances + 1)]


@dataclass
class OrthancStudy:
    study_json: dict[str, Any]
    series_json: list[dict[str, Any]]
    instances_tags: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def orthanc_id(self) -> str:
        return str(self.study_json["ID"])

    @property
    def uid(self) -> str:
        return str(self.study_json["MainDicomTags"]["StudyInstanceUID"])

    def instance_ids(self) -> list[str]:
        return [i for series in self.series_json for i in series["Instances"]]

    def record(self) -> StudyRecord:
        return study_record(self.study_json, self.series_json)

    def images(self) -> list[ImageRecord]:
        return image_records(self.instances_tags)


def orthanc_study(
    uid: str = f"{UID_ROOT}.1",
    *,
    series: Sequence[SeriesSpec] | None = None,
    accession_number: str | None = "ACC0001",
    patient_id: str | None = "PAT-0001",
    patient_name: str = "DOE^JANE",
    birth_date: str = "19700101",
    sex: str = "F",
    study_date: str = "20240115",
    study_time: str = "101500.000000",
    description: str | None = "CT CHEST W/O CONTRAST",
    referring_physician: str = "HOUSE^GREGORY",
    is_stable: bool = True,
    last_update: str = "20240115T101800",
) -> OrthancStudy:
    series = list(series) if series is not None else [SeriesSpec(uid=f"{uid}.1")]
    # As Orthanc does: a resource's id hashes its patient's id with its own identifiers, so one
    # UID under two patient ids is two Orthanc studies.
    patient_key = f"{patient_id}|"
    study_oid = orthanc_id(patient_key + uid)
    main_tags: dict[str, Any] = {
        "StudyInstanceUID": uid,
        "StudyDate": study_date,
        "StudyTime": study_time,
        "StudyID": "1",
        "ReferringPhysicianName": referring_physician,
        "InstitutionName": "GENERAL HOSPITAL",
    }
    if accession_number is not None:
        main_tags["AccessionNumber"] = accession_number
    if description is not None:
        main_tags["StudyDescription"] = description
    patient_tags: dict[str, Any] = {
        "PatientName": patient_name,
        "PatientBirthDate": birth_date,
        "PatientSex": sex,
    }
    if patient_id is not None:
        patient_tags["PatientID"] = patient_id
    series_json = []
    tags: dict[str, dict[str, Any]] = {}
    for spec in series:
        instance_ids = [orthanc_id(patient_key + sop) for sop in spec.sop_uids()]
        series_tags: dict[str, Any] = {"SeriesInstanceUID": spec.uid}
        optional = {
            "SeriesNumber": None if spec.number is None else str(spec.number),
            "Modality": spec.modality,
            "SeriesDescription": spec.description,
            "BodyPartExamined": spec.body_part,
        }
        series_tags.update({k: v for k, v in optional.items() if v is not None})
        series_json.append(
            {
                "ID": orthanc_id(patient_key + spec.uid),
                "Type": "Series",
                "ParentStudy": study_oid,
                "Instances": instance_ids,
                "ExpectedNumberOfInstances": None,
                "Status": "Unknown",
                "IsStable": is_stable,
                "MainDicomTags": series_tags,
            }
        )
        numbers = list(spec.instance_numbers or range(1, spec.instances + 1))
        for instance_id, sop_uid, number in zip(
            instance_ids, spec.sop_uids(), numbers, strict=True
        ):
            instance_tags: dict[str, Any] = {
                "0008,0016": CT_IMAGE_STORAGE if spec.modality == "CT" else MR_IMAGE_STORAGE,
                "0008,0018": sop_uid,
                "0020,000e": spec.uid,
                "0028,0010": "512",
                "0028,0011": "512",
                "0018,0050": "5.000000",
                "0028,1050": "40\\400",
                "0028,1051": "400\\1500",
            }
            if number is not None:
                instance_tags["0020,0013"] = str(number)
            if spec.pixel_spacing is not None:
                instance_tags["0028,0030"] = spec.pixel_spacing
            tags[instance_id] = instance_tags
    study_json = {
        "ID": study_oid,
        "Type": "Study",
        "IsStable": is_stable,
        "LastUpdate": last_update,
        "ParentPatient": orthanc_id(f"patient:{patient_id}"),
        "Series": [s["ID"] for s in series_json],
        "MainDicomTags": main_tags,
        "PatientMainDicomTags": patient_tags,
    }
    return OrthancStudy(study_json=study_json, series_json=series_json, instances_tags=tags)


def with_more_instances(study: OrthancStudy, series_index: int, extra: int) -> OrthancStudy:
    """The same study after `extra` late instances arrived in one of its series."""
    specs = []
    for index, series in enumerate(study.series_json):
        tags = series["MainDicomTags"]
        count = len(series["Instances"]) + (extra if index == series_index else 0)
        number = tags.get("SeriesNumber")
        specs.append(
            SeriesSpec(
                uid=tags["SeriesInstanceUID"],
                number=None if number is None else int(number),
                modality=tags.get("Modality"),
                instances=count,
                description=tags.get("SeriesDescription"),
                body_part=tags.get("BodyPartExamined"),
            )
        )
    main, patient = study.study_json["MainDicomTags"], study.study_json["PatientMainDicomTags"]
    return orthanc_study(
        main["StudyInstanceUID"],
        series=specs,
        accession_number=main.get("AccessionNumber"),
        patient_id=patient.get("PatientID"),
        patient_name=patient["PatientName"],
        birth_date=patient["PatientBirthDate"],
        sex=patient["PatientSex"],
        study_date=main["StudyDate"],
        study_time=main["StudyTime"],
        description=main.get("StudyDescription"),
        referring_physician=main["ReferringPhysicianName"],
        is_stable=study.study_json["IsStable"],
        last_update=study.study_json["LastUpdate"] + "1",
    )


def unstable(study: OrthancStudy) -> OrthancStudy:
    return replace(study, study_json={**study.study_json, "IsStable": False})


def seed_study(engine: Engine, study: OrthancStudy, *, with_images: bool = True) -> int:
    """Registers a study (and its images) the way the sync worker does; returns its id."""
    with Session(engine) as session:
        row = register_study(session, study.record())
        if with_images:
            register_images(session, row, study.images())
        session.commit()
        assert row.id is not None
        return row.id


def audit_events(engine: Engine, action: str | None = None) -> list[AuditEvent]:
    with Session(engine) as session:
        query = select(AuditEvent).order_by(col(AuditEvent.id))
        if action is not None:
            query = query.where(AuditEvent.action == action)
        return list(session.exec(query).all())
