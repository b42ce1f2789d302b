"""Emergency access ("break the glass"): a physician's audited, time-limited access to one
patient's records outside their care relationship."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field as PydanticField
from pydantic import field_validator
from sqlmodel import Column, Field, Index, SQLModel, Text

from sidecar.core.models import ApiInput, ApiModel, UTCDateTime

REASON_MAX_LENGTH = 2000


class EmergencyAccess(SQLModel, table=True):
    """One grant: who, to which patient (id and issuer, as the study they asked from holds
    them), why, and until when. Kept for ever: it is the record administrators review."""

    __tablename__ = "emergency_access"
    __table_args__ = (Index("ix_emergency_access_user_expires", "user_id", "expires_at"),)

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="app_user.id")
    username: str = Field(max_length=64)  # as it was when granted
    study_id: int = Field(foreign_key="study.id", index=True)
    patient_id: str = Field(max_length=64)
    issuer_of_patient_id: str | None = Field(default=None, max_length=64)
    reason: str = Field(sa_column=Column(Text, nullable=False))
    granted_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False, index=True))
    expires_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class EmergencyAccessRequest(ApiInput):
    reason: str = PydanticField(min_length=1, max_length=REASON_MAX_LENGTH)

    @field_validator("reason")
    @classmethod
    def _says_something(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("a reason is required: say why the patient's records are needed")
        return value


class EmergencyAccessPublic(ApiModel):
    id: int
    user_id: int
    username: str
    study_id: int
    patient_id: str
    issuer_of_patient_id: str | None
    reason: str
    granted_at: datetime
    expires_at: datetime
