"""Inbound imaging orders: ORM^O01 (v2.3 to v2.5.1) and OMI^O23 (v2.5, v2.5.1) to OrderMessage.

Order of checks, so that the ACK is as useful as possible: the header is read first and on its
own (an ACK can always echo MSH-10), then the message type and version (AR), then the content
(AE, first problem found, with its location).

Why a hand-written tokenizer and not hl7apy (measured with `python bench/hl7_parsing.py` on the
development machine, 5-segment ORM^O01 v2.5.1, 2 cores shared with other work, so ranges over
runs): hl7apy `parse_message` 9.4-15 ms per message with find_groups True or False and either
validation level (about 20 ms seen on other runs), `parse_segment` on the five segments
8.7-12.5 ms; `parse_order_message` 0.08-0.1 ms, about a hundred times less. hl7apy
stays the reference: tests/hl7/test_hl7_orders.py compares every field this mapping reads with
hl7apy's parse of every sample message.

Accepted structure: MSH, then PID (required), PV1 (optional), then order groups each starting
with ORC; inside a group the first TQ1, the OBR, the first IPC and ZDS are read. An OBR with no
ORC before it (seed 002's example) opens a group of its own, read as a new order (ORC-1 NW,
`CommonOrder.implied`). Other segments
(NTE, DG1, OBX, IN1 ...) are allowed and ignored.
"""

from __future__ import annotations

from datetime import datetime, tzinfo

from hl7.datatypes import (
    CodedElement,
    first_xcn,
    read_ce,
    read_ei,
    read_hd_component,
    read_xpn,
)
from hl7.er7 import Er7Message, Segment, decode_message, parse_er7
from hl7.errors import (
    DataTypeError,
    ErrorLocation,
    RequiredFieldMissing,
    SegmentSequenceError,
    TableValueNotFound,
    UnsupportedMessageType,
    UnsupportedTriggerEvent,
    UnsupportedVersion,
)
from hl7.header import SUPPORTED_VERSIONS, MessageHeader, parse_header
from hl7.order_message import (
    CommonOrder,
    ImagingOrder,
    ImagingProcedureControl,
    ObservationRequest,
    OrderControl,
    OrderMessage,
    Patient,
    PatientIdentifier,
    Priority,
    QuantityTiming,
    Sex,
    TimingQuantity,
    Visit,
)
from hl7.timestamps import parse_date, parse_timestamp

#: Supported (MSH-9.1, MSH-9.2) and the versions each is accepted in.
SUPPORTED_MESSAGES = {
    ("ORM", "O01"): SUPPORTED_VERSIONS,
    # OMI^O23 and its IPC segment exist from v2.5 (hl7apy's v2.5 and v2.5.1 tables).
    ("OMI", "O23"): ("2.5", "2.5.1"),
}

#: HL7 table 0027 (v2.3-2.5.1) and the words some senders write instead of codes.
#: A ASAP counts as URGENT; P pre-op, T timing critical, C callback, PRN as needed are scheduling
#: hints rather than reading urgency, so ROUTINE (the code as sent stays in `priority_code`).
PRIORITY_CODES = {
    "S": Priority.STAT,
    "STAT": Priority.STAT,
    "A": Priority.URGENT,
    "ASAP": Priority.URGENT,
    "URGENT": Priority.URGENT,
    "R": Priority.ROUTINE,
    "ROUTINE": Priority.ROUTINE,
    "P": Priority.ROUTINE,
    "T": Priority.ROUTINE,
    "C": Priority.ROUTINE,
    "PRN": Priority.ROUTINE,
}

#: Order controls that change or create the procedure, so OBR (with OBR-4) must be there.
_NEEDS_OBSERVATION_REQUEST = {OrderControl.NEW_ORDER, OrderControl.CHANGE_ORDER}
#: Segments read as part of an order group: before the first ORC they are out of place. Others
#: (NTE, which may also follow MSH or PID, DG1, OBX, ...) are allowed anywhere and not read.
_ORDER_SEGMENTS = {"TQ1", "OBR", "ZDS", "IPC"}
#: DICOM short string (SH) limit: accession number and requested procedure id go to the worklist.
_DICOM_SH_LENGTH = 16
_DICOM_UID_LENGTH = 64


