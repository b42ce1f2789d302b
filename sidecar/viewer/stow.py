"""STOW-RS through the viewer fronts (PS3.18 10.5): a radiologist or an administrator stores
instances (the viewer's measurements as a DICOM SR, key images, presentation states) into a
study they may see. Orthanc's DICOMweb plugin stores them; the fronts decide what reaches it.

Who: the roles of STOW_ROLES (an analyzer too: its results, into the study of a work item it
holds), refused with 403 before the body is read. Where: each instance
must name a study the sidecar has registered and the user may read through the viewer (their
care scope, sidecar.access.care_scope, as the fronts check a read; not a quarantined study),
carry that study's patient id (another patient's id would file it in Orthanc as another
patient's study), and a SOP Instance UID that is not stored in another study. For
`POST /dicom-web/studies/{study}`, each instance must also be of that study. Checked here, per
instance, on the instance itself (its Study Instance UID, not what the request claims).

The answer keeps the plugin's format (DICOM JSON: 00081190 RetrieveURL, 00081198
FailedSOPSequence, 00081199 ReferencedSOPSequence) and the standard's statuses: 200 all stored,
202 some stored and some refused, 409 none stored for a conflict (another study than the path's,
another patient id, a SOP Instance UID of another study), 403 none stored because no instance
named a study the user may see. An instance refused here is listed in 00081198 with a failure
reason of PS3.4 (0x0124 "not authorized", 0x0110 "processing failure", as the plugin answers a
study mismatch): a study the user may not see answers as one that does not exist.

The studies that received instances are queued for registration (sidecar.ingest.queue), so the
sidecar lists the new instances without waiting for Orthanc's stable-study notice, and each is
audited (`study.instances_stored_via_stow`: who, the study, how many, their SOP Instance UIDs,
never patient data).
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pydicom
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from sidecar.access.care_scope import CareScope
from sidecar.accounts.models import Role, User
from sidecar.core import audit
from sidecar.ingest.orthanc_client import OrthancClient, OrthancError
from sidecar.ingest.queue import queue_studies
from sidecar.studies.models import Image, Study
from sidecar.viewer.access import Viewer
from sidecar.viewer.stow_body import StowPart, StowRefused

log = logging.getLogger(__name__)

#: An analyzer stores its results into the study of a work item it holds (its care scope).
STOW_ROLES = frozenset({Role.ADMIN, Role.RADIOLOGIST, Role.ANALYZER})
#: PS3.4 failure reasons (FailureReason, 00081197).
NOT_AUTHORIZED = 0x0124
PROCESSING_FAILURE = 0x0110
QUEUE_SOURCE = "stow"
AUDIT_ACTION = "study.instances_stored_via_stow"
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_CHUNK = 1024 * 1024

FAILED_SOPS = "00081198"
REFERENCED_SOPS = "00081199"
_SOP_CLASS = "00081150"
_SOP_INSTANCE = "00081155"
_FAILURE_REASON = "00081197"


@dataclass(frozen=True)
class Instance:
    part: StowPart
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    patient_id: str


@dataclass(frozen=True)
class Refused:
    sop_class_uid: str
    sop_instance_uid: str
    reason: int


@dataclass
class Plan:
    """What goes to Orthanc, and what was refused here."""

    accepted: list[Instance] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)
    # StudyInstanceUID -> (sidecar study id, patient id) of the studies accepted instances name.
    studies: dict[str, tuple[int, str | None]] = field(default_factory=dict)


def read_instances(parts: Sequence[StowPart]) -> list[Instance]:
    """Each part's identifying UIDs; a part that is not a readable DICOM file refuses the
    request (400), named by its index."""
    found = []
    for part in parts:
        part.content.seek(0)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dataset = pydicom.dcmread(part.content, stop_before_pixels=True)
            uids = {
                keyword: str(dataset.get(keyword, "") or "").strip()
                for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID")
            }
            patient_id = str(dataset.get("PatientID", "") or "").strip()
        except Exception:
            raise StowRefused(
                f"part {part.index} is not a readable DICOM file (Part 10)", status_code=400
            ) from None
        for keyword, value in uids.items():
            if len(value) > 64 or not _UID.match(value):
                raise StowRefused(f"part {part.index} has no valid {keyword}", status_code=400)
        found.append(
            Instance(
                part,
                uids["SOPClassUID"],
                uids["SOPInstanceUID"],
                uids["StudyInstanceUID"],
                patient_id,
            )
        )
    return found


def plan(
    engine: Engine,
    viewer: Viewer,
    instances: Sequence[Instance],
    path_study: str | None,
    now: datetime,
) -> Plan:
    """Which instances may go to Orthanc (the module docstring's rules). Reads the database:
    call it off the event loop."""
    decided = Plan()
    with Session(engine) as session:
        user = session.get(User, viewer.user_id)
        named = {i.study_instance_uid for i in instances}
        query = select(Study).where(col(Study.study_instance_uid).in_(named))
        if user is not None:
            query = query.where(*CareScope(user, now).studies())
        visible = {
            study.study_instance_uid: study
            for study in (session.exec(query).all() if user is not None else ())
            if study.conflicting_patient_ids is None  # quarantined: not shown, not stored into
        }
        for instance in instances:
            reason = _refusal(session, instance, visible, path_study)
            if reason is not None:
                decided.refused.append(
                    Refused(instance.sop_class_uid, instance.sop_instance_uid, reason)
                )
                continue
            study = visible[instance.study_instance_uid]
            assert study.id is not None
            decided.accepted.append(instance)
            decided.studies[instance.study_instance_uid] = (study.id, study.patient_id)
    return decided


def _refusal(
    session: Session, instance: Instance, visible: dict[str, Study], path_study: str | None
) -> int | None:
    if path_study is not None and instance.study_instance_uid != path_study:
        return PROCESSING_FAILURE  # as the plugin answers it
    study = visible.get(instance.study_instance_uid)
    if study is None:
        return NOT_AUTHORIZED  # unknown, out of reach or quarantined: all alike
    # Another patient id, or one where the study has none, would become another Orthanc study.
    if instance.patient_id != (study.patient_id or ""):
        return PROCESSING_FAILURE
    elsewhere = session.exec(
        select(Image.study_id).where(
            Image.sop_instance_uid == instance.sop_instance_uid, Image.study_id != study.id
        )
    ).first()
    return PROCESSING_FAILURE if elsewhere is not None else None


def _part_head(boundary: str) -> bytes:
    return f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()


def multipart_body(instances: Sequence[Instance], boundary: str) -> Iterator[bytes]:
    """The accepted instances as a STOW-RS body, read from their spooled files in chunks."""
    for instance in instances:
        yield _part_head(boundary)
        content = instance.part.content
        content.seek(0)
        while chunk := content.read(_CHUNK):
            yield chunk
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


def body_size(instances: Sequence[Instance], boundary: str) -> int:
    """The length of multipart_body's output."""
    head = len(_part_head(boundary)) + 2
    return sum(head + i.part.size for i in instances) + len(f"--{boundary}--\r\n")


def by_study(instances: Sequence[Instance]) -> dict[str, list[Instance]]:
    """The accepted instances, per study: each study is sent to Orthanc as
    `POST /dicom-web/studies/{study}`, so that the plugin checks every instance's study again
    with its own DICOM parser (a file crafted to read one way here and another way there, a
    repeated Study Instance UID, is then refused by Orthanc rather than stored elsewhere)."""
    grouped: dict[str, list[Instance]] = {}
    for instance in instances:
        grouped.setdefault(instance.study_instance_uid, []).append(instance)
    return grouped


def merge(answers: Sequence[tuple[int, dict[str, Any]]]) -> tuple[int, dict[str, Any]]:
    """Orthanc's answers to the per-study requests, as one."""
    if len(answers) == 1:
        return answers[0]
    merged: dict[str, Any] = {}
    for key in (REFERENCED_SOPS, FAILED_SOPS):
        items = [i for _, body in answers for i in body.get(key, {}).get("Value", []) or []]
        merged[key] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
    return max(status for status, _ in answers), merged


def answer(decided: Plan, stored: tuple[int, dict[str, Any]] | None) -> tuple[int, dict[str, Any]]:
    """The status and DICOM JSON to answer: Orthanc's answer (None when nothing was sent to
    it) with the instances refused here added to its FailedSOPSequence."""
    status, body = stored if stored is not None else (409, {})
    body = dict(body) if isinstance(body, dict) else {}
    body.setdefault("00080005", {"vr": "CS", "Value": ["ISO_IR 100"]})
    failed = list(body.get(FAILED_SOPS, {}).get("Value", []))
    for refused in decided.refused:
        failed.append(
            {
                _SOP_CLASS: {"vr": "UI", "Value": [refused.sop_class_uid]},
                _SOP_INSTANCE: {"vr": "UI", "Value": [refused.sop_instance_uid]},
                _FAILURE_REASON: {"vr": "US", "Value": [refused.reason]},
            }
        )
    body[FAILED_SOPS] = {"vr": "SQ", "Value": failed} if failed else {"vr": "SQ"}
    referenced = referenced_sops(body)
    body.setdefault(REFERENCED_SOPS, {"vr": "SQ"})
    if referenced and failed:
        return 202, body
    if referenced:
        return (status if status < 300 else 202), body
    if stored is not None and status >= 400 and not decided.refused:
        return status, body
    reasons = {r.reason for r in decided.refused}
    return (403 if reasons == {NOT_AUTHORIZED} else 409), body


def referenced_sops(body: dict[str, Any]) -> list[str]:
    """The SOP Instance UIDs of a STOW-RS answer's ReferencedSOPSequence."""
    found = []
    for item in body.get(REFERENCED_SOPS, {}).get("Value", []) or []:
        values = item.get(_SOP_INSTANCE, {}).get("Value") if isinstance(item, dict) else None
        if values:
            found.append(str(values[0]))
    return found


def record(
    engine: Engine,
    orthanc: OrthancClient,
    viewer: Viewer,
    decided: Plan,
    stored_sops: Sequence[str],
    now: datetime,
) -> None:
    """Queues the studies that received instances for registration and audits what each
    received. Reads Orthanc and the database: call it off the event loop."""
    by_study: dict[str, list[str]] = {}
    stored = set(stored_sops)
    for instance in decided.accepted:
        if instance.sop_instance_uid in stored:
            by_study.setdefault(instance.study_instance_uid, []).append(instance.sop_instance_uid)
    if not by_study:
        return
    orthanc_ids = []
    for uid in by_study:
        _, patient_id = decided.studies[uid]
        try:
            held = orthanc.studies_with_uid(uid)
        except OrthancError as exc:  # the plugin's notice and /changes still register it
            log.warning("STOW-RS: cannot look the study up in Orthanc (%s)", exc)
            continue
        orthanc_ids += [i for i, pid in held.items() if not patient_id or pid == patient_id]
    with Session(engine) as session:
        queue_studies(session, orthanc_ids, QUEUE_SOURCE, now=now)
        for uid, sops in by_study.items():
            study_id, _ = decided.studies[uid]
            audit.record(
                session,
                actor=viewer.username,
                action=AUDIT_ACTION,
                entity_type="study",
                entity_id=study_id,
                role=viewer.role,
                count=len(sops),
                sop_instance_uids=sorted(sops),
            )
        session.commit()
    log.info(
        "STOW-RS: %d instances stored into %d studies by user %s",
        len(stored),
        len(by_study),
        viewer.user_id,
    )
