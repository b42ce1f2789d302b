"""An inbound imaging order (ORM^O01, OMI^O23) in domain terms, as read from its segments.

Each segment's fields stay in their own value (`CommonOrder` = ORC, `ObservationRequest` = OBR,
`TimingQuantity` = TQ1) so nothing is lost; `ImagingOrder` resolves what the order logic uses
(accession number, priority, scheduled start ...) with the precedence documented on each property.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum

from hl7.datatypes import CodedElement, EntityIdentifier, HierarchicDesignator, PersonName, Provider
from hl7.header import MessageHeader


class Priority(StrEnum):
    """Reading priority of the imaging order, from HL7 table 0027 (see orders.PRIORITY_CODES)."""

    STAT = "STAT"
    URGENT = "URGENT"
    ROUTINE = "ROUTINE"


class Sex(StrEnum):
    """PID-8 administrative sex, HL7 table 0001 (v2.5.1)."""

    FEMALE = "F"
    MALE = "M"
    OTHER = "O"
    UNKNOWN = "U"
    AMBIGUOUS = "A"
    NOT_APPLICABLE = "N"


class OrderControl(StrEnum):
    """ORC-1, the subset of HL7 table 0119 a placer (HIS) sends for imaging orders.

    Other table 0119 codes (RE observations, CH child orders ...) have no meaning for a radiology
    order feed and are answered AE 103 rather than ignored.
    """

    NEW_ORDER = "NW"
    CHANGE_ORDER = "XO"
    CANCEL_ORDER = "CA"
    DISCONTINUE_ORDER = "DC"
    STATUS_CHANGED = "SC"
    HOLD_ORDER = "HD"
    RELEASE_HOLD = "RL"
    ORDER_CANCELED = "OC"
    ORDER_DISCONTINUED = "OD"


@dataclass(frozen=True)
class PatientIdentifier:
    """PID-3 (CX): the first repetition whose id (CX-1) is not empty."""

    id: str  # CX-1
    assigning_authority: HierarchicDesignator  # CX-4
    identifier_type: str  # CX-5, e.g. MR, PI


@dataclass(frozen=True)
class Patient:
    identifier: PatientIdentifier  # PID-3
    name: PersonName  # PID-5, first repetition
    birth_date: date | None  # PID-7 (date part; YYYYMMDD required when present)
    sex: Sex | None  # PID-8


@dataclass(frozen=True)
class Visit:
    patient_class: str  # PV1-2 (I inpatient, O outpatient, E emergency ...)
    facility: str  # PV1-3.4 (PL-4, HD-1): the facility of the patient's assigned location
    referring_provider: Provider | None  # PV1-8, first repetition naming someone
    visit_number: str  # PV1-19, CX-1


@dataclass(frozen=True)
class QuantityTiming:
    """TQ (ORC-7, OBR-27; retained for backward compatibility since v2.5)."""

    start: datetime | None  # TQ-4 start date/time
    priority: Priority | None  # TQ-6 priority, mapped
    priority_code: str  # TQ-6 as sent


@dataclass(frozen=True)
class TimingQuantity:
    """TQ1 (v2.5+), the first one of the order group."""

    start: datetime | None  # TQ1-7 start date/time
    priority: Priority | None  # TQ1-9 priority (CWE-1), mapped
    priority_code: str  # TQ1-9.1 as sent


@dataclass(frozen=True)
class CommonOrder:
    """ORC."""

    order_control: OrderControl  # ORC-1
    placer_order_number: EntityIdentifier | None  # ORC-2
    filler_order_number: EntityIdentifier | None  # ORC-3
    order_status: str  # ORC-5, table 0038 ('' when absent)
    quantity_timing: QuantityTiming | None  # ORC-7 (v2.3/2.4 senders schedule here)
    ordering_provider: Provider | None  # ORC-12
    # No ORC was sent: the group began at its OBR and is read as ORC-1 NW (the message log
    # says so). Some HIS feeds send ORM^O01 that way.
    implied: bool = False


@dataclass(frozen=True)
class ObservationRequest:
    """OBR (the requested procedure)."""

    placer_order_number: EntityIdentifier | None  # OBR-2
    filler_order_number: EntityIdentifier | None  # OBR-3
    universal_service_id: CodedElement  # OBR-4: procedure code^text^coding system
    relevant_clinical_information: str  # OBR-13
    ordering_provider: Provider | None  # OBR-16
    accession_number: str  # OBR-18, placer field 1 (IHE Radiology)
    requested_procedure_id: str  # OBR-19, placer field 2 (IHE Radiology)
    diagnostic_service_section: str  # OBR-24, the modality (CT, MR, US ...)
    quantity_timing: QuantityTiming | None  # OBR-27
    reason_for_study: CodedElement | None  # OBR-31, first repetition


@dataclass(frozen=True)
class ImagingProcedureControl:
    """IPC (OMI^O23): DICOM identifiers the placer assigned."""

    accession_number: str  # IPC-1 (EI-1)
    requested_procedure_id: str  # IPC-2 (EI-1)
    study_instance_uid: str  # IPC-3 (EI-1)
    scheduled_procedure_step_id: str  # IPC-4 (EI-1)
    modality: str  # IPC-5 (CE-1)


@dataclass(frozen=True)
class ImagingOrder:
    """One order group: ORC, then its TQ1, OBR, ZDS or IPC.

    `sequence` is the group's position (1 = first ORC), used for error locations.
    """

    sequence: int
    common_order: CommonOrder
    timing_quantity: TimingQuantity | None
    observation_request: ObservationRequest | None  # None only for CA/DC/SC/... without OBR
    procedure_control: ImagingProcedureControl | None  # IPC, OMI^O23 only
    zds_study_instance_uid: str  # ZDS-1.1 ('' when no ZDS)

    @property
    def order_control(self) -> OrderControl:
        return self.common_order.order_control

    @property
    def order_status(self) -> str:
        return self.common_order.order_status

    @property
    def placer_order_number(self) -> EntityIdentifier | None:
        """ORC-2, else OBR-2 (v2.5.1 requires them equal when both are sent)."""
        obr = self.observation_request
        return self.common_order.placer_order_number or (obr.placer_order_number if obr else None)

    @property
    def filler_order_number(self) -> EntityIdentifier | None:
        """ORC-3, else OBR-3."""
        obr = self.observation_request
        return self.common_order.filler_order_number or (obr.filler_order_number if obr else None)

    @property
    def ordering_provider(self) -> Provider | None:
        """ORC-12 (v2.5.1's place for it), else OBR-16 (where v2.3 senders put it)."""
        obr = self.observation_request
        return self.common_order.ordering_provider or (obr.ordering_provider if obr else None)

    @property
    def procedure(self) -> CodedElement | None:
        """OBR-4 universal service id."""
        obr = self.observation_request
        return obr.universal_service_id if obr else None

    @property
    def accession_number(self) -> str:
        """IPC-1, else OBR-18; '' when absent (the order service generates one)."""
        ipc, obr = self.procedure_control, self.observation_request
        return (ipc.accession_number if ipc else "") or (obr.accession_number if obr else "")

    @property
    def requested_procedure_id(self) -> str:
        """IPC-2, else OBR-19."""
        ipc, obr = self.procedure_control, self.observation_request
        return (ipc.requested_procedure_id if ipc else "") or (
            obr.requested_procedure_id if obr else ""
        )

    @property
    def modality(self) -> str:
        """IPC-5, else OBR-24."""
        ipc, obr = self.procedure_control, self.observation_request
        return (ipc.modality if ipc else "") or (obr.diagnostic_service_section if obr else "")

    @property
    def study_instance_uid(self) -> str:
        """IPC-3, else ZDS-1; '' when absent (the order service generates one)."""
        ipc = self.procedure_control
        return (ipc.study_instance_uid if ipc else "") or self.zds_study_instance_uid

    @property
    def reason_for_study(self) -> CodedElement | None:
        obr = self.observation_request
        return obr.reason_for_study if obr else None

    def _timings(self) -> list[TimingQuantity | QuantityTiming]:
        obr = self.observation_request
        found = [
            self.timing_quantity,
            obr.quantity_timing if obr else None,
            self.common_order.quantity_timing,
        ]
        return [timing for timing in found if timing]

    @property
    def priority(self) -> Priority:
        """TQ1-9, else OBR-27.6, else ORC-7.6, else ROUTINE."""
        return next((t.priority for t in self._timings() if t.priority), Priority.ROUTINE)

    @property
    def priority_sent(self) -> bool:
        """Whether TQ1-9, OBR-27.6 or ORC-7.6 named a priority (else `priority` is a default)."""
        return any(t.priority for t in self._timings())

    @property
    def scheduled_start(self) -> datetime | None:
        """TQ1-7, else OBR-27.4, else ORC-7.4."""
        return next((t.start for t in self._timings() if t.start), None)


@dataclass(frozen=True)
class OrderMessage:
    header: MessageHeader
    message_datetime: datetime | None  # MSH-7
    patient: Patient
    visit: Visit | None  # None when no PV1
    orders: tuple[ImagingOrder, ...]  # one per ORC, at least one