def parse_order_message(raw: bytes | str, *, default_zone: tzinfo | None = None) -> OrderMessage:
    """Parse and check an inbound order; raises an `hl7.errors.Hl7Error` naming what is wrong.

    `default_zone` is the zone of HL7 times sent without an offset (see hl7.timestamps); None
    means this process's local zone.
    """
    message = parse_er7(decode_message(raw) if isinstance(raw, bytes) else raw)
    header = parse_header(message)
    check_supported(header)
    if not header.control_id:
        raise RequiredFieldMissing("MSH-10 message control id is empty", _at("MSH", 1, 10))
    message_datetime = _timestamp(message.msh, 7, 1, default_zone)
    pid = message.first("PID")
    if pid is None:
        raise SegmentSequenceError("PID segment missing", ErrorLocation("PID"))
    pv1 = message.first("PV1")
    return OrderMessage(
        header=header,
        message_datetime=message_datetime,
        patient=read_patient(pid),
        visit=_visit(pv1) if pv1 is not None else None,
        orders=_orders(message, default_zone),
    )


def check_supported(header: MessageHeader) -> None:
    """AR unless MSH-9 is ORM^O01/OMI^O23 and MSH-12 a version accepted for it."""
    types = {message_type for message_type, _ in SUPPORTED_MESSAGES}
    if header.message_type not in types:
        raise UnsupportedMessageType(
            f"message type {header.message_type or '(empty)'} is not accepted; send ORM^O01",
            _at("MSH", 1, 9, 1),
        )
    versions = SUPPORTED_MESSAGES.get((header.message_type, header.trigger_event))
    if versions is None:
        raise UnsupportedTriggerEvent(
            f"trigger event {header.message_code} is not accepted; send ORM^O01",
            _at("MSH", 1, 9, 2),
        )
    if header.version not in versions:
        raise UnsupportedVersion(
            f"version {header.version or '(empty)'} is not accepted for {header.message_code};"
            f" accepted: {', '.join(versions)}",
            _at("MSH", 1, 12),
        )


def _at(segment: str, sequence: int, field: int, component: int | None = None) -> ErrorLocation:
    return ErrorLocation(segment, sequence, field, component)


# --- PID, PV1 -------------------------------------------------------------------------------


def read_patient(pid: Segment) -> Patient:
    """PID: the first PID-3 repetition with an id, name, birth date and sex (ADT reads it too)."""
    identifier = None
    for repetition in pid.repetitions(3):
        if repetition.component(1):
            identifier = PatientIdentifier(
                id=repetition.component(1),
                assigning_authority=read_hd_component(repetition, 4),
                identifier_type=repetition.component(5),
            )
            break
    if identifier is None:
        raise RequiredFieldMissing("PID-3 patient identifier list has no id", _at("PID", 1, 3))
    birth_date = None
    if birth_text := pid.value(7):
        try:
            birth_date = parse_date(birth_text)
        except ValueError as exc:
            raise DataTypeError(f"PID-7 birth date: {exc}", _at("PID", 1, 7)) from exc
    sex = None
    if sex_code := pid.value(8).strip():
        try:
            sex = Sex(sex_code.upper())
        except ValueError as exc:
            raise TableValueNotFound(
                "PID-8 administrative sex is not in HL7 table 0001 (A F M N O U)",
                _at("PID", 1, 8),
            ) from exc
    return Patient(identifier, read_xpn(pid.field(5)), birth_date, sex)


def _visit(pv1: Segment) -> Visit:
    return Visit(
        patient_class=pv1.value(2),
        facility=pv1.value(3, 4),
        referring_provider=first_xcn(pv1.repetitions(8)),
        visit_number=pv1.value(19),
    )


# --- order groups ---------------------------------------------------------------------------


