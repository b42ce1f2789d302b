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
from sidecar.viewer import series_metadata
from sidecar.viewer.access import SESSION_COOKIE, VIEWER_ROLES, Viewer, credential_of
from sidecar.viewer.front import ViewerFront
from sidecar.viewer.login import login_page, safe_next
from sidecar.viewer.paths import HOST, METHOD_OVERRIDE_HEADERS, Verdict, request_target, verdict
from sidecar.viewer.proxy import NotForwardable
from sidecar.viewer.targets import UncheckableTarget, targeted_studies

log = logging.getLogger(__name__)
router = APIRouter(tags=["viewer"])

# Paths the catch-all must leave to their own routes (an unknown /api/... is a 404, never the
# viewer's index.html; /app is the pages', sidecar.web).
_NOT_VIEWER = re.compile(r"^(api|app|health|docs|redoc|openapi\.json|dicom-web|wado)(/|$)")
# A host[:port], as nginx's front checks it too (sidecar.viewer.paths.HOST).
_HOST = re.compile(HOST)
_MAX_FORM_BYTES = 4096
# nginx's longest request line (large_client_header_buffers): the target its session check sends.
_MAX_TARGET = 8192
# How the session check tells nginx to answer 400 where the sidecar's front does: an auth
# subrequest may only allow (2xx) or refuse (401, 403); viewer/nginx.conf maps this one back.
REFUSAL_HEADER = "X-Viewer-Refusal"
# nginx keeps no copy of an answer that says X-Accel-Expires: 0 (viewer/nginx.conf's session
# cache honours it).
NO_PROXY_CACHE = "X-Accel-Expires"
_TOTP_CODE = re.compile(r"^[0-9]{6}$")
_NO_PAGES = "this account reads DICOMweb only (an analyzer): the viewer's pages are not for it"
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


async def _quarantine(front: ViewerFront, studies: frozenset[str]) -> JSONResponse | None:
    """403 when a study the request targets (sidecar.viewer.targets) has a UID Orthanc holds
    under several patient ids: the viewer would show them as one study (the study's API answer
    names the conflict)."""
    if not studies:
        return None
    access = front.access
    held = access.quarantined_from_memory(studies)
    if held is None:
        held = await asyncio.to_thread(access.quarantined, studies)
    if not held:
        return None
    message = (
        "this study is held under several patient ids and is not shown until the images "
        "filed under the wrong patient are corrected (see the study's patientConflict)"
    )
    return JSONResponse(error_body("quarantined", message), 403)


async def _care(
    front: ViewerFront, viewer: Viewer, studies: frozenset[str], *, dicom_read: bool
) -> JSONResponse | None:
    """For a physician or a user limited to facilities (sidecar.access.care_scope): 404 when a
    study the request targets is out of their reach, as for a study that does not exist; 403
    for a search that names no study, which Orthanc would answer from the whole archive."""
    if not dicom_read or not viewer.limited:
        return None
    access = front.access
    if not studies:
        message = (
            "name the study (StudyInstanceUID): the viewer shows this account only the studies"
            " in its reach (its patients, its facilities)"
        )
        return JSONResponse(error_body("forbidden", message), 403)
    outside = access.out_of_care_from_memory(viewer, studies)
    if outside is None:
        outside = await asyncio.to_thread(access.out_of_care, viewer, studies)
    if not outside:
        return None
    return JSONResponse(error_body("not_found", "study not found"), 404)


async def _audit_view(front: ViewerFront, viewer: Viewer, studies: frozenset[str]) -> None:
    access = front.access
    first_views = access.studies_to_audit(viewer, studies) if studies else []
    if first_views:
        # Before the data goes out: a view that could not be recorded is not served.
        await asyncio.to_thread(access.record_views, viewer, first_views)


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
    viewer_path: Annotated[
        str | None, Header(alias="X-Viewer-Path", max_length=_MAX_TARGET)
    ] = None,
) -> Response:
    """For a reverse proxy's auth_request: 204 when the cookie or bearer token may view images
    and the study the request targets is not quarantined, else 401/403. The answer's
    X-Orthanc-Authorization is what the proxy sends to Orthanc. The proxy passes the request
    target as it received it (path and query: nginx's $request_uri) in X-Viewer-Path, from which
    the studies it targets are found (sidecar.viewer.targets), for the quarantine and the audit.
    A target whose study cannot be checked is refused with 403 and X-Viewer-Refusal: 400, which
    the proxy answers with 400, as the sidecar's own front does; a study outside a physician's
    care with 403 and X-Viewer-Refusal: 404, answered 404."""
    try:
        studies = targeted_studies(viewer_path) if viewer_path else frozenset[str]()
    except UncheckableTarget as refused:
        body = error_body("bad_request", str(refused))
        return JSONResponse(body, 403, headers={REFUSAL_HEADER: "400"})
    try:
        viewer = await _authenticate(request, front)
    except (NotAuthenticated, NotPermitted) as refused:
        return refusal_response(refused)
    answer = await _authorized(front, viewer, viewer_path, studies)
    if not viewer.has_pages:
        # An analyzer's reach changes with its claims: nginx keeps no answer of its (the zero
        # X-Accel-Expires), so a claim opens the study at once and its end closes it at once.
        answer.headers[NO_PROXY_CACHE] = "0"
    return answer


