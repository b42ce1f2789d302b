"""Who is looking at a page: the user of the viewer's session, by the API's own rules.

A page reads the `viewer_session` cookie the login page sets (sidecar.viewer.router), or a
bearer token, and checks it with the one function the API's bearer path uses
(sidecar.accounts.dependencies.token_holder): a disabled account, a changed password, an
expired or forged token are refused alike. Without a session a page answers 401 with the login
form, whose `next` returns to the page asked for (sidecar.web.errors renders the refusals of
/app/ as pages).

CSRF: the session cookie is SameSite=Strict, and on top of it every POST, PUT, PATCH and DELETE
under /app/ carries a token the page was given: the HMAC of the session's access token with the
JWT secret, so nothing is stored and it holds as long as the session does. A form sends it in
the hidden field `csrf_token` (`{{ csrf_field() }}` in a template), htmx in the X-CSRF-Token
header (static/app.js reads it from the page's <meta name="csrf-token">).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request

from sidecar.accounts.dependencies import token_holder
from sidecar.accounts.models import Role, TokenScope, User
from sidecar.core.dependencies import SessionDep, SettingsDep, provide
from sidecar.core.errors import NotAuthenticated, NotPermitted
from sidecar.core.settings import Settings
from sidecar.viewer.access import SESSION_COOKIE, VIEWER_ROLES, credential_of

CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
_UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# What a restricted token must do first; the login form refuses to open a session for one, so
# only a bearer token can bring it here.
_SCOPE_STEPS = {
    TokenScope.PASSWORD_CHANGE: (
        "Your password was reset by an administrator: choose a new one "
        "(POST /api/auth/password), then log in again."
    ),
    TokenScope.TOTP_ENROLMENT: (
        "Administrators must set up two-factor authentication first "
        "(POST /api/auth/totp/enroll), then log in again."
    ),
}


def session_credential(request: Request) -> str | None:
    """The bearer token if one is sent, else the session cookie (as the viewer reads them)."""
    return credential_of(request.headers.get("authorization"), request.cookies.get(SESSION_COOKIE))


def page_user(request: Request, session: SessionDep, settings: SettingsDep) -> User:
    """The user of a page; also kept in request.state.page_user for the templates."""
    credential = session_credential(request)
    if credential is None:
        raise NotAuthenticated("log in to open this page")
    user, scope = token_holder(session, credential, settings.jwt_secret)
    if scope is not TokenScope.FULL:
        raise NotPermitted(_SCOPE_STEPS[scope])
    if user.role not in VIEWER_ROLES:
        raise NotPermitted("this account's role has no pages: it is a machine account")
    request.state.page_user = user
    return user


PageUser = Annotated[User, Depends(page_user)]


def page_roles(*roles: Role) -> Callable[..., User]:
    """The dependency of a page for these roles only: others get a 403 page.

    `Annotated[User, Depends(page_roles(Role.RADIOLOGIST, Role.ADMIN))]`, or better, the roles
    the page is listed for (sidecar.web.templating.page_link(key).roles), so the navigation
    and the refusal never disagree."""
    allowed = frozenset(roles)

    def check(user: PageUser) -> User:
        if user.role not in allowed:
            names = ", ".join(sorted(r.value for r in allowed))
            raise NotPermitted(f"this page is for the roles: {names}")
        return user

    return check


def csrf_token(request: Request) -> str:
    """The CSRF token of the request's session; empty without a session."""
    credential = session_credential(request)
    if not credential:
        return ""
    secret = provide(Settings)(request).jwt_secret
    return _token_for(credential, secret)


def _token_for(credential: str, secret: str) -> str:
    message = b"sidecar-web-csrf:" + credential.encode("utf-8")
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


async def check_csrf(request: Request, user: PageUser) -> None:
    """Refuses (403) a POST, PUT, PATCH or DELETE without the session's CSRF token in the
    X-CSRF-Token header or the form field csrf_token. Other methods pass. Every page router is
    included with it (sidecar.web.router), so no form can go without."""
    del user  # the session must hold first: without one the answer is 401, not 403
    if request.method not in _UNSAFE_METHODS:
        return
    expected = csrf_token(request)
    sent = request.headers.get(CSRF_HEADER)
    if sent is None:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            value = (await request.form()).get(CSRF_FIELD)
            sent = value if isinstance(value, str) else None
    if not sent or not expected or not hmac.compare_digest(sent, expected):
        raise NotPermitted(
            "the form's security token is missing or out of date: reload the page and try again"
        )


CsrfChecked = Annotated[None, Depends(check_csrf)]
