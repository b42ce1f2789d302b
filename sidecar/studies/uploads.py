"""DICOM files uploaded into a study through the API (`POST /api/studies/{id}/images`).

Receiving (`receive`, in the event loop): a multipart body (field `files`, one or more files) or
one `application/dicom` body, each file written to a SpooledTemporaryFile (in memory up to 1 MB,
on disk past it) as it arrives. A file past UPLOAD_MAX_MB is not kept beyond the limit: the rest
of it is discarded as it streams by, and the file is refused.

Storing (`store_files`, in a worker thread): each file is read with pydicom and must belong to
the study: its Study Instance UID is the study's (and its PatientID the study's patient id), or,
asked with `assign=true`, it carries another UID but the study's accession number and patient id,
and is then written again with the study's Study Instance UID (nothing else changes). A file that
is not DICOM, broken, too large or of another study is refused and nothing of it is stored; the
others are stored in Orthanc one by one, each outcome reported. Orthanc's ingress filter refusing
a UID stored under another patient id is a refusal of that file (409), never a server error.
The Orthanc studies that received instances are queued for registration (sidecar.ingest.queue),
so the sync worker lists the new instances.

Refusals name a file by its index and the name the uploader gave it, never by patient data; the
audit event (`study.images_uploaded`) holds counts and SOP Instance UIDs only.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import IO

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from sqlmodel import Session, select

from sidecar.core import audit
from sidecar.core.models import ApiModel
from sidecar.ingest.orthanc_client import (
    OrthancClient,
    OrthancRefusedInstance,
    OrthancUnavailable,
)
from sidecar.ingest.queue import queue_studies
from sidecar.studies.models import Image, Study
from sidecar.studies.upload_body import ReceivedFile, UploadRefused, spooled

log = logging.getLogger(__name__)

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
#: The source recorded in the registration queue (sidecar.ingest.queue).
QUEUE_SOURCE = "upload"


# -- storing ------------------------------------------------------------------------------------


class FileStatus(StrEnum):
    STORED = "stored"
    ALREADY_STORED = "already_stored"
    REFUSED = "refused"


class FileOutcome(ApiModel):
    """What became of one uploaded file."""

    index: int
    filename: str | None
    status: FileStatus
    sop_instance_uid: str | None = None
    orthanc_id: str | None = None
    # True when the file's Study Instance UID was rewritten to the study's (assign=true).
    assigned: bool = False
    # A refused file: the status it alone would answer (413, 415, 409, 422, 503) and why.
    http_status: int | None = None
    reason: str | None = None


class UploadResult(ApiModel):
    study_id: int
    stored: int
    already_stored: int
    refused: int
    files: list[FileOutcome]


class _FileRefused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class _Checked:
    content: IO[bytes]
    size: int
    sop_instance_uid: str
    assigned: bool


def store_files(
    session: Session,
    orthanc: OrthancClient,
    study: Study,
    files: Iterable[ReceivedFile],
    *,
    assign: bool,
    limit_mb: int,
    actor: str,
    now: datetime,
) -> UploadResult:
    """Checks and stores each file; queues the Orthanc studies that received any for
    registration and records the audit event, committing both. Never raises for a file."""
    outcomes: list[FileOutcome] = []
    orthanc_studies: list[str] = []
    unavailable = False
    for received in files:
        outcome = FileOutcome(
            index=received.index, filename=received.filename, status=FileStatus.REFUSED
        )
        outcomes.append(outcome)
        if unavailable:
            outcome.http_status, outcome.reason = 503, "not sent: Orthanc is unavailable"
            continue
        try:
            checked = _check(session, study, received, assign=assign, limit_mb=limit_mb)
            outcome.sop_instance_uid, outcome.assigned = checked.sop_instance_uid, checked.assigned
            try:
                stored = orthanc.upload_instance(checked.content, checked.size)
            finally:
                if checked.content is not received.content:
                    checked.content.close()
        except _FileRefused as refused:
            outcome.http_status, outcome.reason = refused.status, refused.reason
            continue
        except OrthancRefusedInstance as refused:
            outcome.http_status = 409 if refused.conflict else 422
            outcome.reason = f"Orthanc refused it: {refused}"
            continue
        except OrthancUnavailable as exc:
            log.warning("upload into study %s: Orthanc unavailable (%s)", study.id, exc)
            unavailable = True
            outcome.http_status, outcome.reason = 503, "not stored: Orthanc is unavailable"
            continue
        outcome.status = FileStatus.ALREADY_STORED if stored.already_stored else FileStatus.STORED
        outcome.orthanc_id = stored.instance_id
        orthanc_studies.append(stored.study_id)
    result = UploadResult(
        study_id=study.id or 0,
        stored=sum(o.status == FileStatus.STORED for o in outcomes),
        already_stored=sum(o.status == FileStatus.ALREADY_STORED for o in outcomes),
        refused=sum(o.status == FileStatus.REFUSED for o in outcomes),
        files=outcomes,
    )
    queue_studies(session, orthanc_studies, QUEUE_SOURCE, now=now)
    audit.record(
        session,
        actor=actor,
        action="study.images_uploaded",
        entity_type="study",
        entity_id=study.id,
        files=len(outcomes),
        stored=result.stored,
        already_stored=result.already_stored,
        refused=result.refused,
        assigned=sum(o.assigned for o in outcomes if o.status != FileStatus.REFUSED),
        sop_instance_uids=[o.sop_instance_uid for o in outcomes if o.status == FileStatus.STORED],
        orthanc_ids=sorted(set(orthanc_studies)),
    )
    session.commit()
    return result


def refusal_of(result: UploadResult) -> UploadRefused | None:
    """The refusal to answer when no file was stored (nor found stored already): the status
    the files share, else 422; None when any file is in Orthanc."""
    if result.stored or result.already_stored:
        return None
    statuses = {o.http_status or 422 for o in result.files}
    status = statuses.pop() if len(statuses) == 1 else 422
    return UploadRefused(
        "no file was stored",
        status_code=status,
        details=[
            {
                "location": f"files[{o.index}]",
                "message": (f"{o.filename}: " if o.filename else "") + (o.reason or "refused"),
            }
            for o in result.files
        ],
    )


def _check(
    session: Session, study: Study, received: ReceivedFile, *, assign: bool, limit_mb: int
) -> _Checked:
    """The file to store, or _FileRefused saying why not."""
    if received.oversize:
        raise _FileRefused(413, f"larger than the upload limit (UPLOAD_MAX_MB, {limit_mb} MB)")
    if received.size == 0:
        raise _FileRefused(415, "empty: not a DICOM file")
    received.content.seek(0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = pydicom.dcmread(received.content)
            uids = _uids(dataset)
            _check_pixels(dataset)
    except InvalidDicomError:
        raise _FileRefused(
            415, "not a DICOM file (a DICOM file starts with a preamble and 'DICM')"
        ) from None
    except _FileRefused:
        raise
    except Exception:
        raise _FileRefused(422, "a broken DICOM file: it cannot be read") from None
    sop_uid, study_uid = uids["SOPInstanceUID"], uids["StudyInstanceUID"]
    file_patient = _text(dataset, "PatientID")
    assigned = False
    if study_uid != study.study_instance_uid:
        if not assign:
            raise _FileRefused(
                422,
                "belongs to another study: its Study Instance UID is not this study's "
                "(assign=true files it under this study when its accession number and patient "
                "id are the study's)",
            )
        if not (
            study.accession_number
            and study.patient_id
            and _text(dataset, "AccessionNumber") == study.accession_number
            and file_patient == study.patient_id
        ):
            raise _FileRefused(
                422,
                "belongs to another study: its Study Instance UID is not this study's, and its "
                "accession number and patient id are not both the study's",
            )
        assigned = True
    elif study.patient_id and file_patient != study.patient_id:
        raise _FileRefused(422, "names another patient id than the study's: not stored")
    elsewhere = session.exec(
        select(Image.study_id).where(Image.sop_instance_uid == sop_uid, Image.study_id != study.id)
    ).first()
    if elsewhere is not None:
        raise _FileRefused(
            409, f"its SOP Instance UID is already stored in another study ({elsewhere})"
        )
    if not assigned:
        return _Checked(received.content, received.size, sop_uid, assigned=False)
    dataset.StudyInstanceUID = study.study_instance_uid
    rewritten = spooled()
    try:
        dataset.save_as(rewritten, enforce_file_format=True)
    except Exception:
        rewritten.close()
        raise _FileRefused(422, "a broken DICOM file: it cannot be written again") from None
    return _Checked(rewritten, rewritten.tell(), sop_uid, assigned=True)


def _text(dataset: Dataset, keyword: str) -> str:
    return str(dataset.get(keyword, "") or "").strip()


def _uids(dataset: Dataset) -> dict[str, str]:
    found = {}
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        value = _text(dataset, keyword)
        if not value or len(value) > 64 or not _UID.match(value):
            raise _FileRefused(422, f"a broken DICOM file: no valid {keyword}")
        found[keyword] = value
    return found


def _check_pixels(dataset: Dataset) -> None:
    """Refuses an image whose pixel data is missing or cut short (pydicom reads a truncated
    file without a word). Compressed pixel data is left to Orthanc."""
    pixel_keywords = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
    if "Rows" not in dataset:
        return
    if not any(keyword in dataset for keyword in pixel_keywords):
        raise _FileRefused(422, "a broken DICOM file: an image without pixel data (cut short?)")
    if "PixelData" not in dataset:
        return
    syntax = dataset.file_meta.get("TransferSyntaxUID")
    if syntax is None or syntax.is_compressed:
        return
    bits = int(dataset.get("BitsAllocated") or 0)
    frames = int(dataset.get("NumberOfFrames") or 1)
    samples = int(dataset.get("SamplesPerPixel") or 1)
    pixels = int(dataset.Rows) * int(dataset.get("Columns") or 0) * samples * frames
    expected = (pixels * bits + 7) // 8
    if len(dataset.PixelData) < expected:
        raise _FileRefused(422, "a broken DICOM file: its pixel data is cut short")
