"""Login: username and password for a bearer token."""

from __future__ import annotations

import logging
from datetime import timedelta

from fastapi import APIRouter
from sqlmodel import select

from sidecar.api.deps import CurrentUser, SessionDep, SettingsDep
from sidecar.errors import Unauthorized
from sidecar.models.users import LoginRequest, TokenResponse, User, UserPublic
from sidecar.security import create_access_token, verify_password

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/auth", tags=["auth"])


@router.post("/login", response_model=TokenResponse)
def login(body: LoginRequest, session: SessionDep, settings: SettingsDep) -> TokenResponse:
    user = session.exec(select(User).where(User.username == body.username)).first()
    valid = verify_password(body.password, user.password_hash if user else None)
    if user is None or not valid or not user.is_active:
        log.info("login refused")
        raise Unauthorized("unknown username, wrong password or disabled account")
    assert user.id is not None
    token, expires_in = create_access_token(
        user_id=user.id,
        username=user.username,
        role=user.role,
        secret=settings.jwt_secret,
        lifetime=timedelta(minutes=settings.jwt_expire_minutes),
    )
    return TokenResponse(access_token=token, expires_in=expires_in)


@router.get("/me", response_model=UserPublic)
def me(user: CurrentUser) -> User:
    return user
