"""Rendering the pages: Jinja2 templates (sidecar/web/templates), autoescaped, with what every
page needs put in their context, and the pages each role is shown.

    render(request, "worklist.html", {"rows": rows})

gives the template, besides its own context: `request`, `user` (the page's User, or None on an
error page met before the session was read), `role` (its value, or ""), `csrf_token`,
`csrf_field()` (the hidden form field), `nav` (the PageLinks of the user's role), `current_path`,
`live` ("" unless the page sets it: the event kinds it follows, for <body data-live>), and the
filters:
- `when`: a datetime in the department's time zone, "2026-03-01 14:05" (naive = UTC);
- `day`: its date, "2026-03-01";
- `duration`: a timedelta or seconds, "2 h 05 min", "45 min", "3 d 4 h";
- `priority`: "STAT", "Urgent", "Routine" from the order priority.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined, pass_context
from jinja2.runtime import Context
from markupsafe import Markup

from sidecar.accounts.models import Role, User
from sidecar.core.dependencies import provide
from sidecar.core.settings import Settings
from sidecar.web.session import CSRF_FIELD, csrf_token
from sidecar.worklist.publisher import zone_of

TEMPLATES_DIR = Path(__file__).parent / "templates"


@dataclass(frozen=True)
class PageLink:
    """One page of the navigation and of the home page's cards."""

    key: str
    title: str
    path: str
    description: str
    roles: frozenset[Role]


_R = Role
# The pages and who may open them: the navigation shows a role these; each page module refuses
# the others with page_roles(*page_link(key).roles), so the two never disagree. The same roles
# as the API the page works through.
PAGES: tuple[PageLink, ...] = (
    PageLink(
        "home",
        "Home",
        "/app/",
        "Your pages",
        frozenset({_R.ADMIN, _R.RADIOLOGIST, _R.TECHNOLOGIST, _R.PHYSICIAN}),
    ),
    PageLink(
        "worklist",
        "Worklist",
        "/app/worklist",
        "The reading queue: priority, due time, overdue and assigned studies; claim and read.",
        # GET /api/reading-worklist's roles (technologists have the orders page).
        frozenset({_R.ADMIN, _R.RADIOLOGIST}),
    ),
    PageLink(
        "orders",
        "Orders",
        "/app/orders",
        "Today's orders, arrivals, performed procedure steps and unmatched studies.",
        frozenset({_R.ADMIN, _R.TECHNOLOGIST}),
    ),
    PageLink(
        "results",
        "Results",
        "/app/results",
        "Your patients' signed reports and the critical findings to acknowledge.",
        frozenset({_R.ADMIN, _R.PHYSICIAN}),
    ),
    PageLink(
        "analytics",
        "Analytics",
        "/app/analytics",
        "Turnaround times and workload.",
        frozenset({_R.ADMIN, _R.RADIOLOGIST}),
    ),
    PageLink(
        "admin",
        "Administration",
        "/app/admin",
        "Users, the procedure catalog, assignment rules and report templates.",
        frozenset({_R.ADMIN}),
    ),
)


def page_link(key: str) -> PageLink:
    for page in PAGES:
        if page.key == key:
            return page
    raise KeyError(key)


def pages_for(role: Role | None) -> list[PageLink]:
    return [page for page in PAGES if role is not None and role in page.roles]


def _zone(context: Context) -> tzinfo:
    zone: tzinfo = context["zone"]
    return zone


def _local(context: Context, value: datetime) -> datetime:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(_zone(context))


@pass_context
def when(context: Context, value: datetime | None) -> str:
    return "" if value is None else _local(context, value).strftime("%Y-%m-%d %H:%M")


@pass_context
def day(context: Context, value: datetime | None) -> str:
    return "" if value is None else _local(context, value).strftime("%Y-%m-%d")


def duration(value: timedelta | float | int | None) -> str:
    """ "2 h 05 min", "45 min", "3 d 4 h", "0 min"; negative durations keep their sign."""
    if value is None:
        return ""
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    sign = "-" if seconds < 0 else ""
    minutes = int(abs(seconds) // 60)
    days, rest = divmod(minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    if days:
        return f"{sign}{days} d {hours} h"
    if hours:
        return f"{sign}{hours} h {minutes:02d} min"
    return f"{sign}{minutes} min"


_PRIORITY_LABELS = {"STAT": "STAT", "URGENT": "Urgent", "ROUTINE": "Routine"}


def priority(value: object) -> str:
    text = str(getattr(value, "value", value) or "")
    return _PRIORITY_LABELS.get(text.upper(), text.capitalize())


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(when=when, day=day, duration=duration, priority=priority)
    return env


templates = _environment()


def _page_user(request: Request) -> User | None:
    user = getattr(request.state, "page_user", None)
    return user if isinstance(user, User) else None


def render(
    request: Request,
    template_name: str,
    context: Mapping[str, Any] | None = None,
    status_code: int = 200,
    headers: Mapping[str, str] | None = None,
) -> HTMLResponse:
    """The template rendered as a page (or an htmx partial): never cached, it shows patient
    data. Call it from a route that depends on PageUser (or page_roles)."""
    user = _page_user(request)
    token = csrf_token(request) if user is not None else ""
    values: dict[str, Any] = {
        "request": request,
        "user": user,
        "role": user.role.value if user is not None else "",
        "csrf_token": token,
        "csrf_field": lambda: Markup('<input type="hidden" name="{}" value="{}">').format(
            CSRF_FIELD, token
        ),
        "nav": pages_for(user.role if user is not None else None),
        "current_path": request.url.path,
        "live": "",
        "zone": zone_of(provide(Settings)(request).timezone),
    }
    values.update(context or {})
    body = templates.get_template(template_name).render(values)
    answer = HTMLResponse(body, status_code=status_code, headers=dict(headers or {}))
    answer.headers["Cache-Control"] = "no-store"
    return answer
