"""User administration (admins only)."""

from __future__ import annotations

from fastapi import APIRouter, status
from sqlmodel import col, select

from sidecar import audit
from sidecar.api.deps import Admin, PaginationDep, RecordId, SessionDep, paginate
from sidecar.errors import Conflict, NotFound
from sidecar.models.common import Page, utcnow
from sidecar.models.users import Role, User, UserCreate, UserPublic, UserUpdate
from sidecar.security import hash_password

router = APIRouter(prefix="/api/users", tags=["users"])


@router.post("", response_model=UserPublic, status_code=status.HTTP_201_CREATED)
def create_user(body: UserCreate, session: SessionDep, admin: Admin) -> User:
    if session.exec(select(User).where(User.username == body.username)).first():
        raise Conflict(f"a user named {body.username!r} already exists")
    user = User(
        username=body.username,
        password_hash=hash_password(body.password),
        role=body.role,
        provider_id=body.provider_id,
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
    )
    session.commit()
    session.refresh(user)
    return user


@router.get("", response_model=Page[UserPublic])
def list_users(session: SessionDep, _: Admin, pagination: PaginationDep) -> dict[str, object]:
    return paginate(session, User, [], [col(User.id)], pagination)


@router.patch("/{user_id}", response_model=UserPublic)
def update_user(user_id: RecordId, body: UserUpdate, session: SessionDep, admin: Admin) -> User:
    user = _get(session, user_id)
    changes = body.model_dump(exclude_unset=True)
    if user.id == admin.id and (
        changes.get("is_active") is False or changes.get("role") not in (None, Role.ADMIN)
    ):
        raise Conflict("administrators cannot disable or demote their own account")
    if "password" in changes:
        user.password_hash = hash_password(changes.pop("password"))
        changes["password_changed"] = True
    for name in ("is_active", "role"):
        if name in changes and changes[name] is not None:
            setattr(user, name, changes[name])
    if "provider_id" in changes:  # null unlinks the account from its provider id
        user.provider_id = changes["provider_id"]
    if "password_changed" in changes or changes.get("role") is not None:
        user.credentials_changed_at = utcnow()
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


@router.post("/{user_id}/disable", response_model=UserPublic)
def disable_user(user_id: RecordId, session: SessionDep, admin: Admin) -> User:
    user = _get(session, user_id)
    if user.id == admin.id:
        raise Conflict("administrators cannot disable their own account")
    user.is_active = False
    session.add(user)
    audit.record(
        session, actor=admin.username, action="user.disabled", entity_type="user", entity_id=user.id
    )
    session.commit()
    session.refresh(user)
    return user


def _get(session: SessionDep, user_id: int) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise NotFound(f"user {user_id} not found")
    return user
