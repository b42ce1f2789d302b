"""Reading a modality's MPPS attribute list (PS3.4 F.7.2) into plain values, or the DIMSE status
that refuses it.

The checks are those of the standard's usage table for the SCU: an N-CREATE carries the Type 1
attributes with values (Scheduled Step Attributes Sequence with a Study Instance UID in each
item, Performed Procedure Step ID, Performed Station AE Title, start date and time, the status
IN PROGRESS, Modality); a step set COMPLETED or DISCONTINUED has, by then, its end date and time,
and a COMPLETED one at least one performed series (check_final, on the step as stored: the SCU
may send them over several N-SETs). Every value kept is checked
against its value representation (length, repertoire, UID syntax), as orders are: a modality's
text becomes the order's record and the HIS's messages. A refusal names the attribute by tag and
keyword and quotes nothing of its value (it may be patient data).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, time, tzinfo
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from sidecar.core import dicom_text
from sidecar.core.dicom_text import TextRule, parse_da, parse_tm
from sidecar.core.models import time_problem
from sidecar.mpps.models import PerformedStepStatus

# DIMSE statuses (PS3.7 Annex C; PS3.4 F.7.2.1.2 and F.7.2.2.2).
NO_SUCH_ATTRIBUTE = 0x0105
INVALID_ATTRIBUTE_VALUE = 0x0106
PROCESSING_FAILURE = 0x0110  # with a comment: "may no longer be updated" for a final step
DUPLICATE_SOP_INSTANCE = 0x0111
NO_SUCH_SOP_INSTANCE = 0x0112
INVALID_OBJECT_INSTANCE = 0x0117
MISSING_ATTRIBUTE = 0x0120
MISSING_ATTRIBUTE_VALUE = 0x0121

_CS = dicom_text.TextRule("DICOM CS", 16)
# The values kept, with the value representation each is checked by.
_TEXT_RULES: dict[str, TextRule] = {
    "AccessionNumber": dicom_text.SH,
    "RequestedProcedureID": dicom_text.SH,
    "ScheduledProcedureStepID": dicom_text.SH,
    "StudyInstanceUID": dicom_text.UI,
    "PatientID": dicom_text.LO,
    "IssuerOfPatientID": dicom_text.LO,
    "PerformedProcedureStepID": dicom_text.SH,
    "PerformedStationAETitle": dicom_text.AE,
    "Modality": _CS,
    "PerformedProcedureStepStatus": _CS,
    "PerformedProcedureStepDescription": dicom_text.LO,
    "CodeValue": dicom_text.SH,
    "CodeMeaning": dicom_text.LO,
}


class StepRefused(Exception):
    """The DIMSE failure status to answer, with a comment (at most 64 characters, PS3.7 C.4)
    and the attribute at fault when there is one."""

    def __init__(self, status: int, comment: str, keyword: str | None = None) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment[:64]
        number = tag_for_keyword(keyword) if keyword else None
        self.tag = Tag(number) if number is not None else None


@dataclass(frozen=True)
class ScheduledStep:
    """The scheduled step a performed step names (the first Scheduled Step Attributes item)."""

    study_instance_uid: str
    accession_number: str | None
    requested_procedure_id: str | None
    scheduled_procedure_step_id: str | None


@dataclass(frozen=True)
class StepEnd:
    """What an N-SET says: any of these may be absent (None) but the status when it ends."""

    status: PerformedStepStatus | None
    ended_at: datetime | None
    end_given_empty: bool  # the end date or time sent without a value
    series_count: int | None
    instance_count: int | None
    discontinuation_reason_code: str | None
    discontinuation_reason: str | None
    description: str | None


@dataclass(frozen=True)
class StepStart:
    scheduled: ScheduledStep
    patient_id: str | None
    issuer_of_patient_id: str | None
    performed_procedure_step_id: str
    performed_station_ae_title: str
    modality: str
    description: str | None
    started_at: datetime
    end: StepEnd  # an N-CREATE may already carry series, never a final status


def read_create(attributes: Dataset, zone: tzinfo | None) -> StepStart:
    """The N-CREATE's attribute list as a new step; raises StepRefused."""
    status = _status(attributes, required=True)
    if status is not PerformedStepStatus.IN_PROGRESS:
        raise StepRefused(
            INVALID_ATTRIBUTE_VALUE,
            "PerformedProcedureStepStatus must be IN PROGRESS",
            "PerformedProcedureStepStatus",
        )
    items = _sequence(attributes, "ScheduledStepAttributesSequence", required=True)
    first = items[0]
    for item in items:
        _required_text(item, "StudyInstanceUID")
    scheduled = ScheduledStep(
        study_instance_uid=_required_text(first, "StudyInstanceUID"),
        accession_number=_text(first, "AccessionNumber"),
        requested_procedure_id=_text(first, "RequestedProcedureID"),
        scheduled_procedure_step_id=_text(first, "ScheduledProcedureStepID"),
    )
    started_at = _moment(
        attributes, "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime", zone
    )
    assert started_at is not None
    return StepStart(
        scheduled=scheduled,
        patient_id=_text(attributes, "PatientID"),
        issuer_of_patient_id=_text(attributes, "IssuerOfPatientID"),
        performed_procedure_step_id=_required_text(attributes, "PerformedProcedureStepID"),
        performed_station_ae_title=_required_text(attributes, "PerformedStationAETitle"),
        modality=_required_text(attributes, "Modality"),
        description=_text(attributes, "PerformedProcedureStepDescription"),
        started_at=started_at,
        end=_end(attributes, status, zone),
    )


