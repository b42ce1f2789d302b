"""Accounts: the first administrator the service makes by itself, and the administration of
accounts, one function for each change, called by the API (sidecar.accounts.router) and the
admin page (sidecar.web.admin_page) alike: each checks, audits and commits."""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import Engine
from sqlmodel import Session, col, func, select

from sidecar.accounts import refresh
from sidecar.accounts.models import Role, User, UserCreate, UserUpdate
from sidecar.accounts.passwords import check_password
from sidecar.accounts.security import hash_password
from sidecar.core import audit
from sidecar.core.errors import ConflictingState, UnknownRecord
from sidecar.core.models import utcnow
from sidecar.core.pagination import Pagination, paginate
from sidecar.core.settings import Settings

log = logging.getLogger(__name__)


def bootstrap_admin(engine: Engine, settings: Settings) -> None:
    """On first start with an empty user table, creates `admin` from ADMIN_PASSWORD if set."""
    if not settings.admin_password:
        return
    with Session(engine) as session:
        if session.exec(select(func.count()).select_from(User)).one() > 0:
            return
        admin = User(
            username="admin", password_hash=hash_password(settings.admin_password), role=Role.ADMIN
        )
        session.add(admin)
        session.flush()
        audit.record(
            session,
            actor="system:bootstrap",
            action="user.created",
            entity_type="user",
            entity_id=admin.id,
            role=Role.ADMIN,
        )
        session.commit()
        log.info("created the initial administrator account 'admin'")


# -- Administration: what POST/PATCH /api/users and the admin page (sidecar.web) both call ------


def get_user(session: Session, user_id: int) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise UnknownRecord(f"user {user_id} not found")
    return user


def list_users(session: Session, pagination: Pagination) -> dict[str, object]:
    return paginate(session, User, [], [col(User.id)], pagination)


def create_user(session: Session, body: UserCreate, *, admin: User) -> User:
    """A new account, audited and committed; a taken name is a conflict (409)."""
    if session.exec(select(User).where(User.username == body.username)).first():
        raise ConflictingState(f"a user named {body.username!r} already exists")
    # An account an administrator creates is not forced to change its password: only a reset
    # (a password set for someone else's existing account) is.
    check_password(body.password, body.username)
    user = User(
        username=body.username,
        password_hash=hash_password(body.password),
        role=body.role,
        provider_id=body.provider_id,
        facilities=sorted(set(body.facilities)),
    )
    session.add(user)
    session.flush()
    audit.record(
        session,
        actor=admin.username,
        action="user.created",
        entity_type="user",
        entity_id=user.id,
        role=user.role,
        **({"facilities": user.facilities} if user.facilities else {}),
    )
    session.commit()
    session.refresh(user)
    return user


def update_user(
    session: Session, user: User, body: UserUpdate, *, admin: User, now: datetime
) -> User:
    """A new password for another user is a reset: they must change it at their next login.
    A password, role or disabling change ends the account's sessions."""
    changes = body.model_dump(exclude_unset=True)
    if user.id == admin.id and (
        changes.get("is_active") is False or changes.get("role") not in (None, Role.ADMIN)
    ):
        raise ConflictingState("administrators cannot disable or demote their own account")
    if "password" in changes:
        password = changes.pop("password")
        check_password(password, user.username)
        user.password_hash = hash_password(password)
        changes["password_changed"] = True
        if user.id != admin.id:
            user.must_change_password = changes["must_change_password"] = True
    for name in ("is_active", "role", "available"):
        if name in changes and changes[name] is not None:
            setattr(user, name, changes[name])
    if "max_open" in changes:  # null: no limit
        user.max_open = changes["max_open"]
    if "provider_id" in changes:  # null unlinks the account from its provider id
        user.provider_id = changes["provider_id"]
    if changes.get("facilities") is not None:  # [] opens every facility
        user.facilities = changes["facilities"] = sorted(set(changes["facilities"]))
    if "password_changed" in changes or changes.get("role") is not None:
        user.credentials_changed_at = utcnow()
    if "password_changed" in changes or changes.get("role") is not None or not user.is_active:
        assert user.id is not None
        refresh.revoke_all(session, user.id, now=now)
    session.add(user)
    audit.record(
        session,
        actor=admin.username,
        action="user.updated",
        entity_type="user",
        entity_id=user.id,
        **changes,
    )
    session.commit()
    session.refresh(user)
    return user


def disable_user(session: Session, user: User, *, admin: User, now: datetime) -> User:
    """The account can no longer log in; its sessions and refresh tokens end now."""
    if user.id == admin.id:
        raise ConflictingState("administrators cannot disable their own account")
    user.is_active = False
    assert user.id is not None
    refresh.revoke_all(session, user.id, now=now)
    session.add(user)
    audit.record(
        session, actor=admin.username, action="user.disabled", entity_type="user", entity_id=user.id
    )
    session.commit()
    session.refresh(user)
    return user
