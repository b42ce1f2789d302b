"""Values written into the messages the department sends (results, status updates): escaped
for ER7 and laid out in HL7's composite types."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Protocol

from hl7.er7 import escape_text
from hl7.timestamps import format_timestamp


class Addressed(Protocol):
    """What the MSH of a message this service sends says: who to whom, when, which message."""

    @property
    def control_id(self) -> str: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def sending_application(self) -> str: ...
    @property
    def sending_facility(self) -> str: ...
    @property
    def receiving_application(self) -> str: ...
    @property
    def receiving_facility(self) -> str: ...


class AboutPatient(Protocol):
    """The patient a message is about, as its PID gives them."""

    @property
    def patient_id(self) -> str: ...
    @property
    def issuer_of_patient_id(self) -> str | None: ...
    @property
    def patient_name(self) -> str | None: ...  # DICOM PN order
    @property
    def patient_birth_date(self) -> date | None: ...
    @property
    def patient_sex(self) -> str | None: ...


def write_header(msh: Any, message: Addressed, message_type: str) -> None:
    """MSH-3..7, 9, 10, 11 and 18 of an hl7apy message: processing P, UTF-8."""
    msh.msh_3 = escaped(message.sending_application)
    msh.msh_4 = escaped(message.sending_facility)
    msh.msh_5 = escaped(message.receiving_application)
    msh.msh_6 = escaped(message.receiving_facility)
    msh.msh_7 = format_timestamp(message.created_at)
    msh.msh_9 = message_type
    msh.msh_10 = escaped(message.control_id)
    msh.msh_11 = "P"
    msh.msh_18 = "UNICODE UTF-8"


def write_patient(pid: Any, patient: AboutPatient) -> None:
    """PID-1, 3 (id^^^issuer^MR), 5 (name), 7 (birth date) and 8 (sex) of an hl7apy PID."""
    pid.pid_1 = "1"
    pid.pid_3 = patient_identifier(patient.patient_id, patient.issuer_of_patient_id)
    if patient.patient_name:
        pid.pid_5 = person_name(patient.patient_name)
    if patient.patient_birth_date:
        pid.pid_7 = patient.patient_birth_date.strftime("%Y%m%d")
    if patient.patient_sex:
        pid.pid_8 = escaped(patient.patient_sex)


def escaped(text: str) -> str:
    return escape_text(text)


def patient_identifier(identifier: str, issuer: str | None) -> str:
    return f"{escaped(identifier)}^^^{escaped(issuer or '')}^MR"


def person_name(dicom_name: str) -> str:
    """DICOM PN (family^given^middle^prefix^suffix) to XPN (family^given^middle^suffix^prefix)."""
    parts = (dicom_name.split("=", 1)[0].split("^") + [""] * 5)[:5]
    family, given, middle, prefix, suffix = (escaped(p) for p in parts)
    return "^".join([family, given, middle, suffix, prefix]).rstrip("^")


def person(identifier: str | None, dicom_name: str | None) -> str:
    """XCN: id^family^given^middle^suffix^prefix."""
    name = person_name(dicom_name) if dicom_name else ""
    return f"{escaped(identifier or '')}^{name}".rstrip("^")


def coded(code: str | None, text: str | None) -> str:
    if code:
        return f"{escaped(code)}^{escaped(text or '')}^L".rstrip("^")
    return f"^{escaped(text or '')}"


def with_patient(
    text: str,
    patient_id: str,
    issuer_of_patient_id: str | None,
    patient_name: str | None,
    patient_birth_date: date | None,
    patient_sex: str | None,
) -> str:
    """A message this service built (a result, a status update) with its PID rewritten for
    the patient as the registry now knows them (a correction or a merge while it waited to be
    sent); every other segment, MSH-10 included, stays as it was."""
    fields = [
        "PID",
        "1",
        "",
        patient_identifier(patient_id, issuer_of_patient_id),
        "",
        person_name(patient_name) if patient_name else "",
        "",
        patient_birth_date.strftime("%Y%m%d") if patient_birth_date else "",
        escaped(patient_sex) if patient_sex else "",
    ]
    pid = "|".join(fields).rstrip("|")
    segments = [pid if line.startswith("PID|") else line for line in text.split("\r")]
    return "\r".join(segments)
