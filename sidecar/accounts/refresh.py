"""Refresh tokens: long-lived, single-use, stored only as their SHA-256.

Login starts a family; each refresh replaces the token used with a new one of the same family.
A replaced token presented again means two parties hold it (one of them stole it): the whole
family is revoked, and both must log in again. Logout revokes the family; a changed password or
role, a reset, or a disabled account revokes every family of the user.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from sqlalchemy import update
from sqlmodel import Session, select

from sidecar.accounts.models import RefreshToken
from sidecar.core.models import table_of


class RefreshRefused(Exception):
    """The token is unknown, expired, revoked or reused (`reason`); `user_id` is its account's,
    when the token is known."""

    def __init__(self, reason: str, *, user_id: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.user_id = user_id


def token_hash(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def issue(
    session: Session, user_id: int, *, now: datetime, lifetime: timedelta, family: str | None = None
) -> str:
    """A new refresh token for the user (a new family unless one is given); the caller commits."""
    value = secrets.token_urlsafe(32)
    session.add(
        RefreshToken(
            token_hash=token_hash(value),
            family_id=family or secrets.token_hex(16),
            user_id=user_id,
            issued_at=now,
            expires_at=now + lifetime,
        )
    )
    return value


def rotate(session: Session, value: str, *, now: datetime) -> RefreshToken:
    """Marks the token replaced and returns its row (the caller issues the successor in its
    family and commits). Raises RefreshRefused; a reused token's family is revoked first and
    committed, whatever the caller does next."""
    row = _find(session, value)
    if row.revoked_at is not None:
        raise RefreshRefused("revoked", user_id=row.user_id)
    if row.replaced_at is not None:
        _revoke_family_now(session, row, now)
        raise RefreshRefused("reused", user_id=row.user_id)
    if row.expires_at <= now:
        raise RefreshRefused("expired", user_id=row.user_id)
    table = table_of(RefreshToken)
    claimed = session.connection().execute(
        update(table)
        .where(table.c.id == row.id, table.c.replaced_at.is_(None), table.c.revoked_at.is_(None))
        .values(replaced_at=now)
    )
    if claimed.rowcount != 1:  # used at the same moment elsewhere: as good as reused
        _revoke_family_now(session, row, now)
        raise RefreshRefused("reused", user_id=row.user_id)
    return row


def revoke_family_of(session: Session, value: str, *, now: datetime) -> RefreshToken:
    """Logout: revokes the token's family (the caller commits). Raises RefreshRefused for an
    unknown token; a revoked or expired one is revoked again, harmlessly."""
    row = _find(session, value)
    revoke_family(session, row.family_id, now=now)
    return row


def revoke_family(session: Session, family_id: str, *, now: datetime) -> None:
    table = table_of(RefreshToken)
    session.connection().execute(
        update(table)
        .where(table.c.family_id == family_id, table.c.revoked_at.is_(None))
        .values(revoked_at=now)
    )


def revoke_all(session: Session, user_id: int, *, now: datetime) -> None:
    """Every refresh token of the user: their credentials or access changed."""
    table = table_of(RefreshToken)
    session.connection().execute(
        update(table)
        .where(table.c.user_id == user_id, table.c.revoked_at.is_(None))
        .values(revoked_at=now)
    )


def _find(session: Session, value: str) -> RefreshToken:
    row = session.exec(
        select(RefreshToken).where(RefreshToken.token_hash == token_hash(value))
    ).first()
    if row is None:
        raise RefreshRefused("unknown")
    return row


def _revoke_family_now(session: Session, row: RefreshToken, now: datetime) -> None:
    revoke_family(session, row.family_id, now=now)
    session.commit()
