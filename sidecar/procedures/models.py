"""The procedure catalog: what the department does for each procedure code an order names
(OBR-4, `procedureCode`): the modality, body part, scheduled station and protocol, expected
duration and default priority.

Every text value is checked by the DICOM rule of the worklist attribute it becomes
(sidecar.core.dicom_text, the rules orders are checked by): the code is a Code Value (SH), the
station AE title an AE, and so on. The same model checks the JSON API's bodies and each row of an
imported CSV file, so both refuse the same values.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from pydantic import Field as PydanticField
from pydantic import ValidationInfo, field_validator
from sqlmodel import Column, Field, SQLModel

from sidecar.core import dicom_text
from sidecar.core.models import ApiInput, ApiModel, EnumText, UTCDateTime, utcnow
from sidecar.orders.models import Modality, Priority

#: Each text value and the DICOM attribute it is written to on the worklist.
PROCEDURE_TEXT_RULES: dict[str, dicom_text.TextRule] = {
    "code": dicom_text.SH,  # Code Value (0008,0100) of the Requested Procedure Code Sequence
    "coding_system": dicom_text.SH,  # Coding Scheme Designator (0008,0102)
    "description": dicom_text.LO,  # Code Meaning (0008,0104), Requested Procedure Description
    "body_part": dicom_text.LO,  # kept on the order (an LO, as the order's own)
    "station_ae_title": dicom_text.AE,  # Scheduled Station AE Title (0040,0001)
    "station_name": dicom_text.SH,  # Scheduled Station Name (0040,0010)
    "protocol_code": dicom_text.SH,  # Code Value of the Scheduled Protocol Code Sequence
}
#: A code is a key: spaces only would be an empty Code Value once DICOM drops the padding.
_KEYS = frozenset({"code"})
MAX_EXPECTED_MINUTES = 24 * 60


class Procedure(SQLModel, table=True):
    __tablename__ = "catalog_procedure"

    id: int | None = Field(default=None, primary_key=True)
    code: str = Field(max_length=16, unique=True, index=True)
    coding_system: str | None = Field(default=None, max_length=16)
    description: str | None = Field(default=None, max_length=64)
    modality: Modality = Field(sa_column=Column(EnumText(Modality, 16), nullable=False))
    body_part: str | None = Field(default=None, max_length=64)
    station_ae_title: str | None = Field(default=None, max_length=16, index=True)
    station_name: str | None = Field(default=None, max_length=16)
    protocol_code: str | None = Field(default=None, max_length=16)
    expected_minutes: int | None = None
    priority: Priority | None = Field(default=None, sa_column=Column(EnumText(Priority, 16)))
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False)
    )
    updated_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False)
    )


class ProcedureFields(ApiInput):
    """What a client may set on a catalog entry (create, update and CSV rows share it)."""

    code: str | None = PydanticField(default=None, min_length=1, max_length=16)
    coding_system: str | None = PydanticField(default=None, max_length=16)
    description: str | None = PydanticField(default=None, max_length=64)
    modality: Modality | None = None
    body_part: str | None = PydanticField(default=None, max_length=64)
    station_ae_title: str | None = PydanticField(default=None, max_length=16)
    station_name: str | None = PydanticField(default=None, max_length=16)
    protocol_code: str | None = PydanticField(default=None, max_length=16)
    expected_minutes: int | None = PydanticField(default=None, ge=1, le=MAX_EXPECTED_MINUTES)
    priority: Priority | None = None

    @field_validator(*PROCEDURE_TEXT_RULES, mode="after")
    @classmethod
    def _fits(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str) and (problem := procedure_value_problem(info, value)):
            raise ValueError(problem)
        return value


def procedure_value_problem(info: ValidationInfo, value: str) -> str | None:
    name = info.field_name or ""
    if name in _KEYS and not value.strip(" "):
        return "is blank (only spaces)"
    return PROCEDURE_TEXT_RULES[name].problem(value)


class ProcedureCreate(ProcedureFields):
    code: str = PydanticField(min_length=1, max_length=16)
    modality: Modality


class ProcedureUpdate(ProcedureFields):
    # Their columns hold no null: left out keeps the value, null is refused.
    not_nullable: ClassVar[frozenset[str]] = frozenset({"code", "modality"})


class ProcedurePublic(ApiModel):
    id: int
    code: str
    coding_system: str | None
    description: str | None
    modality: Modality
    body_part: str | None
    station_ae_title: str | None
    station_name: str | None
    protocol_code: str | None
    expected_minutes: int | None
    priority: Priority | None
    created_at: datetime
    updated_at: datetime


class ImportOutcome(ApiModel):
    """What an import did: rows read, entries created and updated (all or nothing)."""

    rows: int
    created: int
    updated: int
