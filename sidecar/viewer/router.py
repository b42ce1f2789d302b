"""The viewer front: login, the OHIF Viewer at the root of this origin, and Orthanc's DICOMweb
behind the user's session.

Routes are included last: the catch-all that serves the viewer's files and its client-side
routes (/, /viewer, ...) must not shadow /api, /health or the API docs.
"""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse

from sidecar.accounts.login import TotpNeeded, token_scope
from sidecar.accounts.models import TokenScope
from sidecar.accounts.security import create_access_token
from sidecar.core.api_errors import error_body, refusal_response
from sidecar.core.dependencies import ClockDep, SettingsDep, provide
from sidecar.core.errors import NotAuthenticated, NotPermitted, Refusal, TooManyAttempts
from sidecar.ingest.orthanc_client import OrthancUnavailable
from sidecar.viewer.access import (
    SESSION_COOKIE,
    VIEWER_ROLES,
    Viewer,
    credential_of,
    study_in_path,
)
from sidecar.viewer.front import ViewerFront
from sidecar.viewer.login import login_page, safe_next
from sidecar.viewer.paths import METHOD_OVERRIDE_HEADERS, Verdict, request_target, verdict
from sidecar.viewer.proxy import NotForwardable

log = logging.getLogger(__name__)
router = APIRouter(tags=["viewer"])

# Paths the catch-all must leave to their own routes (an unknown /api/... is a 404, never the
# viewer's index.html).
_NOT_VIEWER = re.compile(r"^(api|health|docs|redoc|openapi\.json|dicom-web|wado)(/|$)")
# What a Host header may hold: a name or address and a port. It is copied into the Forwarded
# header Orthanc builds URLs from, so separators (; , ") must not get through.
_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")
_MAX_FORM_BYTES = 4096
_TOTP_CODE = re.compile(r"^[0-9]{6}$")
_SCOPE_MESSAGES = {
    TokenScope.PASSWORD_CHANGE: (
        "your password was reset by an administrator: choose a new one "
        "(POST /api/auth/password) before opening the viewer"
    ),
    TokenScope.TOTP_ENROLMENT: (
        "administrators must set up two-factor authentication "
        "(POST /api/auth/totp/enroll) before opening the viewer"
    ),
}


FrontDep = Annotated[ViewerFront, Depends(provide(ViewerFront))]


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


def _refusal(request: Request, refused: Refusal) -> Response:
    """A page (the login form) for a browser without a session, else the API's error body."""
    if refused.status_code == 401 and _wants_html(request):
        return HTMLResponse(login_page(), status_code=401)
    return refusal_response(refused)


async def _authenticate(request: Request, front: ViewerFront) -> Viewer:
    credential = credential_of(
        request.headers.get("authorization"), request.cookies.get(SESSION_COOKIE)
    )
    viewer = front.access.authenticate_from_memory(credential)
    if viewer is None:
        viewer = await asyncio.to_thread(front.access.authenticate, credential)
    return viewer


def _target(request: Request) -> str:
    """The request target as the client sent it: raw path and query string, not decoded. An
    ASGI server that gives no raw_path gets an empty path, which every check refuses."""
    return request_target(request.scope.get("raw_path") or b"", request.scope["query_string"])


def _refused_target(decided: Verdict) -> JSONResponse:
    if decided is Verdict.MALFORMED:
        message = (
            "the path or a query parameter's name is malformed (percent-escapes, #, backslashes,"
            " empty or dot segments, names other than letters, digits and dots)"
        )
        return JSONResponse(error_body("bad_request", message), 400)
    return JSONResponse(error_body("not_found", "not found"), 404)


async def _quarantine(front: ViewerFront, dicomweb_path: str) -> JSONResponse | None:
    """403 for a study whose UID Orthanc holds under several patient ids: the viewer would
    show them as one study (the study's API answer names the conflict)."""
    uid = study_in_path(dicomweb_path)
    if uid is None:
        return None
    access = front.access
    held = access.quarantined_from_memory(uid)
    if held is None:
        held = await asyncio.to_thread(access.quarantined, uid)
    if not held:
        return None
    message = (
        "this study is held under several patient ids and is not shown until the images "
        "filed under the wrong patient are corrected (see the study's patientConflict)"
    )
    return JSONResponse(error_body("quarantined", message), 403)