def _orders(message: Er7Message, default_zone: tzinfo | None) -> tuple[ImagingOrder, ...]:
    groups: list[list[Segment]] = []
    for segment in message.segments:
        if segment.name == "ORC":
            groups.append([segment])
        elif segment.name == "OBR" and (not groups or _implied_with_obr(groups[-1])):
            # An order group without its ORC (seed 002's ORM^O01): read as a new order. Once a
            # group opened by ORC is under way, a second OBR stays in it, as before.
            groups.append([segment])
        elif segment.name in _ORDER_SEGMENTS:
            if not groups:
                raise SegmentSequenceError(
                    f"{segment.name} segment before the first ORC", ErrorLocation(segment.name)
                )
            groups[-1].append(segment)
    if not groups:
        raise SegmentSequenceError("ORC segment missing", ErrorLocation("ORC"))
    return tuple(_order(index, group, default_zone) for index, group in enumerate(groups, start=1))


def _implied_with_obr(group: list[Segment]) -> bool:
    """Whether `group` has no ORC and already its OBR: the next OBR opens a group of its own."""
    return group[0].name == "OBR"


#: What a group without ORC is read as: a new order with nothing else the ORC would say.
_IMPLIED_ORC = CommonOrder(
    order_control=OrderControl.NEW_ORDER,
    placer_order_number=None,
    filler_order_number=None,
    order_status="",
    quantity_timing=None,
    ordering_provider=None,
    implied=True,
)


def _order(sequence: int, group: list[Segment], default_zone: tzinfo | None) -> ImagingOrder:
    orc = group[0]
    common = _IMPLIED_ORC if orc.name == "OBR" else _common_order(orc, default_zone)
    obr = _first(group, "OBR")
    if obr is None and common.order_control in _NEEDS_OBSERVATION_REQUEST:
        raise SegmentSequenceError(
            f"order {sequence} ({common.order_control.value}) has no OBR segment",
            ErrorLocation("ORC", orc.sequence),
        )
    tq1 = _first(group, "TQ1")
    ipc = _first(group, "IPC")
    zds = _first(group, "ZDS")
    order = ImagingOrder(
        sequence=sequence,
        common_order=common,
        timing_quantity=_timing_quantity(tq1, default_zone) if tq1 else None,
        observation_request=_observation_request(obr, default_zone) if obr else None,
        procedure_control=_procedure_control(ipc) if ipc else None,
        zds_study_instance_uid=zds.value(1) if zds else "",
    )
    _check_dicom_identifiers(order, obr, ipc, zds)
    return order


def _first(group: list[Segment], name: str) -> Segment | None:
    return next((segment for segment in group if segment.name == name), None)


def _common_order(orc: Segment, default_zone: tzinfo | None) -> CommonOrder:
    control_code = orc.value(1).strip()
    if not control_code:
        raise RequiredFieldMissing("ORC-1 order control is empty", _at("ORC", orc.sequence, 1))
    try:
        control = OrderControl(control_code.upper())
    except ValueError as exc:
        supported = " ".join(code.value for code in OrderControl)
        raise TableValueNotFound(
            f"ORC-1 order control {control_code} is not supported ({supported})",
            _at("ORC", orc.sequence, 1),
        ) from exc
    return CommonOrder(
        order_control=control,
        placer_order_number=read_ei(orc.field(2)),
        filler_order_number=read_ei(orc.field(3)),
        order_status=orc.value(5).strip(),
        quantity_timing=_quantity_timing(orc, 7, default_zone),
        ordering_provider=first_xcn(orc.repetitions(12)),
    )


def _observation_request(obr: Segment, default_zone: tzinfo | None) -> ObservationRequest:
    service = read_ce(obr.field(4))
    if service is None or not service.code:
        raise RequiredFieldMissing(
            "OBR-4 universal service id (procedure code) is empty", _at("OBR", obr.sequence, 4)
        )
    return ObservationRequest(
        placer_order_number=read_ei(obr.field(2)),
        filler_order_number=read_ei(obr.field(3)),
        universal_service_id=service,
        relevant_clinical_information=obr.value(13),
        ordering_provider=first_xcn(obr.repetitions(16)),
        accession_number=obr.value(18).strip(),
        requested_procedure_id=obr.value(19).strip(),
        diagnostic_service_section=obr.value(24).strip(),
        quantity_timing=_quantity_timing(obr, 27, default_zone),
        reason_for_study=_first_coded(obr, 31),
    )


