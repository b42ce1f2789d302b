"""Logging in, for the API and the viewer's login form alike: throttling, password, two-factor
code, the audit of every attempt, and the tokens a successful login gets.

Every refusal of a user name or password says the same thing, whichever was wrong or whether the
account is disabled; the audit trail (for administrators) says which. The two-factor code is
asked for only once the password was right, so its refusal does say that much, and counts as a
failure towards the lockout like any other.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlmodel import Session, select

from sidecar.accounts import refresh, throttle, totp
from sidecar.accounts.models import Role, TokenResponse, TokenScope, User
from sidecar.accounts.security import create_access_token, verify_password
from sidecar.core import audit
from sidecar.core.errors import NotAuthenticated, TooManyAttempts
from sidecar.core.settings import Settings

log = logging.getLogger(__name__)

BAD_CREDENTIALS = "unknown username, wrong password or disabled account"
TOTP_REQUIRED = "a two-factor code is required for this account: send totpCode"
TOTP_WRONG = "the two-factor code is wrong or was already used"
UNKNOWN_ACTOR = "unknown"


class TotpNeeded(NotAuthenticated):
    """The password was right; the two-factor code is missing or wrong."""

    def __init__(self, message: str) -> None:
        super().__init__(message, details=[{"location": "body.totpCode", "message": message}])


def authenticate(
    session: Session,
    settings: Settings,
    *,
    username: str,
    password: str,
    totp_code: str | None,
    address: str,
    now: datetime,
    channel: str,
) -> User:
    """The account these credentials open, recorded as a success; else raises TooManyAttempts
    (429) or NotAuthenticated (401), the failure recorded and committed. Hashes a password:
    call it off the event loop."""
    limits = throttle.ThrottleLimits.from_settings(settings)
    user = session.exec(select(User).where(User.username == username)).first()
    try:
        throttle.check_not_locked(
            session, limits, username=username, user=user, address=address, now=now
        )
    except TooManyAttempts:
        _audit(session, user, address, channel, succeeded=False, reason="locked")
        session.commit()
        raise
    valid = verify_password(password, user.password_hash if user else None)
    reason: str | None = None
    refusal: NotAuthenticated = NotAuthenticated(BAD_CREDENTIALS)
    if user is None:
        reason = "unknown_user"
    elif not valid:
        reason = "wrong_password"
    elif not user.is_active:
        reason = "disabled"
    elif user.totp_enabled:
        if totp_code is None:
            reason, refusal = "totp_missing", TotpNeeded(TOTP_REQUIRED)
        elif not totp.use_code(session, user, totp_code, settings.jwt_secret, now):
            reason, refusal = "totp_wrong", TotpNeeded(TOTP_WRONG)
    throttle.record_attempt(
        session, limits, username=username, address=address, succeeded=reason is None, now=now
    )
    _audit(session, user, address, channel, succeeded=reason is None, reason=reason)
    session.commit()
    if reason is not None:
        log.info("login refused")
        raise refusal
    assert user is not None
    return user


def _audit(
    session: Session,
    user: User | None,
    address: str,
    channel: str,
    *,
    succeeded: bool,
    reason: str | None,
) -> None:
    # The actor is the account when the name is one: a name that is not may be a password
    # typed in the wrong field, and is not recorded.
    detail: dict[str, object] = {"address": address[: throttle.MAX_ADDRESS_LENGTH]}
    detail["channel"] = channel
    if reason is not None:
        detail["reason"] = reason
    audit.record(
        session,
        actor=user.username if user else UNKNOWN_ACTOR,
        action="auth.login_succeeded" if succeeded else "auth.login_failed",
        entity_type="user",
        entity_id=user.id if user and user.id is not None else UNKNOWN_ACTOR,
        **detail,
    )


def token_scope(user: User, settings: Settings) -> TokenScope:
    """What a session of this account may do now: change the password first after a reset,
    set up two-factor authentication first for an administrator who must have it, else all."""
    if user.must_change_password:
        return TokenScope.PASSWORD_CHANGE
    if user.role is Role.ADMIN and settings.require_admin_2fa and not user.totp_enabled:
        return TokenScope.TOTP_ENROLMENT
    return TokenScope.FULL


def issue_tokens(
    session: Session, user: User, settings: Settings, *, now: datetime, family: str | None = None
) -> TokenResponse:
    """An access token for the account's scope, and for a full one a refresh token (of
    `family`, when refreshing); the caller commits."""
    assert user.id is not None
    scope = token_scope(user, settings)
    access, expires_in = create_access_token(
        user_id=user.id,
        username=user.username,
        role=user.role,
        secret=settings.jwt_secret,
        lifetime=timedelta(minutes=settings.jwt_expire_minutes),
        scope=scope,
    )
    refresh_value = None
    if scope is TokenScope.FULL:
        lifetime = timedelta(days=settings.refresh_token_days)
        refresh_value = refresh.issue(session, user.id, now=now, lifetime=lifetime, family=family)
    return TokenResponse(
        access_token=access, expires_in=expires_in, refresh_token=refresh_value, scope=scope
    )
