"""Values written into the messages the department sends (results, status updates): escaped
for ER7 and laid out in HL7's composite types."""

from __future__ import annotations

from datetime import date

from hl7.er7 import escape_text


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
