"""An HL7 order group as order values (sidecar.orders.service), each checked against what
will hold it before the AA (sidecar.orders.fields), and refused AE 102 naming the field it came
from."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hl7.datatypes import PersonName, Provider
from hl7.errors import DataTypeError, ErrorLocation, TableValueNotFound
from hl7.order_message import ImagingOrder as OrderGroup
from hl7.order_message import OrderMessage
from sidecar.core.models import time_problem
from sidecar.orders.fields import order_value_problems
from sidecar.orders.models import Modality, Priority
from sidecar.procedures.catalog import CatalogDefaults

#: The catalog's values for a procedure code (sidecar.procedures.catalog.defaults_for).
Catalog = Callable[[str], CatalogDefaults | None]

# DICOM modality codes for OBR-24 / IPC-5 values that are not our modality names.
_MODALITY_ALIASES = {"PET": Modality.PT, "PETCT": Modality.PET_CT, "XR": Modality.DX}


def order_values(
    message: OrderMessage, group: OrderGroup, *, facility_field: str = "MSH-4"
) -> dict[str, Any]:
    """Domain values of an order group; absent values are left out. Not yet checked against
    what will hold them: see checked_order_values."""
    patient, visit = message.patient, message.visit
    # ORDER_FACILITY_FIELD: the sending facility, or that of the patient's assigned location.
    if facility_field == "PV1-3":
        facility = visit.facility if visit else ""
    else:
        facility = message.header.sending_facility.name
    procedure = group.procedure
    reason = group.reason_for_study
    ordering = group.ordering_provider
    values: dict[str, Any] = {
        "patient_id": patient.identifier.id,
        "issuer_of_patient_id": patient.identifier.assigning_authority.name or None,
        "patient_name": person_name(patient.name),
        "patient_birth_date": patient.birth_date,
        "patient_sex": patient.sex.value if patient.sex and patient.sex.value in "MFO" else None,
        "referring_physician": provider_name(visit.referring_provider if visit else None),
        "ordering_provider": provider_name(ordering),
        "provider_id": _provider_id(ordering),
        "referring_provider_id": _provider_id(visit.referring_provider if visit else None),
        "facility_id": facility or None,
        "procedure_code": (procedure.code or None) if procedure else None,
        "procedure_coding_system": (procedure.coding_system or None) if procedure else None,
        "procedure_description": (procedure.text or None) if procedure else None,
        "modality": modality(group),
        "clinical_indication": (reason.text or reason.code) if reason else None,
        "priority": Priority(group.priority.value),
        "scheduled_at": group.scheduled_start,
        "placer_order_number": _entity(group.placer_order_number),
        "filler_order_number": _entity(group.filler_order_number),
        "requested_procedure_id": group.requested_procedure_id or None,
        "accession_number": group.accession_number or None,
        "study_instance_uid": group.study_instance_uid or None,
    }
    return {k: v for k, v in values.items() if v not in (None, "")}


def checked_order_values(
    message: OrderMessage,
    group: OrderGroup,
    *,
    facility_field: str = "MSH-4",
    catalog: Catalog = lambda code: None,
) -> dict[str, Any]:
    """order_values, refused with AE 102 naming the field when a value does not fit where it
    goes: its column, or the worklist item a modality will read (sidecar.orders.fields); then
    completed from the procedure catalog (with_catalog)."""
    values = order_values(message, group, facility_field=facility_field)
    problems = order_value_problems(values)
    if problems:
        name, problem = problems[0]
        location, label = value_source(name, group)
        if name == "facility_id" and facility_field == "PV1-3":
            location, label = ErrorLocation("PV1", 1, 3, 4), "assigned location facility"
        raise DataTypeError(f"{location} {label} {problem}", location)
    start = values.get("scheduled_at")
    if start is not None and (time_refused := time_problem(start)) is not None:
        where = _scheduled_start_source(group)
        raise DataTypeError(f"{where} start date/time {time_refused}", where)
    return with_catalog(values, group, catalog)


def with_catalog(values: dict[str, Any], group: OrderGroup, catalog: Catalog) -> dict[str, Any]:
    """The order values completed from the catalog entry of the procedure code: what the
    message says wins; the entry's default priority applies when the message names none. A
    code the catalog does not know is fine when the message names the modality; otherwise AE
    103 naming OBR-4 and the code (its value was checked before: nothing unfit is echoed)."""
    code = values.get("procedure_code")
    entry = catalog(code) if code else None
    if entry is not None:
        values = {**entry.values, **values}
        if entry.priority is not None and not group.priority_sent:
            values["priority"] = entry.priority
    if "modality" not in values:
        raise TableValueNotFound(
            # The code first: the ACK's text is cut at 80 characters (hl7.ack).
            f"OBR-4 procedure code {code} is not in the catalog and OBR-24 (modality) is empty",
            ErrorLocation("OBR", group.sequence, 4, 1),
        )
    return values


def _scheduled_start_source(group: OrderGroup) -> ErrorLocation:
    """Where the group's scheduled start was read (hl7.order_message.ImagingOrder's order)."""
    obr = group.observation_request
    if group.timing_quantity and group.timing_quantity.start:
        return ErrorLocation("TQ1", group.sequence, 7)
    if obr and obr.quantity_timing and obr.quantity_timing.start:
        return ErrorLocation("OBR", group.sequence, 27, 4)
    return ErrorLocation("ORC", group.sequence, 7, 4)


FieldPosition = tuple[str, int, int | None]  # segment, field, component

#: Where each order value comes from: the field read first, the one read when the group does not
#: send the first (None: there is one source), and what HL7 calls it. As
#: hl7.order_message.ImagingOrder reads them: ORC before OBR, IPC before OBR and ZDS.
_SOURCES: dict[str, tuple[FieldPosition, FieldPosition | None, str]] = {
    "patient_id": (("PID", 3, 1), None, "patient identifier"),
    "issuer_of_patient_id": (("PID", 3, 4), None, "assigning authority"),
    "patient_name": (("PID", 5, None), None, "patient name"),
    "referring_physician": (("PV1", 8, None), None, "referring doctor"),
    "facility_id": (("MSH", 4, None), None, "sending facility"),
    "procedure_code": (("OBR", 4, 1), None, "procedure code"),
    "procedure_coding_system": (("OBR", 4, 3), None, "procedure coding system"),
    "procedure_description": (("OBR", 4, 2), None, "procedure text"),
    "clinical_indication": (("OBR", 31, None), None, "reason for study"),
    "ordering_provider": (("ORC", 12, None), ("OBR", 16, None), "ordering provider"),
    "provider_id": (("ORC", 12, 1), ("OBR", 16, 1), "ordering provider id"),
    "referring_provider_id": (("PV1", 8, 1), None, "referring doctor id"),
    "placer_order_number": (("ORC", 2, 1), ("OBR", 2, 1), "placer order number"),
    "filler_order_number": (("ORC", 3, 1), ("OBR", 3, 1), "filler order number"),
    "accession_number": (("IPC", 1, 1), ("OBR", 18, None), "accession number"),
    "requested_procedure_id": (("IPC", 2, 1), ("OBR", 19, None), "requested procedure id"),
    "study_instance_uid": (("IPC", 3, 1), ("ZDS", 1, 1), "study instance UID"),
}
_ONCE_PER_MESSAGE = frozenset({"MSH", "PID", "PV1"})


def value_source(name: str, group: OrderGroup) -> tuple[ErrorLocation, str]:
    """Where an order value came from in the message, and what HL7 calls that field."""
    first, fallback, label = _SOURCES[name]
    segment, field, component = first if fallback is None or _sends(group, first) else fallback
    sequence = 1 if segment in _ONCE_PER_MESSAGE else group.sequence
    return ErrorLocation(segment, sequence, field, component), label


def _sends(group: OrderGroup, position: FieldPosition) -> bool:
    """Whether the group's value is read from `position` (an ORC or IPC field)."""
    common, ipc = group.common_order, group.procedure_control
    sent = {
        ("ORC", 12): common.ordering_provider is not None,
        ("ORC", 2): common.placer_order_number is not None,
        ("ORC", 3): common.filler_order_number is not None,
        ("IPC", 1): bool(ipc and ipc.accession_number),
        ("IPC", 2): bool(ipc and ipc.requested_procedure_id),
        ("IPC", 3): bool(ipc and ipc.study_instance_uid),
    }
    return sent[position[:2]]


def modality(group: OrderGroup) -> Modality | None:
    """The modality the group names (None when it names none: the catalog may know it)."""
    code = group.modality.strip().upper()
    ipc = group.procedure_control
    location = (
        ErrorLocation("IPC", group.sequence, 5)
        if ipc and ipc.modality
        else ErrorLocation("OBR", group.sequence, 24)
    )
    if not code:
        return None
    try:
        return _MODALITY_ALIASES.get(code) or Modality(code)
    except ValueError as exc:
        raise TableValueNotFound(
            f"modality {code} is not one the department performs", location
        ) from exc


def person_name(name: PersonName) -> str | None:
    """XPN/XCN to DICOM PN: family^given^middle^prefix^suffix, trailing empties dropped."""
    parts = [name.family_name, name.given_name, name.middle_name, name.prefix, name.suffix]
    return "^".join(parts).rstrip("^") or None


def provider_name(provider: Provider | None) -> str | None:
    return person_name(provider.name) if provider else None


def _provider_id(provider: Provider | None) -> str | None:
    return (provider.id or None) if provider else None


def _entity(identifier: Any) -> str | None:
    return (identifier.entity_id or None) if identifier else None
