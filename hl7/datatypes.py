"""The HL7 composite data types the order feed reads, as small frozen values.

Absent text is '' (HL7 has no distinction the order mapping needs); absent structures are None.
Each reader takes one field repetition (`FieldValue`) and decodes only the components it returns.
"""

from __future__ import annotations

from dataclasses import dataclass

from hl7.er7 import FieldValue


@dataclass(frozen=True)
class HierarchicDesignator:
    """HD: an application, facility or assigning authority (MSH-3..6, CX-4)."""

    namespace_id: str = ""
    universal_id: str = ""
    universal_id_type: str = ""

    @property
    def name(self) -> str:
        """The local name, else the universal id (e.g. an OID), for display and logs."""
        return self.namespace_id or self.universal_id

    @property
    def is_empty(self) -> bool:
        return not (self.namespace_id or self.universal_id or self.universal_id_type)


def read_hd(value: FieldValue) -> HierarchicDesignator:
    """HD as a whole field (components 1-3)."""
    return HierarchicDesignator(value.component(1), value.component(2), value.component(3))


def read_hd_component(value: FieldValue, component: int) -> HierarchicDesignator:
    """HD nested as a component (its parts are subcomponents), e.g. CX-4 assigning authority."""
    return HierarchicDesignator(
        value.component(component, 1),
        value.component(component, 2),
        value.component(component, 3),
    )


@dataclass(frozen=True)
class EntityIdentifier:
    """EI: placer/filler order numbers (ORC-2/3, OBR-2/3), unique within their namespace."""

    entity_id: str
    namespace_id: str = ""
    universal_id: str = ""
    universal_id_type: str = ""


def read_ei(value: FieldValue) -> EntityIdentifier | None:
    entity_id = value.component(1)
    if not entity_id:
        return None
    return EntityIdentifier(entity_id, value.component(2), value.component(3), value.component(4))


@dataclass(frozen=True)
class CodedElement:
    """CE/CWE: code, text and coding system (OBR-4 procedure, OBR-31 reason for study)."""

    code: str
    text: str = ""
    coding_system: str = ""


def read_ce(value: FieldValue) -> CodedElement | None:
    code, text = value.component(1), value.component(2)
    if not (code or text):
        return None
    return CodedElement(code, text, value.component(3))


@dataclass(frozen=True)
class PersonName:
    """XPN (patient) and the name part of XCN (providers), in DICOM PN order of parts."""

    family_name: str = ""
    given_name: str = ""
    middle_name: str = ""
    prefix: str = ""
    suffix: str = ""

    @property
    def is_empty(self) -> bool:
        return not (self.family_name or self.given_name or self.middle_name)


def read_xpn(value: FieldValue) -> PersonName:
    """XPN: 1 family name (FN, first subcomponent: the surname), 2 given, 3 further given
    names, 4 suffix, 5 prefix."""
    return PersonName(
        family_name=value.component(1, 1),
        given_name=value.component(2),
        middle_name=value.component(3),
        prefix=value.component(5),
        suffix=value.component(4),
    )


@dataclass(frozen=True)
class Provider:
    """XCN: a clinician (PV1-8 referring doctor, ORC-12/OBR-16 ordering provider)."""

    id: str
    name: PersonName


def read_xcn(value: FieldValue) -> Provider | None:
    """XCN: 1 id, 2 family name (FN), 3 given, 4 further given names, 5 suffix, 6 prefix."""
    provider = Provider(
        id=value.component(1),
        name=PersonName(
            family_name=value.component(2, 1),
            given_name=value.component(3),
            middle_name=value.component(4),
            prefix=value.component(6),
            suffix=value.component(5),
        ),
    )
    if not provider.id and provider.name.is_empty:
        return None
    return provider


def first_xcn(repetitions: list[FieldValue]) -> Provider | None:
    """The first repetition naming a provider (id or name)."""
    for repetition in repetitions:
        provider = read_xcn(repetition)
        if provider is not None:
            return provider
    return None