async def _audit_view(front: ViewerFront, viewer: Viewer, dicomweb_path: str) -> None:
    access = front.access
    uid = access.study_to_audit(viewer, dicomweb_path)
    if uid is not None:
        # Before the data goes out: a view that could not be recorded is not served.
        await asyncio.to_thread(access.record_view, viewer, uid)


# --- login -------------------------------------------------------------------------------------


@router.get("/login", response_class=HTMLResponse, include_in_schema=False)
def login_form(
    next_url: Annotated[str, Query(alias="next", max_length=2048)] = "",
) -> HTMLResponse:
    return HTMLResponse(login_page(next_url=next_url))


@router.post("/login", include_in_schema=False)
async def login_submit(
    request: Request, front: FrontDep, settings: SettingsDep, clock: ClockDep
) -> Response:
    """Form login for the viewer: sets the session cookie and returns to `next`."""
    body = await request.body()
    if len(body) > _MAX_FORM_BYTES:
        return HTMLResponse(login_page(error="the form is too large"), status_code=413)
    fields = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
    username, password = fields.get("username", ""), fields.get("password", "")
    totp_code = fields.get("totp_code") or None
    next_url = safe_next(fields.get("next", "/"))
    if not username or not password:
        page = login_page(next_url=next_url, error="enter a user name and a password")
        return HTMLResponse(page, status_code=400)
    if len(username) > 64 or len(password) > 256 or "\x00" in username + password:
        page = login_page(next_url=next_url, error="the user name or password is too long")
        return HTMLResponse(page, status_code=400)
    if totp_code is not None and not _TOTP_CODE.match(totp_code):
        page = login_page(next_url=next_url, error="the two-factor code is 6 digits", ask_totp=True)
        return HTMLResponse(page, status_code=400)
    address = request.client.host if request.client else "unknown"
    try:
        user = await asyncio.to_thread(
            front.access.log_in, settings, username, password, totp_code, address, clock()
        )
    except TooManyAttempts as locked:
        page = login_page(next_url=next_url, error=locked.message)
        return HTMLResponse(page, status_code=429, headers=locked.headers)
    except TotpNeeded as needed:
        message = "enter the code from your authenticator app"
        if totp_code is not None:
            message = needed.message
        page = login_page(next_url=next_url, error=message, ask_totp=True)
        return HTMLResponse(page, status_code=401)
    except NotAuthenticated:
        page = login_page(next_url=next_url, error="unknown user name or wrong password")
        return HTMLResponse(page, status_code=401)
    scope = token_scope(user, settings)
    if scope is not TokenScope.FULL:
        page = login_page(next_url=next_url, error=_SCOPE_MESSAGES[scope])
        return HTMLResponse(page, status_code=403)
    if user.role not in VIEWER_ROLES:
        page = login_page(next_url=next_url, error="this account's role may not view images")
        return HTMLResponse(page, status_code=403)
    assert user.id is not None
    lifetime = timedelta(minutes=front.session_minutes)
    token, _ = create_access_token(
        user_id=user.id,
        username=user.username,
        role=user.role,
        secret=front.jwt_secret,
        lifetime=lifetime,
    )
    answer = RedirectResponse(next_url, status_code=303)
    answer.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(lifetime.total_seconds()),
        path="/",
        httponly=True,
        samesite="strict",
        secure=front.secure_cookie,
    )
    return answer


@router.post("/logout", include_in_schema=False)
def logout(front: FrontDep) -> Response:
    answer = RedirectResponse("/login", status_code=303)
    answer.delete_cookie(
        SESSION_COOKIE,
        path="/",
        httponly=True,
        samesite="strict",
        secure=front.secure_cookie,
    )
    return answer


# --- nginx auth_request (docker-compose) -------------------------------------------------------


