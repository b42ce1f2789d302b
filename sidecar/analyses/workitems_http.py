"""What every UPS-RS request is checked for before it reaches a work item: its target as
received (sidecar.viewer.paths: routes match the decoded path, and
`/dicom-web/workitems/%2e%2e/state` must not be taken for a work item named ".."), no method
override, a Host that is a host, a bearer token of an account that has work items (analyzers,
administrators, radiologists), and a body that is one DICOM JSON dataset of bounded size.

Bearer tokens only (POST /api/auth/login): a UPS-RS client is a program, and a browser's cookie
would make every change a cross-site request risk.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import Engine
from sqlmodel import Session

from sidecar.accounts.dependencies import SCOPE_REFUSALS, token_holder
from sidecar.accounts.models import TokenScope, User
from sidecar.analyses import dicom_json
from sidecar.analyses.workitem_states import WorkitemRefusal, visible
from sidecar.core.dependencies import ClockDep, EngineDep, SettingsDep
from sidecar.core.errors import NotAuthenticated, NotPermitted
from sidecar.core.settings import Settings
from sidecar.viewer.paths import HOST, METHOD_OVERRIDE_HEADERS, Verdict, request_target, verdict

DICOM_JSON = "application/dicom+json"
_HOST = re.compile(HOST)
_FORWARDED = re.compile(f"^proto=(https?);host=({HOST[1:-1]})$")


@dataclass(frozen=True)
class Caller:
    """The checked request: who, the DICOMweb address of the front it came through (for the
    Retrieve URLs it is answered), and when."""

    user: User
    dicomweb_base: str
    now: datetime


def checked_target(request: Request) -> str:
    """The front's DICOMweb base URL, once the raw target and the headers are checked."""
    target = request_target(request.scope.get("raw_path") or b"", request.scope["query_string"])
    decided = verdict(target)
    if decided is Verdict.MALFORMED:
        raise WorkitemRefusal(
            400,
            "the path or a query parameter's name is malformed (percent-escapes, #, backslashes,"
            " empty or dot segments, names other than letters, digits and dots)",
        )
    if decided is not Verdict.WORKITEMS:
        raise WorkitemRefusal(404, "not found")
    if any(request.headers.get(name) for name in METHOD_OVERRIDE_HEADERS):
        raise WorkitemRefusal(400, "a method override header is refused")
    scheme, host = request.url.scheme, request.headers.get("host", "")
    forwarded = _FORWARDED.fullmatch(request.headers.get("forwarded", ""))
    if forwarded:  # nginx's front: the address its client used
        scheme, host = forwarded.group(1), forwarded.group(2)
    if not _HOST.fullmatch(host):
        raise WorkitemRefusal(400, "the Host header is not a host[:port]")
    return f"{scheme}://{host}/dicom-web"


def _authenticate(engine: Engine, settings: Settings, authorization: str | None) -> User:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise NotAuthenticated(
            "authentication required: send 'Authorization: Bearer <token>' (POST /api/auth/login)"
        )
    with Session(engine, expire_on_commit=False) as session:
        user, scope = token_holder(session, token.strip(), settings.jwt_secret)
        session.expunge(user)
    if scope is not TokenScope.FULL:
        raise NotPermitted(SCOPE_REFUSALS[scope])
    return user


async def _caller(
    request: Request, engine: EngineDep, settings: SettingsDep, clock: ClockDep
) -> Caller:
    base = checked_target(request)
    authorization = request.headers.get("authorization")
    user = await asyncio.to_thread(_authenticate, engine, settings, authorization)
    now = clock()
    visible(user, now)  # 403 for the roles that have no work items
    return Caller(user, base, now)


CallerDep = Annotated[Caller, Depends(_caller)]


async def read_body(request: Request) -> dict[str, Any]:
    """The body's dataset (DICOM JSON, checked); 413 past MAX_BODY_BYTES, read no further."""
    limit = dicom_json.MAX_BODY_BYTES
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise WorkitemRefusal(413, f"the body is larger than {limit} bytes")
    received = bytearray()
    async for chunk in request.stream():
        received += chunk
        if len(received) > limit:
            raise WorkitemRefusal(413, f"the body is larger than {limit} bytes")
    return dicom_json.read_dataset(bytes(received), request.headers.get("content-type"))


def transaction_in_query(request: Request) -> str | None:
    """The Transaction UID of an update, as PS3.18 11.6.1 puts it: the query string itself
    (`?1.2.3`); None when there is no query."""
    query: str = request.scope["query_string"].decode("latin-1")
    if not query:
        return None
    if not dicom_json.is_uid(query):
        raise WorkitemRefusal(
            400, "the query of an update is the Transaction UID alone: ?{transaction uid}"
        )
    return query