def read_set(attributes: Dataset, zone: tzinfo | None) -> StepEnd:
    """The N-SET's modification list; raises StepRefused for a value that cannot be read. What a
    final status needs is checked on the step as the N-SETs so far leave it (check_final)."""
    status = _status(attributes, required=False)
    return _end(attributes, status, zone)


def check_final(
    status: PerformedStepStatus,
    ended_at: datetime | None,
    series_count: int | None,
    end: StepEnd,
) -> None:
    """PS3.4 F.7.2.2.2: when a step is set COMPLETED or DISCONTINUED it has its end date and
    time, and a COMPLETED one at least one performed series: given in this N-SET or an earlier
    one (the SCU may send them over several). Raises StepRefused naming what is missing."""
    if ended_at is None:
        status_code = MISSING_ATTRIBUTE_VALUE if end.end_given_empty else MISSING_ATTRIBUTE
        raise StepRefused(
            status_code,
            "PerformedProcedureStepEndDate and EndTime are required to end",
            "PerformedProcedureStepEndDate",
        )
    if status is PerformedStepStatus.COMPLETED and not series_count:
        status_code = MISSING_ATTRIBUTE if series_count is None else MISSING_ATTRIBUTE_VALUE
        raise StepRefused(
            status_code,
            "PerformedSeriesSequence is required to complete",
            "PerformedSeriesSequence",
        )


def _end(attributes: Dataset, status: PerformedStepStatus | None, zone: tzinfo | None) -> StepEnd:
    ended_at = _moment(
        attributes,
        "PerformedProcedureStepEndDate",
        "PerformedProcedureStepEndTime",
        zone,
        required=False,
    )
    end_given_empty = ended_at is None and any(
        keyword in attributes
        for keyword in ("PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime")
    )
    series_count = instance_count = None
    if "PerformedSeriesSequence" in attributes:
        series = _sequence(attributes, "PerformedSeriesSequence", required=False)
        series_count = len(series)
        instance_count = sum(
            len(_sequence(item, keyword, required=False))
            for item in series
            for keyword in (
                "ReferencedImageSequence",
                "ReferencedNonImageCompositeSOPInstanceSequence",
            )
        )
    reason_code = reason = None
    reasons = _sequence(
        attributes, "PerformedProcedureStepDiscontinuationReasonCodeSequence", required=False
    )
    if reasons:
        reason_code = _text(reasons[0], "CodeValue")
        reason = _text(reasons[0], "CodeMeaning")
    return StepEnd(
        status=status,
        ended_at=ended_at,
        end_given_empty=end_given_empty,
        series_count=series_count,
        instance_count=instance_count,
        discontinuation_reason_code=reason_code,
        discontinuation_reason=reason,
        description=_text(attributes, "PerformedProcedureStepDescription"),
    )