def _first_coded(segment: Segment, number: int) -> CodedElement | None:
    for repetition in segment.repetitions(number):
        coded = read_ce(repetition)
        if coded is not None:
            return coded
    return None


def _quantity_timing(
    segment: Segment, number: int, default_zone: tzinfo | None
) -> QuantityTiming | None:
    """TQ: component 4 start date/time (TS, its first subcomponent), component 6 priority."""
    value = segment.field(number)
    if value.is_empty:
        return None
    start = _timestamp(segment, number, 4, default_zone)
    code = value.component(6).strip()
    return QuantityTiming(start, _priority(code, segment, number, 6), code)


def _timing_quantity(tq1: Segment, default_zone: tzinfo | None) -> TimingQuantity:
    """TQ1-7 start date/time (TS-1), TQ1-9 priority (CWE-1)."""
    code = tq1.value(9).strip()
    return TimingQuantity(
        start=_timestamp(tq1, 7, 1, default_zone),
        priority=_priority(code, tq1, 9, 1),
        priority_code=code,
    )


def _procedure_control(ipc: Segment) -> ImagingProcedureControl:
    return ImagingProcedureControl(
        accession_number=ipc.value(1).strip(),
        requested_procedure_id=ipc.value(2).strip(),
        study_instance_uid=ipc.value(3).strip(),
        scheduled_procedure_step_id=ipc.value(4).strip(),
        modality=ipc.value(5).strip(),
    )


def _priority(code: str, segment: Segment, number: int, component: int) -> Priority | None:
    if not code:
        return None
    try:
        return PRIORITY_CODES[code.upper()]
    except KeyError as exc:
        raise TableValueNotFound(
            f"{segment.name}-{number} priority {code} is not in HL7 table 0027 (S A R P T)",
            _at(segment.name, segment.sequence, number, component),
        ) from exc


def _timestamp(
    segment: Segment, number: int, component: int, default_zone: tzinfo | None
) -> datetime | None:
    # TS is DTM^precision: when TS is itself a component (TQ-4), DTM is its first subcomponent.
    text = segment.field(number).component(component, 1).strip()
    if not text:
        return None
    try:
        return parse_timestamp(text, default_zone)
    except ValueError as exc:
        where = f"{segment.name}-{number}" + (f".{component}" if component > 1 else "")
        raise DataTypeError(
            f"{where} date/time: {exc}",
            _at(segment.name, segment.sequence, number, component if component > 1 else None),
        ) from exc


def _check_dicom_identifiers(
    order: ImagingOrder, obr: Segment | None, ipc: Segment | None, zds: Segment | None
) -> None:
    """These values go into DICOM (worklist, images): refuse what DICOM cannot carry."""
    source = ipc if ipc is not None and ipc.value(1) else obr
    if source is not None and len(order.accession_number) > _DICOM_SH_LENGTH:
        field = 1 if source is ipc else 18
        raise DataTypeError(
            f"accession number longer than {_DICOM_SH_LENGTH} characters (DICOM SH)",
            _at(source.name, source.sequence, field),
        )
    source = ipc if ipc is not None and ipc.value(2) else obr
    if source is not None and len(order.requested_procedure_id) > _DICOM_SH_LENGTH:
        field = 2 if source is ipc else 19
        raise DataTypeError(
            f"requested procedure id longer than {_DICOM_SH_LENGTH} characters (DICOM SH)",
            _at(source.name, source.sequence, field),
        )
    uid = order.study_instance_uid
    if uid and not _is_dicom_uid(uid):
        source = ipc if ipc is not None and ipc.value(3) else zds
        assert source is not None  # a non-empty UID came from one of them
        field = 3 if source is ipc else 1
        raise DataTypeError(
            "study instance UID is not a valid DICOM UID (digits and dots, at most 64)",
            _at(source.name, source.sequence, field),
        )


def _is_dicom_uid(uid: str) -> bool:
    if len(uid) > _DICOM_UID_LENGTH or uid.startswith(".") or uid.endswith("."):
        return False
    return all(
        part.isascii() and part.isdigit() and (part == "0" or part[0] != "0")
        for part in uid.split(".")
    )