async def _authorized(
    front: ViewerFront, viewer: Viewer, viewer_path: str | None, studies: frozenset[str]
) -> Response:
    dicom_read = viewer_path is not None and verdict(viewer_path) is Verdict.FORWARD
    if not dicom_read and not viewer.has_pages:
        return refusal_response(NotPermitted(_NO_PAGES))
    if (outside := await _care(front, viewer, studies, dicom_read=dicom_read)) is not None:
        if outside.status_code == 404:  # an auth subrequest may only answer 2xx, 401 or 403
            outside.status_code = 403
            outside.headers[REFUSAL_HEADER] = "404"
        return outside
    if (kept := await _quarantine(front, studies)) is not None:
        return kept
    await _audit_view(front, viewer, studies)
    authorization = front.orthanc_authorization
    headers = {"X-Orthanc-Authorization": authorization} if authorization else None
    return Response(status_code=204, headers=headers)


# --- DICOMweb and WADO-URI ---------------------------------------------------------------------


async def _proxy(request: Request, front: ViewerFront, *, behind_nginx: bool = False) -> Response:
    # Decided on the request as received, before the session or Orthanc is asked anything:
    # the routes matched the decoded path, Orthanc is sent the raw one (sidecar.viewer.paths).
    target = _target(request)
    if behind_nginx:  # the browser's target, after the prefix nginx's front adds
        target = target.removeprefix(series_metadata.METADATA_PREFIX)
    decided = verdict(target)
    if decided is not Verdict.FORWARD:
        return _refused_target(decided)
    if behind_nginx and series_metadata.series_metadata_of(target) is None:
        return _refused_target(Verdict.NOT_ALLOWED)
    if any(request.headers.get(name) for name in METHOD_OVERRIDE_HEADERS):
        message = "a method override header is refused: the viewer front only reads"
        return JSONResponse(error_body("bad_request", message), 400)
    if not front.enabled and not behind_nginx:
        return JSONResponse(error_body("viewer_unavailable", front.unavailable_reason), 503)
    address = series_metadata.front_of(request, behind_nginx=behind_nginx)
    if not _HOST.fullmatch(address.host):
        return JSONResponse(error_body("bad_request", "the Host header is not a host[:port]"), 400)
    try:
        studies = targeted_studies(target)
    except UncheckableTarget as refused:
        return JSONResponse(error_body("bad_request", str(refused)), 400)
    try:
        viewer = await _authenticate(request, front)
    except (NotAuthenticated, NotPermitted) as refused:
        return _refusal(request, refused)
    if (outside := await _care(front, viewer, studies, dicom_read=True)) is not None:
        return outside
    if (kept := await _quarantine(front, studies)) is not None:
        return kept
    await _audit_view(front, viewer, studies)
    try:
        if (whole := await front.series_metadata.answer(request, target, address)) is not None:
            return whole
        return await front.proxy.forward(request, target, front=address)
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


@router.api_route(series_metadata.METADATA_ROUTE, methods=["GET", "HEAD"], include_in_schema=False)
async def series_metadata_behind_nginx(request: Request, front: FrontDep) -> Response:
    """A series' metadata handed over by nginx's front (sidecar.viewer.series_metadata),
    checked as on this front, which may be off (VIEWER_ENABLED=false)."""
    return await _proxy(request, front, behind_nginx=True)


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
        viewer = await _authenticate(request, front)
        if not viewer.has_pages:
            raise NotPermitted(_NO_PAGES)
    except (NotAuthenticated, NotPermitted) as refused:
        return _refusal(request, refused)
    return FileResponse(front.bundle.index_html, headers={"Cache-Control": "no-store"})


def _cache_control(path: Path) -> str:
    # Webpack names bundles by content hash: they never change under one name.
    if ".bundle." in path.name or path.suffix in (".wasm", ".woff2"):
        return "private, max-age=31536000, immutable"
    return "private, no-cache"