def _status(attributes: Dataset, *, required: bool) -> PerformedStepStatus | None:
    keyword = "PerformedProcedureStepStatus"
    text = _required_text(attributes, keyword) if required else _text(attributes, keyword)
    if text is None:
        return None
    try:
        return PerformedStepStatus.from_dicom(text)
    except ValueError:
        raise StepRefused(
            INVALID_ATTRIBUTE_VALUE,
            f"{keyword} is not a status of PS3.3 C.4.14",
            keyword,
        ) from None


def _element_value(attributes: Dataset, keyword: str) -> Any:
    """The element's value, or None when absent; a value pydicom cannot read is refused."""
    try:
        element = attributes.get(keyword)
    except Exception:
        raise StepRefused(INVALID_ATTRIBUTE_VALUE, f"{keyword} cannot be read", keyword) from None
    return None if element is None else element


def _text(attributes: Dataset, keyword: str) -> str | None:
    value = _element_value(attributes, keyword)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        if isinstance(value, Iterable) and not isinstance(value, bytes):
            raise StepRefused(INVALID_ATTRIBUTE_VALUE, f"{keyword} has several values", keyword)
        value = str(value)
    text = value.strip()
    if not text:
        return None
    if (problem := _TEXT_RULES[keyword].problem(text)) is not None:
        raise StepRefused(INVALID_ATTRIBUTE_VALUE, f"{keyword} {problem}", keyword)
    return text


def _required_text(attributes: Dataset, keyword: str) -> str:
    if keyword not in attributes:
        raise StepRefused(MISSING_ATTRIBUTE, f"{keyword} is required", keyword)
    text = _text(attributes, keyword)
    if text is None:
        raise StepRefused(MISSING_ATTRIBUTE_VALUE, f"{keyword} needs a value", keyword)
    return text


def _sequence(attributes: Dataset, keyword: str, *, required: bool) -> list[Dataset]:
    value = _element_value(attributes, keyword)
    if value is None:
        if required:
            raise StepRefused(MISSING_ATTRIBUTE, f"{keyword} is required", keyword)
        return []
    if not isinstance(value, list | tuple) and not hasattr(value, "__iter__"):
        raise StepRefused(INVALID_ATTRIBUTE_VALUE, f"{keyword} is not a sequence", keyword)
    items = list(value)
    if not all(isinstance(item, Dataset) for item in items):
        raise StepRefused(INVALID_ATTRIBUTE_VALUE, f"{keyword} is not a sequence", keyword)
    if required and not items:
        raise StepRefused(MISSING_ATTRIBUTE_VALUE, f"{keyword} needs an item", keyword)
    return items


def _moment(
    attributes: Dataset,
    date_keyword: str,
    time_keyword: str,
    zone: tzinfo | None,
    *,
    required: bool = True,
) -> datetime | None:
    """A DA and a TM in the department's zone, as an aware time; None when both are empty and
    the pair is not required."""
    day_text = _raw(attributes, date_keyword, required=required)
    time_text = _raw(attributes, time_keyword, required=required)
    if not day_text and not time_text and not required:
        return None
    # One of the pair given: the other is required with it.
    _raw(attributes, date_keyword, required=True)
    _raw(attributes, time_keyword, required=True)
    day: date | None = parse_da(day_text)
    if day is None:
        raise StepRefused(INVALID_ATTRIBUTE_VALUE, f"{date_keyword} is not a date", date_keyword)
    moment: time | None = parse_tm(time_text)
    if moment is None:
        raise StepRefused(INVALID_ATTRIBUTE_VALUE, f"{time_keyword} is not a time", time_keyword)
    local = datetime.combine(day, moment)
    aware = local.replace(tzinfo=zone) if zone is not None else local.astimezone()
    if time_problem(aware) is not None:
        raise StepRefused(INVALID_ATTRIBUTE_VALUE, f"{date_keyword} is out of range", date_keyword)
    return aware


def _raw(attributes: Dataset, keyword: str, *, required: bool) -> str:
    """A DA or TM element's text; a required one must be there with a value."""
    if keyword not in attributes:
        if required:
            raise StepRefused(MISSING_ATTRIBUTE, f"{keyword} is required", keyword)
        return ""
    value = _element_value(attributes, keyword)
    text = "" if value is None else str(value).strip()
    if required and not text:
        raise StepRefused(MISSING_ATTRIBUTE_VALUE, f"{keyword} needs a value", keyword)
    return text
