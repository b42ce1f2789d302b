"""What the pages' forms share: the fields sent, as text; refusals turned into messages naming
the field (pydantic's, and the services' Refusals); and the answer after a change.

After a change a form is answered 303 to its page (redirect-after-post), with `?done=<what>`
(an enumerated word) saying what was done; htmx follows the redirect itself and swaps the part
of the page its form names (hx-select), so both paths end on the same page. A refused change
re-renders the page with what was sent and the reasons (role="alert"): with the refusal's status
for a plain form, 200 for htmx (htmx swaps no 4xx answer).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import RedirectResponse
from pydantic import ValidationError

from sidecar.core.errors import Refusal
from sidecar.web.session import CSRF_FIELD


async def form_fields(request: Request) -> dict[str, str]:
    """The text fields sent (the CSRF token left out); a field sent twice keeps its last."""
    form = await request.form()
    return {
        name: value.strip()
        for name, value in form.multi_items()
        if isinstance(value, str) and name != CSRF_FIELD
    }


async def form_list(request: Request, name: str) -> list[str]:
    """Every value sent under `name` (checkboxes)."""
    form = await request.form()
    return [value for value in form.getlist(name) if isinstance(value, str)]


def given(fields: Mapping[str, str], *names: str) -> dict[str, str]:
    """The named fields that are not empty: an empty field is no value."""
    return {name: fields[name] for name in names if fields.get(name)}


def problems(error: Exception, labels: Mapping[str, str]) -> list[str]:
    """Plain sentences for a refusal, each naming the field (by its label) it is about."""
    if isinstance(error, ValidationError):
        found = []
        for item in error.errors():
            where = [str(part) for part in item.get("loc", ()) if not isinstance(part, int)]
            label = next((labels[p] for p in reversed(where) if p in labels), None)
            message = str(item.get("msg", "is not valid"))
            found.append(f"{label}: {message}" if label else message)
        return found
    if isinstance(error, Refusal):
        found = []
        for detail in error.details:
            location = str(detail.get("location", "")).split(".")[-1]
            label = labels.get(location)
            text = str(detail.get("message", ""))
            found.append(f"{label}: {text}" if label else text)
        return found or [error.message]
    raise error


def status_of(error: Exception) -> int:
    return error.status_code if isinstance(error, Refusal) else 422


def refused_status(request: Request, error: Exception) -> int:
    """The status of a page re-rendered with a refusal: htmx swaps only 2xx answers."""
    return 200 if request.headers.get("HX-Request") else status_of(error)


def done(path: str, what: str, **numbers: int) -> RedirectResponse:
    """303 to the page, saying what was done (an enumerated word, and counts)."""
    query = urlencode({"done": what, **numbers})
    return RedirectResponse(f"{path}?{query}", status_code=303)


def message_of(messages: Mapping[str, str], what: str | None, numbers: Mapping[str, Any]) -> str:
    """The sentence for `?done=`; unknown words say nothing."""
    template = messages.get(what or "")
    if template is None:
        return ""
    try:
        return template.format(**{k: int(v) for k, v in numbers.items() if str(v).isdigit()})
    except (KeyError, ValueError):
        return ""
