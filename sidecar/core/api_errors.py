"""The one seam where refusals become HTTP: every error answer is
{"error": {"code", "message", "details"}}.

A Refusal (sidecar.core.errors) answers its own status; StaleDataError (an optimistic-concurrency
UPDATE that found its row changed by someone else) answers 409. Framework errors (validation 422,
unknown route 404, method 405) and unexpected exceptions (500, logged with a stack trace but never
echoed) are rendered in the same shape, and the OpenAPI document says so.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.orm.exc import StaleDataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from sidecar.core import correlation
from sidecar.core.errors import ConflictingState, Refusal

log = logging.getLogger(__name__)


def error_body(
    code: str, message: str, details: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or []}}


class ErrorDetail(BaseModel):
    location: str
    message: str


class ErrorContent(BaseModel):
    code: str
    message: str
    details: list[ErrorDetail]


class ErrorBody(BaseModel):
    """Every error answer, the request validation errors (422) included."""

    error: ErrorContent


def document_error_format(openapi: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI document with FastAPI's default 422 body (HTTPValidationError, `detail`)
    replaced by the body this API really sends (ErrorBody), so the document tells clients the
    truth."""
    schema = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    components = openapi.setdefault("components", {}).setdefault("schemas", {})
    components.update(schema.pop("$defs", {}))
    components.pop("ValidationError", None)
    if "HTTPValidationError" in components:
        components["HTTPValidationError"] = schema
    return openapi


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
    503: "unavailable",
}


def refusal_response(refusal: Refusal) -> JSONResponse:
    headers = dict(refusal.headers)
    if refusal.status_code == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(
        error_body(refusal.code, refusal.message, refusal.details), refusal.status_code, headers
    )


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(Refusal)
    async def _refusal(_: Request, exc: Refusal) -> JSONResponse:
        return refusal_response(exc)

    @app.exception_handler(StaleDataError)
    async def _stale(_: Request, exc: StaleDataError) -> JSONResponse:
        message = "someone else changed this record at the same time: reload it and try again"
        return JSONResponse(error_body(ConflictingState.code, message), 409)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "error")
        return JSONResponse(
            error_body(code, str(exc.detail)), exc.status_code, getattr(exc, "headers", None)
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {
                "location": ".".join(str(p) for p in err.get("loc", ())),
                "message": err.get("msg", ""),
            }
            for err in exc.errors()
        ]
        return JSONResponse(
            error_body("validation_error", "the request is not valid", details), 422
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=exc)
        # Answered outside the access log's middleware: the request's id said here.
        request_id = correlation.current()
        headers = {"X-Request-ID": request_id} if request_id else None
        return JSONResponse(error_body("internal_error", "internal server error"), 500, headers)
