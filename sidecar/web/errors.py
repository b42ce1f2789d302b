"""Refusals met under /app/ answered as pages, every other path as the API answers them.

- 401 (no session, an expired or forged one, a disabled account): the login form, at the URL
  asked for, whose `next` returns there after logging in. To an htmx GET (a fragment whose
  session ran out) with HX-Refresh too, so that the whole page reloads onto the login form; never
  to an htmx POST (Save, Sign...): a reload would throw away what the user typed, so the page
  stays and its script says that nothing was saved (static/app.js).
- any other refusal (403, 404, 409...) and an unknown /app/ path: the error page with the reason.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from sidecar.core.errors import Refusal
from sidecar.viewer.login import login_page
from sidecar.web.templating import render

Handler = Callable[[Request, Any], Response | Awaitable[Response]]


def is_page(request: Request) -> bool:
    path = request.url.path
    return path == "/app" or path.startswith("/app/")


def page_refused(request: Request, status_code: int, message: str) -> Response:
    if status_code == 401:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        headers = {"Cache-Control": "no-store"}
        if request.headers.get("HX-Request") and request.method in ("GET", "HEAD"):
            headers["HX-Refresh"] = "true"
        return HTMLResponse(login_page(next_url=target), status_code=401, headers=headers)
    heading = {403: "Not allowed", 404: "Not found"}.get(status_code)
    if heading is None:
        try:
            heading = HTTPStatus(status_code).phrase
        except ValueError:
            heading = "Error"
    context = {"heading": heading, "message": message, "status_code": status_code}
    return render(request, "error.html", context, status_code=status_code)


def _api(handler: Handler) -> Callable[[Request, Exception], Awaitable[Response]]:
    async def answer(request: Request, exc: Exception) -> Response:
        answered = handler(request, exc)
        return await answered if inspect.isawaitable(answered) else answered

    return answer


def install_page_errors(app: FastAPI) -> None:
    """Call after sidecar.core.api_errors.install_error_handlers: wraps its handlers."""
    api_refusal = _api(app.exception_handlers[Refusal])
    api_http = _api(app.exception_handlers[StarletteHTTPException])
    api_invalid = _api(app.exception_handlers[RequestValidationError])

    async def refusal(request: Request, exc: Exception) -> Response:
        if is_page(request) and isinstance(exc, Refusal):
            return page_refused(request, exc.status_code, exc.message)
        return await api_refusal(request, exc)

    async def http_error(request: Request, exc: Exception) -> Response:
        if is_page(request) and isinstance(exc, StarletteHTTPException):
            message = "this page does not exist" if exc.status_code == 404 else str(exc.detail)
            return page_refused(request, exc.status_code, message)
        return await api_http(request, exc)

    async def invalid(request: Request, exc: Exception) -> Response:
        if is_page(request) and isinstance(exc, RequestValidationError):
            fields = ", ".join(
                str(error.get("loc", ("?",))[-1]) for error in exc.errors() if error.get("loc")
            )
            return page_refused(request, 400, f"the request is not valid ({fields or 'input'})")
        return await api_invalid(request, exc)

    app.add_exception_handler(Refusal, refusal)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
