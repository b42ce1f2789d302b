"""User administration by admins: accounts, password resets, lockouts and two-factor resets.
(Logging in and one's own account: sidecar.accounts.auth_router.)"""

from __future__ import annotations

from fastapi import APIRouter, status

from sidecar.accounts import refresh, service
from sidecar.accounts.dependencies import Admin
from sidecar.accounts.models import User, UserCreate, UserPublic, UserUpdate
from sidecar.core import audit
from sidecar.core.dependencies import ClockDep, SessionDep
from sidecar.core.models import Page, utcnow
from sidecar.core.pagination import PaginationDep, RecordId

users_router = APIRouter(prefix="/api/users", tags=["users"])


@users_router.post("", response_model=UserPublic, status_code=status.HTTP_201_CREATED)
def create_user(body: UserCreate, session: SessionDep, admin: Admin) -> User:
    return service.create_user(session, body, admin=admin)


@users_router.get("", response_model=Page[UserPublic])
def list_users(session: SessionDep, _: Admin, pagination: PaginationDep) -> dict[str, object]:
    return service.list_users(session, pagination)


@users_router.patch("/{user_id}", response_model=UserPublic)
def update_user(
    user_id: RecordId, body: UserUpdate, session: SessionDep, admin: Admin, clock: ClockDep
) -> User:
    """A new password for another user is a reset: they must change it at their next login."""
    user = service.get_user(session, user_id)
    return service.update_user(session, user, body, admin=admin, now=clock())


@users_router.post("/{user_id}/disable", response_model=UserPublic)
def disable_user(user_id: RecordId, session: SessionDep, admin: Admin, clock: ClockDep) -> User:
    user = service.get_user(session, user_id)
    return service.disable_user(session, user, admin=admin, now=clock())


@users_router.post("/{user_id}/unlock", response_model=UserPublic)
def unlock_user(user_id: RecordId, session: SessionDep, admin: Admin, clock: ClockDep) -> User:
    """Ends a login lockout: the account's failed logins so far no longer count."""
    user = service.get_user(session, user_id)
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
    user = service.get_user(session, user_id)
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
