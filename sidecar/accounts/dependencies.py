"""Who is calling: the authenticated user of a request, and the roles a route requires.

A token's scope (sidecar.accounts.models.TokenScope) limits what it may do: a restricted token
(a password to change, two-factor authentication to set up) opens only the routes that take
that step, and is refused everywhere else with 403 and a message saying what to do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request
from sqlmodel import Session

from sidecar.accounts.models import Role, TokenScope, User
from sidecar.accounts.security import InvalidToken, TokenClaims, decode_access_token
from sidecar.core.dependencies import BearerDep, SessionDep, SettingsDep
from sidecar.core.errors import NotAuthenticated, NotPermitted

SCOPE_REFUSALS = {
    TokenScope.PASSWORD_CHANGE: (
        "the password must be changed before anything else: POST /api/auth/password with "
        "currentPassword and newPassword"
    ),
    TokenScope.TOTP_ENROLMENT: (
        "administrators must set up two-factor authentication before anything else: "
        "POST /api/auth/totp/enroll, then POST /api/auth/totp/verify with a code"
    ),
}


def token_holder(session: Session, token: str | None, jwt_secret: str) -> tuple[User, TokenScope]:
    """The account an access token opens, and the token's scope: the one rule every credential
    is checked by, a bearer token of the API as a page's session cookie (sidecar.web.session).
    Raises NotAuthenticated when there is no token, or it is invalid, expired, of a disabled
    account, or older than the account's last password or role change."""
    if not token:
        raise NotAuthenticated("authentication required: send 'Authorization: Bearer <token>'")
    user, claims = user_of_token(session, jwt_secret, token)
    return user, claims.scope


def user_of_token(session: Session, jwt_secret: str, token: str) -> tuple[User, TokenClaims]:
    """The API's checks of an access token, wherever it came from (a bearer header, the
    viewer's session cookie): signed and unexpired, its account active, issued after the last
    password or role change. NotAuthenticated otherwise."""
    try:
        claims = decode_access_token(token, jwt_secret)
    except InvalidToken as exc:
        raise NotAuthenticated("the access token is invalid or expired") from exc
    user = session.get(User, claims.user_id)
    if user is None or not user.is_active:
        raise NotAuthenticated("the account is disabled or no longer exists")
    if user.credentials_changed_at is not None and claims.issued_at < user.credentials_changed_at:
        raise NotAuthenticated(
            "the password or role changed since this token was issued: log in again"
        )
    return user, claims


def _authenticated(
    session: SessionDep, settings: SettingsDep, credentials: BearerDep
) -> tuple[User, TokenScope]:
    token = credentials.credentials if credentials is not None else None
    return token_holder(session, token, settings.jwt_secret)


Authenticated = Annotated[tuple[User, TokenScope], Depends(_authenticated)]


#: Why an analyzer account is refused on the API's routes.
ANALYZER_REFUSAL = (
    "an analyzer account performs work items at /dicom-web/workitems and reads the studies it "
    "holds over DICOMweb; it has no other use of the API"
)


def current_user(authenticated: Authenticated) -> User:
    """The caller, with a full token. Every route that takes it (directly, through a role
    check or through the care scope) is closed to analyzer accounts: their reach is their work
    items (sidecar.analyses), whatever a route's own role rule says."""
    user, scope = authenticated
    if scope is not TokenScope.FULL:
        raise NotPermitted(SCOPE_REFUSALS[scope])
    if user.role is Role.ANALYZER:
        raise NotPermitted(ANALYZER_REFUSAL)
    return user


def _user_with_scope(*allowed: TokenScope) -> Callable[..., User]:
    def check(authenticated: Authenticated) -> User:
        user, scope = authenticated
        if scope is not TokenScope.FULL and scope not in allowed:
            raise NotPermitted(SCOPE_REFUSALS[scope])
        return user

    return check


CurrentUser = Annotated[User, Depends(current_user)]
# Any valid token, restricted or not: who am I.
AnyScopeUser = Annotated[
    User, Depends(_user_with_scope(TokenScope.PASSWORD_CHANGE, TokenScope.TOTP_ENROLMENT))
]
PasswordChanger = Annotated[User, Depends(_user_with_scope(TokenScope.PASSWORD_CHANGE))]
TotpEnroller = Annotated[User, Depends(_user_with_scope(TokenScope.TOTP_ENROLMENT))]


def client_address(request: Request) -> str:
    """The caller's address as this server sees it (behind a reverse proxy, the proxy's,
    unless the server is run to trust its forwarded headers)."""
    return request.client.host if request.client else "unknown"


ClientAddress = Annotated[str, Depends(client_address)]


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
