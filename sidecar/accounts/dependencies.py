"""Who is calling: the authenticated user of a request, and the roles a route requires."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends

from sidecar.accounts.models import Role, User
from sidecar.accounts.security import InvalidToken, decode_access_token
from sidecar.core.dependencies import BearerDep, SessionDep, SettingsDep
from sidecar.core.errors import NotAuthenticated, NotPermitted


def current_user(session: SessionDep, settings: SettingsDep, credentials: BearerDep) -> User:
    if credentials is None:
        raise NotAuthenticated("authentication required: send 'Authorization: Bearer <token>'")
    try:
        claims = decode_access_token(credentials.credentials, settings.jwt_secret)
    except InvalidToken as exc:
        raise NotAuthenticated("the access token is invalid or expired") from exc
    user = session.get(User, claims.user_id)
    if user is None or not user.is_active:
        raise NotAuthenticated("the account is disabled or no longer exists")
    if user.credentials_changed_at is not None and claims.issued_at < user.credentials_changed_at:
        raise NotAuthenticated(
            "the password or role changed since this token was issued: log in again"
        )
    return user


CurrentUser = Annotated[User, Depends(current_user)]


def require_roles(*roles: Role) -> Callable[..., User]:
    allowed = frozenset(roles)

    def check(user: CurrentUser) -> User:
        if user.role not in allowed:
            names = ", ".join(sorted(r.value for r in allowed))
            raise NotPermitted(f"this action needs one of the roles: {names}")
        return user

    return check


_R = Role
Clinician = Annotated[
    User, Depends(require_roles(_R.ADMIN, _R.RADIOLOGIST, _R.TECHNOLOGIST, _R.PHYSICIAN))
]
StudyEditor = Annotated[User, Depends(require_roles(_R.ADMIN, _R.RADIOLOGIST, _R.TECHNOLOGIST))]
Scheduler = Annotated[User, Depends(require_roles(_R.ADMIN, _R.TECHNOLOGIST))]
Admin = Annotated[User, Depends(require_roles(_R.ADMIN))]
