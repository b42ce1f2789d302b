"""Logging in and one's own account: login, refresh, logout, who am I, changing one's password,
and two-factor enrolment."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Response, status
from sqlmodel import Session

from sidecar.accounts import refresh, throttle, totp
from sidecar.accounts.dependencies import (
    AnyScopeUser,
    ClientAddress,
    PasswordChanger,
    TotpEnroller,
)
from sidecar.accounts.login import authenticate, issue_tokens
from sidecar.accounts.models import (
    LoginRequest,
    PasswordChange,
    RefreshRequest,
    TokenResponse,
    TotpEnrolment,
    TotpVerification,
    User,
    UserPublic,
)
from sidecar.accounts.passwords import check_password
from sidecar.accounts.security import hash_password, verify_password
from sidecar.core import audit
from sidecar.core.dependencies import ClockDep, SessionDep, SettingsDep
from sidecar.core.errors import ConflictingState, NotAuthenticated, UnacceptableValue
from sidecar.core.models import utcnow

log = logging.getLogger(__name__)
auth_router = APIRouter(prefix="/api/auth", tags=["auth"])

_REFRESH_REFUSED = "the refresh token is unknown, expired, revoked or already used: log in again"


@auth_router.post("/login", response_model=TokenResponse)
def login(
    body: LoginRequest,
    session: SessionDep,
    settings: SettingsDep,
    clock: ClockDep,
    address: ClientAddress,
) -> TokenResponse:
    """A full session (access and refresh tokens), or a restricted access token when the
    account must first change its password or set up two-factor authentication (`scope`)."""
    now = clock()
    user = authenticate(
        session,
        settings,
        username=body.username,
        password=body.password,
        totp_code=body.totp_code,
        address=address,
        now=now,
        channel="api",
    )
    tokens = issue_tokens(session, user, settings, now=now)
    session.commit()
    return tokens


@auth_router.post("/refresh", response_model=TokenResponse)
def refresh_session(
    body: RefreshRequest, session: SessionDep, settings: SettingsDep, clock: ClockDep
) -> TokenResponse:
    """A new access token and a new refresh token for a refresh token, which is then used up.
    Using one a second time ends the session it belongs to, for whoever holds it."""
    now = clock()
    try:
        used = refresh.rotate(session, body.refresh_token, now=now)
    except refresh.RefreshRefused as refused:
        _audit_refused(session, refused)
        raise NotAuthenticated(_REFRESH_REFUSED) from None
    user = session.get(User, used.user_id)
    if user is None or not user.is_active:
        refresh.revoke_family(session, used.family_id, now=now)
        session.commit()
        raise NotAuthenticated(_REFRESH_REFUSED)
    tokens = issue_tokens(session, user, settings, now=now, family=used.family_id)
    if tokens.refresh_token is None:  # the account must take a step first: log in for it
        refresh.revoke_family(session, used.family_id, now=now)
        session.commit()
        raise NotAuthenticated(_REFRESH_REFUSED)
    session.commit()
    return tokens


def _audit_refused(session: Session, refused: refresh.RefreshRefused) -> None:
    if refused.reason == "reused" and refused.user_id is not None:
        log.warning("a used refresh token was presented again: its session is revoked")
        audit.record(
            session,
            actor=_username(session, refused.user_id),
            action="auth.refresh_reused",
            entity_type="user",
            entity_id=refused.user_id,
        )
        session.commit()


@auth_router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
def logout(body: RefreshRequest, session: SessionDep, clock: ClockDep) -> Response:
    """Ends the session of this refresh token (its access token lapses within minutes)."""
    try:
        row = refresh.revoke_family_of(session, body.refresh_token, now=clock())
    except refresh.RefreshRefused:
        raise NotAuthenticated(_REFRESH_REFUSED) from None
    audit.record(
        session,
        actor=_username(session, row.user_id),
        action="auth.logout",
        entity_type="user",
        entity_id=row.user_id,
    )
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _username(session: Session, user_id: int) -> str:
    user = session.get(User, user_id)
    return user.username if user is not None else f"user:{user_id}"


@auth_router.get("/me", response_model=UserPublic)
def me(user: AnyScopeUser) -> User:
    return user


@auth_router.post("/password", response_model=TokenResponse)
def change_password(
    body: PasswordChange,
    user: PasswordChanger,
    session: SessionDep,
    settings: SettingsDep,
    clock: ClockDep,
    address: ClientAddress,
) -> TokenResponse:
    """Changes the caller's own password (required after an administrator's reset). Answers a
    new session: every other one of the account ends."""
    now = clock()
    limits = throttle.ThrottleLimits.from_settings(settings)
    throttle.check_not_locked(
        session, limits, username=user.username, user=user, address=address, now=now
    )
    if not verify_password(body.current_password, user.password_hash):
        throttle.record_attempt(
            session, limits, username=user.username, address=address, succeeded=False, now=now
        )
        audit.record(
            session,
            actor=user.username,
            action="user.password_change_refused",
            entity_type="user",
            entity_id=user.id,
            address=address[: throttle.MAX_ADDRESS_LENGTH],
        )
        session.commit()
        raise UnacceptableValue("body.currentPassword", "the current password is wrong")
    check_password(body.new_password, user.username, location="body.newPassword")
    if verify_password(body.new_password, user.password_hash):
        raise UnacceptableValue("body.newPassword", "the new password must differ from the old")
    assert user.id is not None
    user.password_hash = hash_password(body.new_password)
    user.must_change_password = False
    user.credentials_changed_at = utcnow()
    refresh.revoke_all(session, user.id, now=now)
    session.add(user)
    audit.record(
        session,
        actor=user.username,
        action="user.password_changed",
        entity_type="user",
        entity_id=user.id,
    )
    tokens = issue_tokens(session, user, settings, now=now)
    session.commit()
    return tokens


@auth_router.post("/totp/enroll", response_model=TotpEnrolment)
def enroll_totp(user: TotpEnroller, session: SessionDep, settings: SettingsDep) -> TotpEnrolment:
    """A new two-factor secret for the caller's authenticator app (the only time it is shown);
    not in force until POST /api/auth/totp/verify confirms a code from it."""
    if user.totp_enabled:
        raise ConflictingState(
            "two-factor authentication is already set up: an administrator can reset it"
        )
    secret = totp.new_secret()
    user.totp_secret = totp.encrypt_secret(secret, settings.jwt_secret)
    user.totp_last_step = None
    session.add(user)
    audit.record(
        session,
        actor=user.username,
        action="user.totp_enrolment_started",
        entity_type="user",
        entity_id=user.id,
    )
    session.commit()
    return TotpEnrolment(
        secret=secret, provisioning_uri=totp.provisioning_uri(secret, user.username)
    )


@auth_router.post("/totp/verify", response_model=TokenResponse)
def verify_totp(
    body: TotpVerification,
    user: TotpEnroller,
    session: SessionDep,
    settings: SettingsDep,
    clock: ClockDep,
) -> TokenResponse:
    """Turns two-factor authentication on with a code from the enrolled secret; answers a new
    session (a full one for an administrator who needed this step)."""
    now = clock()
    if user.totp_enabled:
        raise ConflictingState("two-factor authentication is already set up")
    if user.totp_secret is None:
        raise ConflictingState("no enrolment to verify: POST /api/auth/totp/enroll first")
    if not totp.use_code(session, user, body.code, settings.jwt_secret, now):
        session.commit()
        raise UnacceptableValue("body.code", "the code is wrong, expired or already used")
    user.totp_enabled = True
    session.add(user)
    audit.record(
        session,
        actor=user.username,
        action="user.totp_enabled",
        entity_type="user",
        entity_id=user.id,
    )
    tokens = issue_tokens(session, user, settings, now=now)
    session.commit()
    return tokens
