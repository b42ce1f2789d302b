"""STOW-RS requests for the tests: a measurement report as OHIF saves one, the multipart body,
and the parts of a STOW-RS answer (DICOM JSON)."""

from __future__ import annotations

import io

import httpx
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
BOUNDARY = "stow-test-boundary"
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def make_sr(study_uid: str, patient_id: str) -> tuple[str, bytes]:
    """A measurement report as OHIF saves one: a Comprehensive SR in a series of its own."""
    sop_uid = str(generate_uid())
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(COMPREHENSIVE_SR)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = COMPREHENSIVE_SR, sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, str(generate_uid())
    ds.PatientID, ds.Modality, ds.SeriesNumber, ds.InstanceNumber = patient_id, "SR", 99, 1
    ds.ValueType, ds.CompletionFlag, ds.VerificationFlag = "CONTAINER", "COMPLETE", "UNVERIFIED"
    ds.ContinuityOfContent = "SEPARATE"
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator = "126000", "DCM"
    concept.CodeMeaning = "Imaging Measurement Report"
    ds.ConceptNameCodeSequence = [concept]
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return sop_uid, out.getvalue()


def body(*parts: bytes) -> bytes:
    out = b""
    for part in parts:
        out += f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part
        out += b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def stow(
    front: str, headers: dict[str, str], *parts: bytes, study: str | None = None
) -> httpx.Response:
    path = f"/dicom-web/studies/{study}" if study else "/dicom-web/studies"
    return httpx.post(
        front + path,
        content=body(*parts),
        headers={**headers, "Content-Type": STOW_TYPE, "Accept": "application/dicom+json"},
        timeout=30,
    )


def failures(answer: httpx.Response) -> dict[str, int]:
    items = answer.json().get("00081198", {}).get("Value", [])
    return {i["00081155"]["Value"][0]: i["00081197"]["Value"][0] for i in items}


def referenced(answer: httpx.Response) -> list[str]:
    items = answer.json().get("00081199", {}).get("Value", [])
    return [i["00081155"]["Value"][0] for i in items]
