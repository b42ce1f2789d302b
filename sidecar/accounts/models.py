"""Users and roles. Passwords are stored only as hashes (see sidecar.accounts.security)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import Field as PydanticField
from sqlmodel import JSON, Column, Field, SQLModel

from sidecar.core.models import ApiInput, ApiModel, EnumText, UTCDateTime, utcnow


class Role(StrEnum):
    ADMIN = "admin"
    RADIOLOGIST = "radiologist"
    TECHNOLOGIST = "technologist"
    PHYSICIAN = "physician"
    INTEGRATION = "integration"


class User(SQLModel, table=True):
    __tablename__ = "app_user"

    id: int | None = Field(default=None, primary_key=True)
    username: str = Field(max_length=64, unique=True, index=True)
    password_hash: str = Field(max_length=255)
    role: Role = Field(sa_column=Column(EnumText(Role, 32), nullable=False))
    is_active: bool = True
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False)
    )
    # Tokens issued before this moment are refused: a password or role change logs the user out.
    credentials_changed_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    # For a physician: the provider id orders carry (ORC-12/OBR-16 from the HIS, `providerId`
    # over REST). It scopes which patients' results the physician reads.
    provider_id: str | None = Field(default=None, max_length=64, index=True)
    # The facilities whose records the user reads (sidecar.access.care_scope); empty: all.
    facilities: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))


# A facility id as orders carry it (MSH-4 or PV1-3.4 namespace id, `facilityId`).
FacilityId = Annotated[
    str, PydanticField(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f,]+$")
]
Facilities = Annotated[list[FacilityId], PydanticField(max_length=100)]


class UserCreate(ApiInput):
    username: str = PydanticField(min_length=3, max_length=64, pattern=r"^[A-Za-z0-9._@-]+$")
    password: str = PydanticField(min_length=12, max_length=256)
    role: Role
    provider_id: str | None = PydanticField(default=None, min_length=1, max_length=64)
    facilities: Facilities = PydanticField(default_factory=list)


class UserUpdate(ApiInput):
    # provider_id may be null (the account is unlinked from its provider id); these may not.
    not_nullable: ClassVar[frozenset[str]] = frozenset(
        {"is_active", "role", "password", "facilities"}
    )

    is_active: bool | None = None
    role: Role | None = None
    provider_id: str | None = PydanticField(default=None, min_length=1, max_length=64)
    facilities: Facilities | None = None
    password: str | None = PydanticField(default=None, min_length=12, max_length=256)


class UserPublic(ApiModel):
    id: int
    username: str
    role: Role
    is_active: bool
    provider_id: str | None
    facilities: list[str]
    created_at: datetime


class LoginRequest(ApiInput):
    username: str = PydanticField(min_length=1, max_length=64)
    password: str = PydanticField(min_length=1, max_length=256)


class TokenResponse(ApiModel):
    access_token: str
    token_type: str = "bearer"  # noqa: S105 (the OAuth2 token type, not a secret)
    expires_in: int