@router.get("/api/viewer/authorize", status_code=204, tags=["viewer"])
async def authorize(
    request: Request,
    front: FrontDep,
    viewer_path: Annotated[str | None, Header(alias="X-Viewer-Path", max_length=512)] = None,
) -> Response:
    """For a reverse proxy's auth_request: 204 when the cookie or bearer token may view images,
    else 401/403. The answer's X-Orthanc-Authorization is what the proxy sends to Orthanc; the
    proxy passes the viewed path (never its query string) in X-Viewer-Path for the audit."""
    try:
        viewer = await _authenticate(request, front)
    except (NotAuthenticated, NotPermitted) as refused:
        return refusal_response(refused)
    if viewer_path:
        if (kept := await _quarantine(front, viewer_path)) is not None:
            return kept
        await _audit_view(front, viewer, viewer_path)
    authorization = front.orthanc_authorization
    headers = {"X-Orthanc-Authorization": authorization} if authorization else None
    return Response(status_code=204, headers=headers)


# --- DICOMweb and WADO-URI ---------------------------------------------------------------------


async def _proxy(request: Request, front: ViewerFront) -> Response:
    # Decided on the request as received, before the session or Orthanc is asked anything:
    # the routes matched the decoded path, Orthanc is sent the raw one (sidecar.viewer.paths).
    target = _target(request)
    decided = verdict(target)
    if decided is not Verdict.FORWARD:
        return _refused_target(decided)
    if any(request.headers.get(name) for name in METHOD_OVERRIDE_HEADERS):
        message = "a method override header is refused: the viewer front only reads"
        return JSONResponse(error_body("bad_request", message), 400)
    if not front.enabled:
        return JSONResponse(error_body("viewer_unavailable", front.unavailable_reason), 503)
    host = request.headers.get("host", "")
    if not _HOST.match(host):
        return JSONResponse(error_body("bad_request", "the Host header is not a host[:port]"), 400)
    try:
        viewer = await _authenticate(request, front)
    except (NotAuthenticated, NotPermitted) as refused:
        return _refusal(request, refused)
    path = target.partition("?")[0]
    if (kept := await _quarantine(front, path)) is not None:
        return kept
    await _audit_view(front, viewer, path)
    try:
        return await front.proxy.forward(request, target)
    except NotForwardable as exc:
        return JSONResponse(error_body("bad_request", str(exc)), 400)
    except OrthancUnavailable as exc:
        return JSONResponse(error_body("unavailable", str(exc)), 502)


# Both routes match the decoded path; _proxy decides on the raw one.
@router.api_route("/dicom-web/{path:path}", methods=["GET", "HEAD"], include_in_schema=False)
async def dicomweb(request: Request, front: FrontDep) -> Response:
    return await _proxy(request, front)


@router.api_route("/wado", methods=["GET", "HEAD"], include_in_schema=False)
async def wado_uri(request: Request, front: FrontDep) -> Response:
    return await _proxy(request, front)


# --- the viewer's files and routes -------------------------------------------------------------


@router.get("/{file_path:path}", include_in_schema=False)
async def viewer_file(request: Request, front: FrontDep, file_path: str) -> Response:
    # A raw path that decodes or normalises into this route, or names DICOMweb in another
    # case (/WADO, /dicom-web/../patients), is refused as the DICOMweb routes would.
    decided = verdict(_target(request))
    if decided is not Verdict.ELSEWHERE:
        return _refused_target(decided)
    if _NOT_VIEWER.match(file_path):
        return JSONResponse(error_body("not_found", "not found"), 404)
    if front.bundle is None:
        return JSONResponse(error_body("viewer_unavailable", front.unavailable_reason), 503)
    found = front.bundle.file(file_path)
    if found is not None:
        # The app's own files (scripts, styles, icons, the manifest a browser fetches without
        # cookies) are the published viewer, the same for everyone: no session needed.
        return FileResponse(found, headers={"Cache-Control": _cache_control(found)})
    # A client-side route (/, /viewer?StudyInstanceUIDs=...): the page that shows patient data
    # needs a session. Never cached, so a logout or a new install applies on the next load.
    try:
        await _authenticate(request, front)
    except (NotAuthenticated, NotPermitted) as refused:
        return _refusal(request, refused)
    return FileResponse(front.bundle.index_html, headers={"Cache-Control": "no-store"})


def _cache_control(path: Path) -> str:
    # Webpack names bundles by content hash: they never change under one name.
    if ".bundle." in path.name or path.suffix in (".wasm", ".woff2"):
        return "private, max-age=31536000, immutable"
    return "private, no-cache"
