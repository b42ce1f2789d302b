"""A modality reporting its performed procedure steps (MPPS SCU, pynetdicom): the attribute lists
of PS3.4 F.7.2 as a modality fills them in, and one association to send them over (tests and the
benchmark), without Nagle's algorithm as a well-configured modality sends (with it, each request
waits about 40 ms for the SCP's delayed ACK)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ModalityPerformedProcedureStep,
    Verification,
)

from dicom_senders import _nodelay_handlers

MPPS = ModalityPerformedProcedureStep


@dataclass(frozen=True)
class Answer:
    status: int
    comment: str | None
    attributes: list[int]
    affected_uid: str | None = None


def in_progress(
    *,
    study_instance_uid: str,
    accession_number: str = "",
    requested_procedure_id: str = "",
    scheduled_step_id: str = "",
    patient_id: str = "PAT-0001",
    patient_name: str = "DOE^JANE",
    station: str = "DX01",
    modality: str = "DX",
    start: tuple[str, str] = ("20261130", "101500"),
) -> Dataset:
    """An N-CREATE attribute list: the step starting, for the scheduled step named."""
    scheduled = Dataset()
    scheduled.StudyInstanceUID = study_instance_uid
    scheduled.AccessionNumber = accession_number
    scheduled.RequestedProcedureID = requested_procedure_id
    scheduled.ScheduledProcedureStepID = scheduled_step_id
    scheduled.ReferencedStudySequence = Sequence()
    scheduled.RequestedProcedureDescription = ""
    scheduled.ScheduledProcedureStepDescription = ""
    scheduled.ScheduledProtocolCodeSequence = Sequence()
    ds = Dataset()
    ds.ScheduledStepAttributesSequence = Sequence([scheduled])
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.ReferencedPatientSequence = Sequence()
    ds.PerformedProcedureStepID = "PPS-1"
    ds.PerformedStationAETitle = station
    ds.PerformedStationName = ""
    ds.PerformedLocation = ""
    ds.PerformedProcedureStepStartDate, ds.PerformedProcedureStepStartTime = start
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.PerformedProcedureStepDescription = "Chest PA"
    ds.PerformedProcedureTypeDescription = ""
    ds.ProcedureCodeSequence = Sequence()
    ds.PerformedProcedureStepEndDate = ""
    ds.PerformedProcedureStepEndTime = ""
    ds.Modality = modality
    ds.StudyID = ""
    ds.PerformedProtocolCodeSequence = Sequence()
    ds.PerformedSeriesSequence = Sequence()
    return ds


def completed(
    *,
    series: list[tuple[str, list[str]]],
    end: tuple[str, str] = ("20261130", "102000"),
) -> Dataset:
    """An N-SET modification list ending the step COMPLETED: each series (its UID and the SOP
    instance UIDs of its images)."""
    ds = _ended("COMPLETED", end)
    ds.PerformedSeriesSequence = Sequence([_series(uid, images) for uid, images in series])
    return ds


def discontinued(
    *,
    reason: tuple[str, str] = ("110514", "Incorrect worklist entry selected"),
    end: tuple[str, str] = ("20261130", "101800"),
    series: list[tuple[str, list[str]]] | None = None,
) -> Dataset:
    """An N-SET modification list ending the step DISCONTINUED, with its reason (CID 9300)."""
    ds = _ended("DISCONTINUED", end)
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = reason[0], "DCM", reason[1]
    ds.PerformedProcedureStepDiscontinuationReasonCodeSequence = Sequence([code])
    ds.PerformedSeriesSequence = Sequence([_series(u, i) for u, i in series or []])
    return ds


def _ended(status: str, end: tuple[str, str]) -> Dataset:
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepEndDate, ds.PerformedProcedureStepEndTime = end
    return ds


def _series(series_uid: str, images: list[str]) -> Dataset:
    item = Dataset()
    item.SeriesInstanceUID = series_uid
    item.PerformingPhysicianName = ""
    item.OperatorsName = "TECH^ONE"
    item.ProtocolName = "Chest"
    item.SeriesDescription = "PA"
    item.RetrieveAETitle = ""
    item.ReferencedNonImageCompositeSOPInstanceSequence = Sequence()
    references = []
    for uid in images:
        reference = Dataset()
        reference.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
        reference.ReferencedSOPInstanceUID = uid
        references.append(reference)
    item.ReferencedImageSequence = Sequence(references)
    return item


class Modality:
    """One association to the MPPS SCP, as one modality holds it."""

    def __init__(self, assoc: Association) -> None:
        self.assoc = assoc

    def create(self, attributes: Dataset, uid: str | None = None) -> tuple[Answer, str]:
        """N-CREATE; returns the answer and the step's SOP Instance UID (ours, or the SCP's)."""
        uid = uid if uid is not None else generate_uid()
        status, _ = self.assoc.send_n_create(attributes, MPPS, uid)
        return _answer(status), uid

    def create_without_uid(self, attributes: Dataset) -> Answer:
        """N-CREATE leaving the SOP Instance UID to the SCP (PS3.7 10.1.5.1.3)."""
        primitive_answer = self.assoc.send_n_create(attributes, MPPS, None)
        status = primitive_answer[0]
        answer = _answer(status)
        return answer

    def set(self, uid: str, modifications: Dataset) -> Answer:
        status, _ = self.assoc.send_n_set(modifications, MPPS, uid)
        return _answer(status)

    def echo(self) -> int:
        return int(self.assoc.send_c_echo().Status)


def _answer(status: Any) -> Answer:
    assert status is not None and "Status" in status, "no DIMSE answer: association dropped"
    attributes = status.get("AttributeIdentifierList")
    if attributes is None:
        tags: list[int] = []
    elif isinstance(attributes, list | tuple):
        tags = [int(t) for t in attributes]
    else:
        tags = [int(attributes)]
    return Answer(
        status=int(status.Status),
        comment=status.get("ErrorComment"),
        attributes=tags,
        affected_uid=status.get("AffectedSOPInstanceUID"),
    )


@contextmanager
def modality(
    port: int, *, called: str = "ORTHANC", calling: str = "DX01", host: str = "127.0.0.1"
) -> Iterator[Modality]:
    ae = AE(ae_title=calling)
    ae.add_requested_context(MPPS)
    ae.add_requested_context(Verification)
    assoc = ae.associate(host, port, ae_title=called, evt_handlers=_nodelay_handlers())
    if not assoc.is_established:
        raise ConnectionError(f"association refused or failed (port {port}, called {called})")
    try:
        yield Modality(assoc)
    finally:
        assoc.release()
