"""What each text value of an imaging order may hold: one table for orders from the API and from
the HIS, so that both refuse the same values (the API with 422, HL7 with AE naming the field).

Values offered to modalities on the worklist follow their DICOM value representation; the others
only have to fit their column. Every order is checked, whatever its status: a PENDING order can
be scheduled later, and must then fit the worklist too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sidecar.core.dicom_text import AE, LO, PN, SH, UI, TextRule, stored

#: A procedure code: up to its column's 64 characters, and nothing DICOM cannot hold.
CODE = TextRule("DICOM code value", 64)

ORDER_TEXT_RULES: dict[str, TextRule] = {
    # On the worklist (sidecar.worklist.publisher.worklist_item).
    "accession_number": SH,
    "requested_procedure_id": SH,
    "study_instance_uid": UI,
    "patient_id": LO,
    "issuer_of_patient_id": LO,
    "patient_name": PN,
    "referring_physician": PN,
    "procedure_description": LO,
    "scheduled_station_aet": AE,
    "scheduled_station_name": SH,
    # Requested Procedure Code Sequence: Code Value (SH) when it fits, else Long Code Value
    # (UC, sidecar.worklist.items); either way no backslash. Coding Scheme Designator (SH).
    "procedure_code": CODE,
    "procedure_coding_system": SH,
    # Scheduled Protocol Code Sequence, Code Value.
    "protocol_code": SH,
    # Kept by the sidecar, sent back in results (ORU^R01, where they are escaped).
    "ordering_provider": stored(324),
    "provider_id": stored(64),
    "referring_provider_id": stored(64),
    "facility_id": stored(64),
    "body_part": stored(64),
    "placer_order_number": stored(64),
    "filler_order_number": stored(64),
    "clinical_indication": stored(4000, multiline=True),
}


#: Identifiers a worklist item must have (type 1 in the worklist answer). Left out, the sidecar
#: provides one (the accession number, the study UID) or refuses the order; sent, they must say
#: something: DICOM drops the padding spaces, so a value of spaces is an empty one.
IDENTIFIERS = frozenset(
    {"accession_number", "requested_procedure_id", "study_instance_uid", "patient_id"}
)


def order_value_problem(name: str, value: str) -> str | None:
    """Why the order value `name` cannot hold `value`, or None."""
    if name in IDENTIFIERS and not value.strip(" "):
        return "is blank (only spaces)"
    return ORDER_TEXT_RULES[name].problem(value)


def order_value_problems(values: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(field, problem) for each text value that its rule refuses, in the table's order."""
    problems = []
    for name in ORDER_TEXT_RULES:
        value = values.get(name)
        if isinstance(value, str) and (problem := order_value_problem(name, value)) is not None:
            problems.append((name, problem))
    return problems
