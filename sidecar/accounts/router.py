"""User administration by admins: accounts, password resets, lockouts and two-factor resets.
(Logging in and one's own account: sidecar.accounts.auth_router.)"""

from __future__ import annotations

from fastapi import APIRouter, status
from sqlmodel import col, select

from sidecar.accounts import refresh
from sidecar.accounts.dependencies import Admin
from sidecar.accounts.models import Role, User, UserCreate, UserPublic, UserUpdate
from sidecar.accounts.passwords import check_password
from sidecar.accounts.security import hash_password
from sidecar.core import audit
from sidecar.core.dependencies import ClockDep, SessionDep
from sidecar.core.errors import ConflictingState, UnknownRecord
from sidecar.core.models import Page, utcnow
from sidecar.core.pagination import PaginationDep, RecordId, paginate

users_router = APIRouter(prefix="/api/users", tags=["users"])


@users_router.post("", response_model=UserPublic, status_code=status.HTTP_201_CREATED)
def create_user(body: UserCreate, session: SessionDep, admin: Admin) -> User:
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


@users_router.get("", response_model=Page[UserPublic])
def list_users(session: SessionDep, _: Admin, pagination: PaginationDep) -> dict[str, object]:
    return paginate(session, User, [], [col(User.id)], pagination)


@users_router.patch("/{user_id}", response_model=UserPublic)
def update_user(
    user_id: RecordId, body: UserUpdate, session: SessionDep, admin: Admin, clock: ClockDep
) -> User:
    """A new password for another user is a reset: they must change it at their next login."""
    user = _get(session, user_id)
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
        refresh.revoke_all(session, user.id, now=clock())
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


@users_router.post("/{user_id}/disable", response_model=UserPublic)
def disable_user(user_id: RecordId, session: SessionDep, admin: Admin, clock: ClockDep) -> User:
    user = _get(session, user_id)
    if user.id == admin.id:
        raise ConflictingState("administrators cannot disable their own account")
    user.is_active = False
    assert user.id is not None
    refresh.revoke_all(session, user.id, now=clock())
    session.add(user)
    audit.record(
        session, actor=admin.username, action="user.disabled", entity_type="user", entity_id=user.id
    )
    session.commit()
    session.refresh(user)
    return user


@users_router.post("/{user_id}/unlock", response_model=UserPublic)
def unlock_user(user_id: RecordId, session: SessionDep, admin: Admin, clock: ClockDep) -> User:
    """Ends a login lockout: the account's failed logins so far no longer count."""
    user = _get(session, user_id)
    user.lockout_cleared_at = clock()
    session.add(user)
    audit.record(
        session, actor=admin.username, action="user.unlocked", entity_type="user", entity_id=user.id
    )
    session.commit()
    session.refresh(user)
    return user


@users_router.delete("/{user_id}/totp", response_model=UserPublic)
def reset_totp(user_id: RecordId, session: SessionDep, admin: Admin, clock: ClockDep) -> User:
    """Removes the account's two-factor authentication (a lost phone): the user enrolls again,
    and must, at their next login, if they are an administrator and it is required."""
    user = _get(session, user_id)
    user.totp_secret, user.totp_enabled, user.totp_last_step = None, False, None
    user.credentials_changed_at = utcnow()
    assert user.id is not None
    refresh.revoke_all(session, user.id, now=clock())
    session.add(user)
    audit.record(
        session,
        actor=admin.username,
        action="user.totp_reset",
        entity_type="user",
        entity_id=user.id,
    )
    session.commit()
    session.refresh(user)
    return user


def _get(session: SessionDep, user_id: int) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise UnknownRecord(f"user {user_id} not found")
    return user
