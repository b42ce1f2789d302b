"""ORM^O01 status update (HL7 v2.5.1, 4.4.1; IHE Scheduled Workflow, the Order Filler's status
updates to the Order Placer): how far the department has come with an order.

    MSH  ...|ORM^O01^ORM_O01|<control id>|P|2.5.1|||||| <MSH-18 UNICODE UTF-8>
    PID  PID-3 patient id^^^issuer^MR, PID-5 name, PID-7 birth date, PID-8 sex
    ORC  SC | ORC-2 placer | ORC-3 filler | ORC-5 order status (HL7 table 0038) | ORC-9 when
    OBR  OBR-2/3 placer/filler, OBR-4 procedure, OBR-18 accession number, OBR-19 requested
         procedure id, OBR-24 the modality's diagnostic service section (RAD)

ORC-1 SC is "status changed"; ORC-5 is IP (in process: the exam started), CM (completed: the
final report is out), DC (discontinued: the exam was stopped) or CA (cancelled here). Built with
hl7apy at STRICT validation, as results are.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message

from hl7.header import OWN_VERSION
from hl7.outgoing import coded, escaped, write_header, write_patient
from hl7.timestamps import format_timestamp


class OrderStatusCode(StrEnum):
    """ORC-5 (HL7 table 0038) values the department sends."""

    IN_PROCESS = "IP"
    COMPLETED = "CM"
    DISCONTINUED = "DC"
    CANCELLED = "CA"


@dataclass(frozen=True)
class OrderStatusMessage:
    control_id: str
    created_at: datetime
    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    status: OrderStatusCode
    patient_id: str
    issuer_of_patient_id: str | None
    patient_name: str | None  # DICOM PN order
    patient_birth_date: date | None
    patient_sex: str | None
    placer_order_number: str | None
    filler_order_number: str
    accession_number: str
    requested_procedure_id: str | None
    procedure_code: str | None
    procedure_description: str | None


def build_order_status_message(update: OrderStatusMessage) -> str:
    """The ORM^O01 as ER7 text, segments ending in CR."""
    message = Message("ORM_O01", version=OWN_VERSION, validation_level=VALIDATION_LEVEL.STRICT)
    write_header(message.msh, update, "ORM^O01^ORM_O01")
    write_patient(message.add_group("ORM_O01_PATIENT").pid, update)

    order = message.add_group("ORM_O01_ORDER")
    placer = escaped(update.placer_order_number or "")
    filler = escaped(update.filler_order_number)
    orc = order.orc
    orc.orc_1 = "SC"
    if placer:
        orc.orc_2 = placer
    orc.orc_3 = filler
    orc.orc_5 = update.status.value
    orc.orc_9 = format_timestamp(update.created_at)

    detail = order.add_group("ORM_O01_ORDER_DETAIL")
    obr = detail.add_group("ORM_O01_OBRRQDRQ1RXOODSODT_SUPPGRP").obr
    obr.obr_1 = "1"
    if placer:
        obr.obr_2 = placer
    obr.obr_3 = filler
    obr.obr_4 = coded(update.procedure_code, update.procedure_description)
    obr.obr_18 = escaped(update.accession_number)
    if update.requested_procedure_id:
        obr.obr_19 = escaped(update.requested_procedure_id)
    obr.obr_24 = "RAD"
    return str(message.to_er7()) + "\r"
