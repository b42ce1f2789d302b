"""One scheduled procedure step as the worklist offers it (`WorklistItem`), checked against the
DICOM value representations its attributes take, and written as a DICOM file a modality reads
(``encode``) with the values the reader pre-filters on (``index_keys``)."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, tzinfo

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from sidecar.core import dicom_text
from sidecar.core.models import time_problem

MODALITY_WORKLIST_FIND = UID("1.2.840.10008.5.1.4.31")
# Keys become file names: no path separators, no leading dot (temporary and lock files).
KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_CODE_STRING = re.compile(r"[A-Z0-9_ ]{1,16}\Z")
# (0040,1003) Requested Procedure Priority has the defined terms STAT, HIGH, ROUTINE, MEDIUM, LOW.
_PRIORITIES = {"STAT": "STAT", "URGENT": "HIGH", "ROUTINE": "ROUTINE"}
_SEXES = {"M", "F", "O", ""}
#: The Coding Scheme Designator of a code whose scheme the order does not name: a local scheme
#: (PS3.16 8.2: private coding schemes begin with 99).
LOCAL_CODING_SCHEME = "99LOCAL"
#: Code Value (0008,0100) is SH; a longer code goes in Long Code Value (0008,0119), UC.
_CODE_VALUE_LENGTH = 16


@dataclass(frozen=True)
class WorklistItem:
    """One scheduled procedure step offered to modalities.

    ``key`` (the order id) names the file. Requested procedure id and step id are type 1 in the
    worklist answer: use the accession number when the order has none. An empty
    ``scheduled_station_aet`` is allowed (the order names no room); such an item never matches
    a query by station.
    """

    key: str
    accession_number: str
    requested_procedure_id: str
    requested_procedure_description: str
    study_instance_uid: str
    patient_id: str
    issuer_of_patient_id: str
    patient_name: str  # DICOM PN, "FAMILY^GIVEN"
    patient_birth_date: date | None
    patient_sex: str  # M, F, O or ""
    referring_physician: str  # DICOM PN
    modality: str
    scheduled_station_aet: str
    scheduled_start: datetime  # timezone-aware
    step_description: str
    step_id: str
    priority: str = "ROUTINE"  # STAT, URGENT or ROUTINE
    # The Requested Procedure Code Sequence (when the order names a code), the Scheduled
    # Protocol Code Sequence (when it names a protocol) and the Scheduled Station Name.
    procedure_code: str = ""
    procedure_coding_system: str = ""
    protocol_code: str = ""
    scheduled_station_name: str = ""

    def __post_init__(self) -> None:
        if not KEY.match(self.key):
            raise ValueError(f"worklist key {self.key!r}: 1-64 of A-Z a-z 0-9 . _ -")
        for name, rule in _REQUIRED_TEXTS.items():
            _check_text(name, getattr(self, name), rule, required=True)
        for name, rule in _OPTIONAL_TEXTS.items():
            _check_text(name, getattr(self, name), rule)
        if not _CODE_STRING.match(self.modality):
            raise ValueError(f"modality {self.modality!r}: 1-16 of A-Z 0-9 _ and space")
        if not self.scheduled_station_aet.isascii():
            raise ValueError("scheduled_station_aet must be ASCII (DICOM AE)")
        if self.patient_sex not in _SEXES:
            raise ValueError(f"patient_sex {self.patient_sex!r}: one of M, F, O or empty")
        if self.priority not in _PRIORITIES:
            raise ValueError(f"priority {self.priority!r}: one of {', '.join(_PRIORITIES)}")
        if self.scheduled_start.utcoffset() is None:
            raise ValueError("scheduled_start must be timezone-aware")
        if (problem := time_problem(self.scheduled_start)) is not None:
            raise ValueError(f"scheduled_start {problem}")


# Each text attribute and its DICOM value representation (sidecar.core.dicom_text: the same rules
# the API and the HL7 intake apply to orders before accepting them).
_REQUIRED_TEXTS = {
    "accession_number": dicom_text.SH,
    "requested_procedure_id": dicom_text.SH,
    "step_id": dicom_text.SH,
    "patient_id": dicom_text.LO,
    "study_instance_uid": dicom_text.UI,
}
_OPTIONAL_TEXTS = {
    "issuer_of_patient_id": dicom_text.LO,
    "requested_procedure_description": dicom_text.LO,
    "step_description": dicom_text.LO,
    "scheduled_station_aet": dicom_text.AE,
    "scheduled_station_name": dicom_text.SH,
    "procedure_code": dicom_text.TextRule("DICOM code value", 64),
    "procedure_coding_system": dicom_text.SH,
    "protocol_code": dicom_text.SH,
    "patient_name": dicom_text.PN,
    "referring_physician": dicom_text.PN,
}


def _check_text(
    name: str, value: str, rule: dicom_text.TextRule, *, required: bool = False
) -> None:
    if required and not value.strip():
        raise ValueError(f"{name} is required")
    problem = rule.problem(value)
    if problem is not None:
        raise ValueError(f"{name} {problem}")


def _da(day: date) -> str:
    return f"{day.year:04d}{day.month:02d}{day.day:02d}"


def _texts(item: WorklistItem) -> Iterator[str]:
    for value in vars(item).values():
        if isinstance(value, str):
            yield value


def worklist_dataset(item: WorklistItem, tz: tzinfo) -> Dataset:
    """The worklist item as DICOM; the scheduled start is written in ``tz`` (the department's
    local time: modalities show DA/TM values as they are, with no time zone)."""
    start = item.scheduled_start.astimezone(tz)
    ds = Dataset()
    if not all(text.isascii() for text in _texts(item)):
        ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8; pydicom encodes with it on write
    ds.AccessionNumber = item.accession_number
    ds.ReferringPhysicianName = item.referring_physician
    ds.PatientName = item.patient_name
    ds.PatientID = item.patient_id
    ds.IssuerOfPatientID = item.issuer_of_patient_id
    ds.PatientBirthDate = _da(item.patient_birth_date) if item.patient_birth_date else ""
    ds.PatientSex = item.patient_sex
    ds.StudyInstanceUID = item.study_instance_uid
    ds.RequestedProcedureDescription = item.requested_procedure_description
    ds.RequestedProcedureID = item.requested_procedure_id
    ds.RequestedProcedurePriority = _PRIORITIES[item.priority]
    if item.procedure_code:
        meaning = item.requested_procedure_description or item.procedure_code
        ds.RequestedProcedureCodeSequence = Sequence(
            [_code(item.procedure_code, item.procedure_coding_system, meaning)]
        )
    step = Dataset()
    step.Modality = item.modality
    step.ScheduledStationAETitle = item.scheduled_station_aet
    step.ScheduledStationName = item.scheduled_station_name
    if item.protocol_code:
        step.ScheduledProtocolCodeSequence = Sequence(
            [_code(item.protocol_code, "", item.protocol_code)]
        )
    step.ScheduledProcedureStepStartDate = _da(start.date())
    step.ScheduledProcedureStepStartTime = f"{start.hour:02d}{start.minute:02d}{start.second:02d}"
    step.ScheduledPerformingPhysicianName = ""
    step.ScheduledProcedureStepDescription = item.step_description
    step.ScheduledProcedureStepID = item.step_id
    step.ScheduledProcedureStepStatus = "SCHEDULED"
    ds.ScheduledProcedureStepSequence = Sequence([step])
    return ds


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    """A code sequence item (PS3.3 table 8.8-1): the value, its scheme, its meaning."""
    code = Dataset()
    if len(value) > _CODE_VALUE_LENGTH:
        code.LongCodeValue = value
    else:
        code.CodeValue = value
    code.CodingSchemeDesignator = scheme or LOCAL_CODING_SCHEME
    code.CodeMeaning = meaning
    return code


def encode(item: WorklistItem, tz: tzinfo) -> bytes:
    """The worklist file's bytes. Deterministic, so an unchanged item is never rewritten."""
    ds = worklist_dataset(item, tz)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MODALITY_WORKLIST_FIND
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[item.key, item.study_instance_uid])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def index_keys(item: WorklistItem, tz: tzinfo) -> dict[str, str]:
    """The values the plugin pre-filters on, exactly as written in the file."""
    return {
        "AccessionNumber": item.accession_number,
        "PatientID": item.patient_id,
        "Modality": item.modality,
        "ScheduledStationAETitle": item.scheduled_station_aet,
        "ScheduledProcedureStepStartDate": _da(item.scheduled_start.astimezone(tz).date()),
    }
