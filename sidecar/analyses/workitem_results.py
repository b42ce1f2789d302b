"""What a performer's work item produced, read from where it must be: an analysis is COMPLETED
only once its results are stored, so a work item completes only when its Output Information
Sequence (0040,4033) names at least one Structured Report that Orthanc holds in the work item's
study. Each is read back from Orthanc (not from what the performer says of it) with
sidecar.analyses.structured_report.read_report, and its findings are what the analysis records:
the JSON findings mirror the report.
"""

from __future__ import annotations

import io
import warnings
from typing import Any, Final

import pydicom
from pydicom.errors import InvalidDicomError

from sidecar.analyses import dicom_json
from sidecar.analyses.structured_report import read_report
from sidecar.analyses.workitem_states import (
    OUTPUT_INFORMATION,
    PERFORMED_PROCEDURE,
    STATE_INCONSISTENT,
    StoredReport,
    WorkitemRefusal,
)
from sidecar.core.errors import Unavailable
from sidecar.ingest.orthanc_client import OrthancClient, OrthancError, OrthancNotFound

#: Every Structured Report storage class's UID starts so (PS3.4 B.5).
SR_CLASS_PREFIX: Final = "1.2.840.10008.5.1.4.1.1.88."
#: A report larger than this is not read (a TID 1500 report of a thousand findings is a few MB).
MAX_REPORT_BYTES: Final = 64 * 1024 * 1024


def output_references(dataset: dict[str, Any]) -> list[tuple[str | None, str]]:
    """(Study Instance UID, SOP Instance UID) of every instance the Output Information Sequence
    names, at the top level or in the Performed Procedure Sequence, with the study its item
    names (Referenced Instances and Access macro: the study, its series, their instances)."""
    found: list[tuple[str | None, str]] = []
    outputs = dicom_json.items(dataset, OUTPUT_INFORMATION)
    for performed in dicom_json.items(dataset, PERFORMED_PROCEDURE):
        outputs += dicom_json.items(performed, OUTPUT_INFORMATION)
    for output in outputs:
        study = dicom_json.first_string(output, "0020000D")
        for series in dicom_json.items(output, "00081115") or [output]:
            for sop in dicom_json.items(series, "00081199"):
                uid = dicom_json.first_string(sop, "00081155")
                if uid and (study, uid) not in found:
                    found.append((study, uid))
    return found


def _missing(message: str) -> WorkitemRefusal:
    return WorkitemRefusal(409, message, STATE_INCONSISTENT)


def stored_reports(
    orthanc: OrthancClient, study_instance_uid: str, dataset: dict[str, Any]
) -> list[StoredReport]:
    """The Structured Reports the work item's output names, as Orthanc holds them in its study,
    read back; refuses (409, saying what is missing) when there is none. Blocking: call it off
    the event loop."""
    references = output_references(dataset)
    if not references:
        raise _missing(
            "the results are not named: store the Structured Report in the study over STOW-RS,"
            " then list it in the Output Information Sequence (0040,4033) with"
            " POST /dicom-web/workitems/{uid}?{transaction uid}, then complete"
        )
    elsewhere = [uid for study, uid in references if study and study != study_instance_uid]
    if elsewhere:
        raise _missing(
            f"the Output Information Sequence names instances of another study ({elsewhere[0]}):"
            " the results are stored in the work item's study"
        )
    reports: list[StoredReport] = []
    not_stored: list[str] = []
    for _, uid in references:
        dataset_read = _stored_instance(orthanc, study_instance_uid, uid)
        if dataset_read is None:
            not_stored.append(uid)
            continue
        if not str(dataset_read.get("SOPClassUID", "")).startswith(SR_CLASS_PREFIX):
            continue  # another output (a segmentation, a key image): not what completes
        try:
            read = read_report(dataset_read)
        except ValueError as exc:
            raise _missing(
                f"the report {uid} is not a TID 1500 measurement report: {exc}"
            ) from None
        reports.append(StoredReport(uid, list(read.findings)))
    if not_stored:
        raise _missing(
            f"{len(not_stored)} instance(s) the Output Information Sequence names are not stored"
            f" in the study (first: {not_stored[0]}): store them over STOW-RS first"
        )
    if not reports:
        raise _missing(
            "none of the instances the Output Information Sequence names is a Structured Report:"
            " an analysis completes with its results as a TID 1500 report"
        )
    return reports


def _stored_instance(
    orthanc: OrthancClient, study_instance_uid: str, sop_instance_uid: str
) -> pydicom.Dataset | None:
    """The instance as Orthanc holds it in the study; None when it holds none there."""
    try:
        for instance_id in orthanc.resources_with_uid(sop_instance_uid, "Instance"):
            content = io.BytesIO()
            try:
                for chunk in orthanc.instance_file(instance_id):
                    content.write(chunk)
                    if content.tell() > MAX_REPORT_BYTES:
                        raise _missing(f"the instance {sop_instance_uid} is too large to read")
            except OrthancNotFound:
                continue  # deleted meanwhile
            content.seek(0)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    dataset = pydicom.dcmread(content)
            except (InvalidDicomError, ValueError, EOFError):
                continue
            if str(dataset.get("StudyInstanceUID", "")) == study_instance_uid:
                return dataset
    except OrthancError as exc:
        raise Unavailable(f"Orthanc could not be asked for the results: {exc}") from exc
    return None
