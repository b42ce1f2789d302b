"""Users and roles. Passwords are stored only as hashes (see sidecar.accounts.security)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import Field as PydanticField
from sqlalchemy import ForeignKey, Index, Integer
from sqlmodel import JSON, Column, Field, SQLModel

from sidecar.core.models import ApiInput, ApiModel, EnumText, UTCDateTime, utcnow


class Role(StrEnum):
    ADMIN = "admin"
    RADIOLOGIST = "radiologist"
    TECHNOLOGIST = "technologist"
    PHYSICIAN = "physician"
    INTEGRATION = "integration"
    # An AI analyzer's machine account: performs UPS work items (sidecar.analyses), and sees a
    # study only while it holds one of its work items.
    ANALYZER = "analyzer"


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
    # Set by an administrator's password reset: until the user chooses a password of their own,
    # a login gives a token good for POST /api/auth/password only.
    must_change_password: bool = False
    # Two-factor authentication (TOTP, sidecar.accounts.totp): the shared secret, encrypted;
    # enrolled but not yet verified while totp_enabled is false. totp_last_step is the time step
    # of the last code accepted: a code is good once.
    totp_secret: str | None = Field(default=None, max_length=255)
    totp_enabled: bool = False
    totp_last_step: int | None = None
    # Failed logins before this moment no longer count towards the lockout (an administrator
    # unlocked the account).
    lockout_cleared_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    # Reading (sidecar.reading.rules): an unavailable radiologist (away, off shift) gets no
    # study by rule; nor one already holding `max_open` unread studies (None: no limit).
    available: bool = True
    max_open: int | None = None


# A facility id as orders carry it (MSH-4 or PV1-3.4 namespace id, `facilityId`).
FacilityId = Annotated[
    str, PydanticField(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f,]+$")
]
Facilities = Annotated[list[FacilityId], PydanticField(max_length=100)]


class LoginAttempt(SQLModel, table=True):
    """One login attempt, for throttling (sidecar.accounts.throttle); the audit trail keeps the
    permanent record. `account_key` is a hash of the user name as given, so that a password
    typed into the user name field is never stored."""

    __tablename__ = "login_attempt"
    __table_args__ = (
        Index("ix_login_attempt_account_key_at", "account_key", "attempted_at"),
        Index("ix_login_attempt_address_at", "address", "attempted_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    account_key: str = Field(max_length=64)
    address: str = Field(max_length=64)
    succeeded: bool
    attempted_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False, index=True))


class RefreshToken(SQLModel, table=True):
    """A refresh token, by the SHA-256 of its value (the value itself is never stored). Each use
    replaces it with a new one of the same family; a replaced token used again revokes the
    family (someone holds a stolen copy)."""

    __tablename__ = "refresh_token"

    id: int | None = Field(default=None, primary_key=True)
    token_hash: str = Field(max_length=64, unique=True, index=True)
    family_id: str = Field(max_length=32, index=True)
    user_id: int = Field(
        sa_column=Column(
            Integer,
            ForeignKey("app_user.id", name="fk_refresh_token_user_id_app_user"),
            nullable=False,
            index=True,
        )
    )
    issued_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    expires_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    replaced_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    revoked_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))


MIN_PASSWORD_LENGTH = 12
Password = Annotated[str, PydanticField(min_length=MIN_PASSWORD_LENGTH, max_length=256)]


class UserCreate(ApiInput):
    username: str = PydanticField(min_length=3, max_length=64, pattern=r"^[A-Za-z0-9._@-]+$")
    password: Password
    role: Role
    provider_id: str | None = PydanticField(default=None, min_length=1, max_length=64)
    facilities: Facilities = PydanticField(default_factory=list)


class UserUpdate(ApiInput):
    # provider_id may be null (the account is unlinked from its provider id); these may not.
    not_nullable: ClassVar[frozenset[str]] = frozenset(
        {"is_active", "role", "password", "facilities", "available"}
    )

    is_active: bool | None = None
    role: Role | None = None
    provider_id: str | None = PydanticField(default=None, min_length=1, max_length=64)
    facilities: Facilities | None = None
    # Another user's new password is a reset: they must choose their own at their next login.
    password: Password | None = None
    available: bool | None = None
    max_open: int | None = PydanticField(default=None, ge=0, le=10000)


class UserPublic(ApiModel):
    id: int
    username: str
    role: Role
    is_active: bool
    provider_id: str | None
    facilities: list[str]
    created_at: datetime
    must_change_password: bool
    totp_enabled: bool
    available: bool
    max_open: int | None


TotpCode = Annotated[str, PydanticField(pattern=r"^[0-9]{6}$")]


class LoginRequest(ApiInput):
    username: str = PydanticField(min_length=1, max_length=64)
    password: str = PydanticField(min_length=1, max_length=256)
    # Required once the account has two-factor authentication.
    totp_code: TotpCode | None = None


class TokenScope(StrEnum):
    """What an access token may do: everything its role allows, or only the one step the
    account must take first."""

    FULL = "full"
    PASSWORD_CHANGE = "password_change"  # noqa: S105 (a scope's name, not a secret)
    TOTP_ENROLMENT = "totp_enrolment"


class TokenResponse(ApiModel):
    access_token: str
    token_type: str = "bearer"  # noqa: S105 (the OAuth2 token type, not a secret)
    expires_in: int
    # Null for a restricted token (scope other than full): it cannot be prolonged.
    refresh_token: str | None = None
    scope: TokenScope = TokenScope.FULL


RefreshTokenValue = Annotated[str, PydanticField(min_length=1, max_length=128)]


class RefreshRequest(ApiInput):
    refresh_token: RefreshTokenValue


class PasswordChange(ApiInput):
    current_password: str = PydanticField(min_length=1, max_length=256)
    new_password: Password


class TotpEnrolment(ApiModel):
    secret: str
    provisioning_uri: str


class TotpVerification(ApiInput):
    code: TotpCode
