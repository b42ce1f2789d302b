"""Accounts: login for a bearer token (`auth_router`), and user administration by admins
(`users_router`)."""

from __future__ import annotations

import logging
from datetime import timedelta

from fastapi import APIRouter, status
from sqlmodel import col, select

from sidecar.accounts.dependencies import Admin, CurrentUser
from sidecar.accounts.models import (
    LoginRequest,
    Role,
    TokenResponse,
    User,
    UserCreate,
    UserPublic,
    UserUpdate,
)
from sidecar.accounts.security import create_access_token, hash_password, verify_password
from sidecar.core import audit
from sidecar.core.dependencies import SessionDep, SettingsDep
from sidecar.core.errors import ConflictingState, NotAuthenticated, UnknownRecord
from sidecar.core.models import Page, utcnow
from sidecar.core.pagination import PaginationDep, RecordId, paginate

log = logging.getLogger(__name__)
users_router = APIRouter(prefix="/api/users", tags=["users"])


@users_router.post("", response_model=UserPublic, status_code=status.HTTP_201_CREATED)
def create_user(body: UserCreate, session: SessionDep, admin: Admin) -> User:
    if session.exec(select(User).where(User.username == body.username)).first():
        raise ConflictingState(f"a user named {body.username!r} already exists")
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
def update_user(user_id: RecordId, body: UserUpdate, session: SessionDep, admin: Admin) -> User:
    user = _get(session, user_id)
    changes = body.model_dump(exclude_unset=True)
    if user.id == admin.id and (
        changes.get("is_active") is False or changes.get("role") not in (None, Role.ADMIN)
    ):
        raise ConflictingState("administrators cannot disable or demote their own account")
    if "password" in changes:
        user.password_hash = hash_password(changes.pop("password"))
        changes["password_changed"] = True
    for name in ("is_active", "role"):
        if name in changes and changes[name] is not None:
            setattr(user, name, changes[name])
    if "provider_id" in changes:  # null unlinks the account from its provider id
        user.provider_id = changes["provider_id"]
    if changes.get("facilities") is not None:  # [] opens every facility
        user.facilities = changes["facilities"] = sorted(set(changes["facilities"]))
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


@users_router.post("/{user_id}/disable", response_model=UserPublic)
def disable_user(user_id: RecordId, session: SessionDep, admin: Admin) -> User:
    user = _get(session, user_id)
    if user.id == admin.id:
        raise ConflictingState("administrators cannot disable their own account")
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
        raise UnknownRecord(f"user {user_id} not found")
    return user


auth_router = APIRouter(prefix="/api/auth", tags=["auth"])


@auth_router.post("/login", response_model=TokenResponse)
def login(body: LoginRequest, session: SessionDep, settings: SettingsDep) -> TokenResponse:
    user = session.exec(select(User).where(User.username == body.username)).first()
    valid = verify_password(body.password, user.password_hash if user else None)
    if user is None or not valid or not user.is_active:
        log.info("login refused")
        raise NotAuthenticated("unknown username, wrong password or disabled account")
    assert user.id is not None
    token, expires_in = create_access_token(
        user_id=user.id,
        username=user.username,
        role=user.role,
        secret=settings.jwt_secret,
        lifetime=timedelta(minutes=settings.jwt_expire_minutes),
    )
    return TokenResponse(access_token=token, expires_in=expires_in)


@auth_router.get("/me", response_model=UserPublic)
def me(user: CurrentUser) -> User:
    return user
