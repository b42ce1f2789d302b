"""STOW-RS through the viewer fronts (sidecar.viewer.stow says who may store what).

`POST /dicom-web/studies[/{study}]` is the sidecar's own front (off with VIEWER_ENABLED=false,
as its reads are). `POST /api/viewer/stow/studies[/{study}]` is where nginx's front
(viewer/nginx.conf) hands the same request: there the sidecar's front is off, and the session
is checked here, not by an auth_request, because the instances in the body must be checked
too. nginx passes `Forwarded: proto=...;host=...` so Orthanc's RetrieveURLs point at it.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import Engine

from sidecar.core.api_errors import error_body, refusal_response
from sidecar.core.dependencies import EngineDep, SettingsDep, provide, provide_optional
from sidecar.core.errors import NotAuthenticated, NotPermitted, Refusal
from sidecar.core.models import utcnow
from sidecar.core.settings import Settings
from sidecar.ingest.orthanc_client import OrthancClient, OrthancUnavailable
from sidecar.ingest.sync import OrthancSync
from sidecar.viewer import stow, stow_body
from sidecar.viewer.access import SESSION_COOKIE, Viewer, credential_of
from sidecar.viewer.front import ViewerFront
from sidecar.viewer.paths import HOST, METHOD_OVERRIDE_HEADERS, STOW_TARGET, request_target

router = APIRouter(tags=["viewer"])

FrontDep = Annotated[ViewerFront, Depends(provide(ViewerFront))]
OrthancDep = Annotated[OrthancClient, Depends(provide(OrthancClient))]
SyncDep = Annotated[OrthancSync | None, Depends(provide_optional(OrthancSync))]

NGINX_PREFIX = "/api/viewer/stow"
_STOW = re.compile(STOW_TARGET)
_HOST = re.compile(HOST)
_FORWARDED = re.compile(f"^proto=(https?);host=({HOST[1:-1]})$")
_DICOM_JSON = "application/dicom+json"


def _refused(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(error_body(code, message), status)


async def _authenticate(request: Request, front: ViewerFront) -> Viewer:
    credential = credential_of(
        request.headers.get("authorization"), request.cookies.get(SESSION_COOKIE)
    )
    viewer = front.access.authenticate_from_memory(credential)
    if viewer is None:
        viewer = await asyncio.to_thread(front.access.authenticate, credential)
    if viewer.role not in stow.STOW_ROLES:
        raise NotPermitted(
            "only radiologists, administrators and analyzers (into the study of a work item"
            " they hold) store instances (STOW-RS)"
        )
    return viewer


async def _stow(
    request: Request,
    front: ViewerFront,
    deps: tuple[Settings, Engine, OrthancClient, OrthancSync | None],
    *,
    prefix: str,
    behind_nginx: bool,
) -> Response:
    settings, engine, orthanc, sync = deps
    raw = request_target(request.scope.get("raw_path") or b"", request.scope["query_string"])
    target = "/dicom-web" + raw[len(prefix) :] if raw.startswith(prefix + "/") else raw
    if "?" in target:
        return _refused(400, "bad_request", "STOW-RS takes no query parameters")
    if not _STOW.fullmatch(target):
        return _refused(404, "not_found", "not found")
    if any(request.headers.get(name) for name in METHOD_OVERRIDE_HEADERS):
        return _refused(400, "bad_request", "a method override header is refused")
    if not behind_nginx and not front.enabled:
        return _refused(503, "viewer_unavailable", front.unavailable_reason)
    host = request.headers.get("host", "")
    scheme = request.url.scheme
    forwarded = _FORWARDED.fullmatch(request.headers.get("forwarded", ""))
    if behind_nginx and forwarded:
        scheme, host = forwarded.group(1), forwarded.group(2)
    if not _HOST.fullmatch(host):
        return _refused(400, "bad_request", "the Host header is not a host[:port]")
    try:
        viewer = await _authenticate(request, front)
    except (NotAuthenticated, NotPermitted) as refused:
        return refusal_response(refused)
    path_study = target.removeprefix("/dicom-web/studies").lstrip("/") or None
    limit = settings.upload_max_mb * 1024 * 1024
    parts: list[stow_body.StowPart] = []
    try:
        parts = await stow_body.receive(request, limit, settings.upload_max_mb)
        instances = await asyncio.to_thread(stow.read_instances, parts)
        now = utcnow()
        decided = await asyncio.to_thread(stow.plan, engine, viewer, instances, path_study, now)
        answers = []
        for study, instances_of_study in stow.by_study(decided.accepted).items():
            # Unguessable: an instance holding the boundary would smuggle an unchecked part.
            boundary = f"stow-{secrets.token_hex(24)}"
            answers.append(
                await front.proxy.store(
                    _async(stow.multipart_body(instances_of_study, boundary)),
                    stow.body_size(instances_of_study, boundary),
                    boundary,
                    study=study,
                    host=host,
                    scheme=scheme,
                )
            )
        status, body = stow.answer(decided, stow.merge(answers) if answers else None)
        sops = stow.referenced_sops(body)
        if sops:
            await asyncio.to_thread(stow.record, engine, orthanc, viewer, decided, sops, now)
            if sync is not None:
                sync.wake()
    except Refusal as refused:
        return refusal_response(refused)
    except OrthancUnavailable as exc:
        return _refused(502, "unavailable", str(exc))
    finally:
        for part in parts:
            part.close()
    return JSONResponse(body, status, media_type=_DICOM_JSON)


async def _async(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


@router.post("/dicom-web/studies", include_in_schema=False)
@router.post("/dicom-web/studies/{study_uid}", include_in_schema=False)
async def stow_rs(
    request: Request,
    front: FrontDep,
    settings: SettingsDep,
    engine: EngineDep,
    orthanc: OrthancDep,
    sync: SyncDep,
) -> Response:
    """STOW-RS on the sidecar's own front."""
    deps = (settings, engine, orthanc, sync)
    return await _stow(request, front, deps, prefix="/dicom-web", behind_nginx=False)


@router.post(f"{NGINX_PREFIX}/studies", include_in_schema=False)
@router.post(f"{NGINX_PREFIX}/studies/{{study_uid}}", include_in_schema=False)
async def stow_rs_behind_nginx(
    request: Request,
    front: FrontDep,
    settings: SettingsDep,
    engine: EngineDep,
    orthanc: OrthancDep,
    sync: SyncDep,
) -> Response:
    """STOW-RS handed over by nginx's front (viewer/nginx.conf)."""
    deps = (settings, engine, orthanc, sync)
    return await _stow(request, front, deps, prefix=NGINX_PREFIX, behind_nginx=True)
