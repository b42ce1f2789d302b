"""GET /api/events: the live event stream (Server-Sent Events), for any clinician, by a bearer
token or the viewer's session cookie (a browser's EventSource sends no header of its own)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import StreamingResponse
from sqlmodel import Session

from sidecar.accounts.dependencies import SCOPE_REFUSALS, user_of_token
from sidecar.accounts.models import Role, TokenScope, User
from sidecar.accounts.security import TokenClaims
from sidecar.core.dependencies import BearerDep, ClockDep, EngineDep, SettingsDep, provide
from sidecar.core.errors import NotAuthenticated, NotPermitted, UnacceptableValue
from sidecar.events.hub import EventHub
from sidecar.events.stream import Caller, EventStream
from sidecar.viewer.access import SESSION_COOKIE

router = APIRouter(tags=["events"])

CLINICIANS = frozenset({Role.ADMIN, Role.RADIOLOGIST, Role.TECHNOLOGIST, Role.PHYSICIAN})
#: Who reads the stream: clinicians, and analyzers (the events of their work items alone,
#: sidecar.events.scope), in place of UPS-RS subscriptions.
STREAM_ROLES = CLINICIANS | {Role.ANALYZER}
HubDep = Annotated[EventHub, Depends(provide(EventHub))]


def _caller(
    request: Request,
    engine: EngineDep,
    settings: SettingsDep,
    credentials: BearerDep,
    clock: ClockDep,
) -> Caller:
    """The API's token checks on the bearer token, else on the session cookie. No database
    session is held by the route: the stream opens short ones as it goes."""
    token = credentials.credentials if credentials else request.cookies.get(SESSION_COOKIE)
    if not token:
        raise NotAuthenticated(
            "authentication required: send 'Authorization: Bearer <token>' or log in "
            "(the viewer's session cookie)"
        )

    def check() -> tuple[User, TokenClaims]:
        with Session(engine) as session:
            user, claims = user_of_token(session, settings.jwt_secret, token)
            session.expunge(user)
        if claims.scope is not TokenScope.FULL:
            raise NotPermitted(SCOPE_REFUSALS[claims.scope])
        if user.role not in STREAM_ROLES:
            names = ", ".join(sorted(role.value for role in STREAM_ROLES))
            raise NotPermitted(f"this action needs one of the roles: {names}")
        return user, claims

    user, claims = check()
    return Caller(
        user=user, expires_at=claims.expires_at, still_allowed=lambda: check()[0], clock=clock
    )


def _last_event_id(header: str | None, query: str | None) -> int | None:
    value = header if header is not None else query
    if value is None or value == "":
        return None
    if not (value.isascii() and value.isdigit()) or len(value) > 18:  # int() refuses '²'
        field = "header.Last-Event-ID" if header is not None else "query.lastEventId"
        raise UnacceptableValue(field, "must be an event id (a non-negative integer)")
    return int(value)


@router.get(
    "/api/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "The event stream"}},
)
async def events(
    request: Request,
    hub: HubDep,
    caller: Annotated[Caller, Depends(_caller)],
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    last_event_id_query: Annotated[str | None, Query(alias="lastEventId")] = None,
) -> StreamingResponse:
    """Server-Sent Events announcing created, changed and removed studies, orders, reports and
    critical findings and UPS work items the caller may see (an analyzer: its work items
    alone): `id:` (strictly increasing), `event:` the kind (`study`, `order`, `report`,
    `finding`, `workitem`), `data:` `{"kind", "action", "id", "studyId"}`; ids
    only. `Last-Event-ID` (or `?lastEventId=`) resumes after that event, an `event: reset`
    first when the events after it are no longer kept; without, the stream starts with what
    happens next. A `: keepalive` comment comes every 15 s."""
    last_id = _last_event_id(last_event_id, last_event_id_query)
    stream = EventStream(hub, caller, last_id, request.is_disconnected)
    return StreamingResponse(
        stream.events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
