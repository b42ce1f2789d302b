"""Login throttling, kept in the database so that it survives restarts and holds across
several sidecar nodes on one PostgreSQL.

A user name is locked (429, with Retry-After) once LOGIN_MAX_FAILURES failures for it fall within
the last LOGIN_WINDOW_MINUTES: even the right password is refused until the oldest of those
failures leaves the window, or an administrator unlocks the account. A success clears the
count. A client address has a higher limit of its own (LOGIN_MAX_FAILURES_PER_ADDRESS), where
successes do not count: one address trying many user names is stopped too. Refusals while locked
are not counted, so a lockout lasts one window at most after the last counted failure.

Unknown user names are counted like real ones: whether a name locks says nothing about whether
it exists. Names are kept as a SHA-256 hash (a password typed into the name field is never
stored). Two nodes checking at the same instant may each let one more attempt through: the
limit is exact to within the number of concurrent requests.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, delete
from sqlmodel import Session, col, func, select

from sidecar.accounts.models import LoginAttempt, User
from sidecar.core.errors import TooManyAttempts
from sidecar.core.models import table_of
from sidecar.core.settings import Settings

# Attempts older than this are deleted (the audit trail keeps them).
_KEEP = timedelta(days=1)
MAX_ADDRESS_LENGTH = 64


@dataclass(frozen=True)
class ThrottleLimits:
    max_failures: int
    max_failures_per_address: int
    window: timedelta

    @classmethod
    def from_settings(cls, settings: Settings) -> ThrottleLimits:
        return cls(
            settings.login_max_failures,
            settings.login_max_failures_per_address,
            timedelta(minutes=settings.login_window_minutes),
        )


def account_key(username: str) -> str:
    return hashlib.sha256(username.encode("utf-8", "surrogatepass")).hexdigest()


def locked_for(
    session: Session,
    limits: ThrottleLimits,
    *,
    username: str,
    user: User | None,
    address: str,
    now: datetime,
) -> int | None:
    """Seconds until this user name and address may try again; None when they may now."""
    key = account_key(username)
    since = now - limits.window
    last_success = session.exec(
        select(func.max(LoginAttempt.attempted_at)).where(
            LoginAttempt.account_key == key, col(LoginAttempt.succeeded).is_(True)
        )
    ).one()
    account_since = max(
        t for t in (since, last_success, user.lockout_cleared_at if user else None) if t
    )
    waits = [
        _wait(
            session,
            col(LoginAttempt.account_key) == key,
            account_since,
            limits.max_failures,
            limits.window,
            now,
        ),
        _wait(
            session,
            col(LoginAttempt.address) == _address(address),
            since,
            limits.max_failures_per_address,
            limits.window,
            now,
        ),
    ]
    return max((w for w in waits if w is not None), default=None)


def _wait(
    session: Session,
    condition: ColumnElement[bool],
    since: datetime,
    limit: int,
    window: timedelta,
    now: datetime,
) -> int | None:
    """The failures since `since` matching `condition`: when there are `limit` of them, the
    seconds until the oldest of the last `limit` leaves the window."""
    times = session.exec(
        select(LoginAttempt.attempted_at)
        .where(condition, col(LoginAttempt.succeeded).is_(False), LoginAttempt.attempted_at > since)
        .order_by(col(LoginAttempt.attempted_at).desc())
        .limit(limit)
    ).all()
    if len(times) < limit:
        return None
    return max(1, math.ceil((times[-1] + window - now).total_seconds()))


def check_not_locked(
    session: Session,
    limits: ThrottleLimits,
    *,
    username: str,
    user: User | None,
    address: str,
    now: datetime,
) -> None:
    wait = locked_for(session, limits, username=username, user=user, address=address, now=now)
    if wait is not None:
        raise TooManyAttempts(
            "too many failed logins: this account or address is locked for now; try again "
            "later or ask an administrator to unlock it",
            retry_after=wait,
        )


def record_attempt(
    session: Session,
    limits: ThrottleLimits,
    *,
    username: str,
    address: str,
    succeeded: bool,
    now: datetime,
) -> None:
    """Adds the attempt to the session (the caller commits); a success also deletes attempts
    too old to matter."""
    session.connection().execute(
        table_of(LoginAttempt).insert(),
        {
            "account_key": account_key(username),
            "address": _address(address),
            "succeeded": succeeded,
            "attempted_at": now,
        },
    )
    if succeeded:
        session.connection().execute(
            delete(table_of(LoginAttempt)).where(
                table_of(LoginAttempt).c.attempted_at < now - max(_KEEP, limits.window)
            )
        )


def _address(address: str) -> str:
    return address[:MAX_ADDRESS_LENGTH]
