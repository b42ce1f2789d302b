"""/app/worklist: the reading worklist, through the function GET /api/reading-worklist answers
with (sidecar.reading.queue.worklist: STAT first, then by due time, the same filters and
pages), and claiming and releasing through the API's own action (sidecar.reading.claims).

Filters are enumerated values in the query (`assigned=mine|unassigned`, a modality code, a
priority, `overdue=yes`, `offset`): no patient data in the URL. The rows are a fragment
(/app/worklist/rows, same query) that refreshes itself on the live events of studies and
reports; claim and release are plain forms (303 back to the list) that htmx posts in place.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from sidecar.accounts.models import Role, User
from sidecar.core.dependencies import ClockDep, SessionDep
from sidecar.core.errors import ConflictingState, InvalidRequest, NotPermitted
from sidecar.core.pagination import MAX_OFFSET, Pagination, RecordId
from sidecar.orders.models import Modality, Priority
from sidecar.reading import claims
from sidecar.reading.policy import ReadingPolicyDep
from sidecar.reading.queue import UNASSIGNED, worklist, worklist_filter
from sidecar.viewer.front import ViewerLinksDep
from sidecar.web.care import PageScope
from sidecar.web.session import page_roles
from sidecar.web.templating import page_link, render

router = APIRouter(include_in_schema=False)

Reader = Annotated[User, Depends(page_roles(*page_link("worklist").roles))]
PAGE_SIZE = 50
SHOW = {"all": None, "mine": "me", "unassigned": UNASSIGNED}
MODALITIES = [m.value for m in Modality]
PRIORITIES = [p.value for p in Priority]


class Filters:
    """The worklist's query, checked against the enumerated values the form offers."""

    def __init__(self, request: Request) -> None:
        query = request.query_params
        self.show = query.get("assigned") or "all"
        self.modality = query.get("modality") or ""
        self.priority = query.get("priority") or ""
        self.overdue = query.get("overdue") == "yes"
        offset = query.get("offset") or "0"
        if self.show not in SHOW:
            raise InvalidRequest("assigned: choose all, mine or unassigned")
        if self.modality and self.modality not in MODALITIES:
            raise InvalidRequest(f"modality: one of {', '.join(MODALITIES)}")
        if self.priority and self.priority not in PRIORITIES:
            raise InvalidRequest(f"priority: one of {', '.join(PRIORITIES)}")
        if not (offset.isascii() and offset.isdigit()) or int(offset) > MAX_OFFSET:
            raise InvalidRequest("offset: a number of rows to skip")
        self.offset = int(offset)

    def values(self, offset: int | None = None) -> dict[str, str]:
        """The query as the form sends it, without the defaults."""
        values = {
            "assigned": "" if self.show == "all" else self.show,
            "modality": self.modality,
            "priority": self.priority,
            "overdue": "yes" if self.overdue else "",
            "offset": str(self.offset if offset is None else offset),
        }
        return {name: value for name, value in values.items() if value and value != "0"}

    def query(self, offset: int | None = None) -> str:
        return urlencode(self.values(offset))


FiltersDep = Annotated[Filters, Depends(Filters)]


def _rows_context(
    session: SessionDep,
    user: User,
    scope: Any,
    policy: Any,
    clock: Any,
    links: Any,
    filters: Filters,
) -> dict[str, Any]:
    wanted = worklist_filter(
        user,
        SHOW[filters.show],
        filters.modality or None,
        None,
        Priority(filters.priority) if filters.priority else None,
        True if filters.overdue else None,
    )
    pagination = Pagination(offset=filters.offset, limit=PAGE_SIZE)
    found = worklist(session, policy, wanted, scope.studies(), pagination, now=clock(), links=links)
    total, offset = found["total"], found["offset"]
    return {
        "found": found,
        "now": clock(),
        "filters": filters,
        "may_claim": user.role is Role.RADIOLOGIST,
        "previous_query": filters.query(max(offset - PAGE_SIZE, 0)) if offset > 0 else None,
        "next_query": filters.query(offset + PAGE_SIZE) if offset + PAGE_SIZE < total else None,
        "first_row": offset + 1 if total else 0,
        "last_row": min(offset + PAGE_SIZE, total),
        "message": "",
        "message_ok": False,
    }


@router.get("/app/worklist", response_class=HTMLResponse)
def worklist_page(
    request: Request,
    session: SessionDep,
    user: Reader,
    scope: PageScope,
    policy: ReadingPolicyDep,
    clock: ClockDep,
    links: ViewerLinksDep,
    filters: FiltersDep,
) -> HTMLResponse:
    context = _rows_context(session, user, scope, policy, clock, links, filters)
    context.update(_options(), live="study report")
    return render(request, "worklist.html", context)


@router.get("/app/worklist/rows", response_class=HTMLResponse)
def worklist_rows(
    request: Request,
    session: SessionDep,
    user: Reader,
    scope: PageScope,
    policy: ReadingPolicyDep,
    clock: ClockDep,
    links: ViewerLinksDep,
    filters: FiltersDep,
) -> HTMLResponse:
    context = _rows_context(session, user, scope, policy, clock, links, filters)
    return render(request, "_worklist_rows.html", context)


def _options() -> dict[str, Any]:
    return {"modalities": MODALITIES, "priorities": PRIORITIES, "shows": list(SHOW)}


@router.post("/app/worklist/{study_id}/{action}", response_class=HTMLResponse)
def claim_or_release(
    request: Request,
    study_id: RecordId,
    action: str,
    session: SessionDep,
    user: Reader,
    scope: PageScope,
    policy: ReadingPolicyDep,
    clock: ClockDep,
    links: ViewerLinksDep,
    filters: FiltersDep,
) -> Response:
    """Claim or release (radiologists, as the API), then the list again: 303 to it, or to an
    htmx request the rows in place. A refusal (409: another reader holds it) is shown on the
    list, in its alert region."""
    if action not in ("claim", "release"):
        raise InvalidRequest("claim or release")
    if user.role is not Role.RADIOLOGIST:  # as the API's claim and release
        raise NotPermitted("this action needs one of the roles: radiologist")
    message, ok, status = "", True, 200
    try:
        if action == "claim":
            claims.claim(
                session, study_id, user, scope, take_over=False, now=clock(), policy=policy
            )
            message = f"You claimed study {study_id}."
        else:
            claims.release(session, study_id, user, scope)
            message = f"You released study {study_id}."
    except ConflictingState as refused:
        session.rollback()
        message, ok, status = refused.message, False, refused.status_code
    htmx = bool(request.headers.get("HX-Request"))
    if ok and not htmx:
        query = filters.query()
        return RedirectResponse(f"/app/worklist{'?' + query if query else ''}", status_code=303)
    context = _rows_context(session, user, scope, policy, clock, links, filters)
    context.update(message=message, message_ok=ok)
    if htmx:  # htmx swaps 2xx answers only: the refusal is in the fragment's alert
        return render(request, "_worklist_rows.html", context)
    context.update(_options(), live="study report")
    return render(request, "worklist.html", context, status_code=status)
