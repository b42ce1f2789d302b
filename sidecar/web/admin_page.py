"""/app/admin: administration, for administrators only. This module: the overview, user
accounts (/app/admin/users) and the procedure catalog import (/app/admin/procedures);
assignment rules and report templates: sidecar.web.admin_setup_page.

Each change goes through the service the API calls (sidecar.accounts.service for
/api/users, sidecar.procedures.catalog.import_file for POST /api/procedures/import): the same
checks (password rules, an administrator never disables themself), the same audit rows.
Forms: sidecar.web.forms (redirect after a change, the form kept and the reasons shown after a
refusal)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError
from sqlmodel import Session, col, func, select
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from sidecar.accounts import service as accounts
from sidecar.accounts.models import Role, UserCreate, UserUpdate
from sidecar.core.dependencies import ClockDep, SessionDep
from sidecar.core.errors import Refusal, UnacceptableValue
from sidecar.core.pagination import Pagination, RecordId
from sidecar.procedures import catalog
from sidecar.procedures.csv_file import MAX_BYTES
from sidecar.procedures.models import Procedure
from sidecar.web.admin_sections import SECTIONS, PageAdmin
from sidecar.web.forms import done, form_fields, given, message_of, problems, refused_status
from sidecar.web.templating import render

router = APIRouter(include_in_schema=False)

USER_LABELS = {
    "username": "User name",
    "password": "Password",
    "role": "Role",
    "provider_id": "Provider id",
    "facilities": "Facilities",
    "user_id": "Account",
}
USER_DONE = {
    "created": "The account was created.",
    "disabled": "The account was disabled: its sessions have ended.",
    "enabled": "The account was enabled.",
    "password": "The password was reset: the user chooses a new one at their next login.",
}
IMPORT_DONE = {
    "imported": "Imported {rows} rows: {created} codes created, {updated} updated.",
}
_ENVELOPE = 16 * 1024  # the multipart envelope around the file, as the API allows it
_SHOWN_PROCEDURES = 200


@router.get("/app/admin", response_class=HTMLResponse)
def overview(request: Request, _: PageAdmin) -> HTMLResponse:
    return render(request, "admin.html", {"sections": SECTIONS})


# -- Users ----------------------------------------------------------------------------------------


@router.get("/app/admin/users", response_class=HTMLResponse)
def users_page(request: Request, _: PageAdmin, session: SessionDep) -> HTMLResponse:
    what = request.query_params.get("done")
    return _users(request, session, message=message_of(USER_DONE, what, {}))


@router.post("/app/admin/users")
async def create_user(request: Request, admin: PageAdmin, session: SessionDep) -> Response:
    fields = await form_fields(request)
    values: dict[str, Any] = given(fields, "username", "password", "role", "provider_id")
    facilities = [f.strip() for f in fields.get("facilities", "").split(",") if f.strip()]
    try:
        body = UserCreate.model_validate({**values, "facilities": facilities})
        await run_in_threadpool(accounts.create_user, session, body, admin=admin)
    except (ValidationError, Refusal) as error:
        session.rollback()
        return _users(request, session, sent=fields, error=error)
    return done("/app/admin/users", "created")


@router.post("/app/admin/users/{user_id}/disable")
def disable_user(
    request: Request, user_id: RecordId, admin: PageAdmin, session: SessionDep, clock: ClockDep
) -> Response:
    try:
        user = accounts.get_user(session, user_id)
        accounts.disable_user(session, user, admin=admin, now=clock())
    except Refusal as error:
        session.rollback()
        return _users(request, session, error=error)
    return done("/app/admin/users", "disabled")


@router.post("/app/admin/users/{user_id}/enable")
def enable_user(
    request: Request, user_id: RecordId, admin: PageAdmin, session: SessionDep, clock: ClockDep
) -> Response:
    user = accounts.get_user(session, user_id)
    accounts.update_user(session, user, UserUpdate(is_active=True), admin=admin, now=clock())
    return done("/app/admin/users", "enabled")


@router.post("/app/admin/users/password")
async def reset_password(
    request: Request, admin: PageAdmin, session: SessionDep, clock: ClockDep
) -> Response:
    """A new password for another account: as PATCH /api/users/{id} with a password."""
    fields = await form_fields(request)
    try:
        user_id = int(fields.get("user_id", ""))
    except ValueError:
        return _users(request, session, sent=fields, error=_refusal("user_id", "choose an account"))
    try:
        body = UserUpdate.model_validate(given(fields, "password"))
        if body.password is None:
            raise _refusal("password", "type the new password")
        user = accounts.get_user(session, user_id)
        await run_in_threadpool(accounts.update_user, session, user, body, admin=admin, now=clock())
    except (ValidationError, Refusal) as error:
        session.rollback()
        return _users(request, session, sent=fields, error=error, reset=True)
    return done("/app/admin/users", "password")


def _users(
    request: Request,
    session: Session,
    *,
    message: str = "",
    sent: dict[str, str] | None = None,
    error: Exception | None = None,
    reset: bool = False,
) -> HTMLResponse:
    listed = accounts.list_users(session, Pagination(limit=1000))
    context = {
        "sections": SECTIONS,
        "users": listed["items"],
        "total": listed["total"],
        "roles": [role for role in Role],
        "message": message,
        # The password is never sent back to the browser.
        "sent": {k: v for k, v in (sent or {}).items() if k != "password"},
        "errors": problems(error, USER_LABELS) if error else [],
        "reset_errors": reset,
    }
    status = refused_status(request, error) if error else 200
    return render(request, "admin_users.html", context, status_code=status)


def _refusal(field: str, message: str) -> Refusal:
    return UnacceptableValue(f"form.{field}", message)


# -- Procedure catalog ----------------------------------------------------------------------------


@router.get("/app/admin/procedures", response_class=HTMLResponse)
def procedures_page(request: Request, _: PageAdmin, session: SessionDep) -> HTMLResponse:
    query = request.query_params
    counts = {name: query.get(name, "") for name in ("rows", "created", "updated")}
    message = message_of(IMPORT_DONE, query.get("done"), counts)
    return _procedures(request, session, message=message)


@router.post("/app/admin/procedures/import")
async def import_procedures(request: Request, admin: PageAdmin, session: SessionDep) -> Response:
    """The file as POST /api/procedures/import takes it, through the same function: every row
    imported, or none and each row and column at fault listed."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_BYTES + _ENVELOPE:
        error = _refusal("file", f"the file is larger than the import accepts ({MAX_BYTES} bytes)")
        error.status_code = 413
        return _procedures(request, session, error=error)
    upload = (await request.form()).get("file")
    if not isinstance(upload, UploadFile) or not upload.filename:
        return _procedures(request, session, error=_refusal("file", "choose a CSV file"))
    data = await upload.read(MAX_BYTES + 1)
    try:
        outcome = await run_in_threadpool(catalog.import_file, session, data, actor=admin.username)
    except Refusal as error:
        session.rollback()
        return _procedures(request, session, error=error)
    return done(
        "/app/admin/procedures",
        "imported",
        rows=outcome.rows,
        created=outcome.created,
        updated=outcome.updated,
    )


def _procedures(
    request: Request, session: Session, *, message: str = "", error: Refusal | None = None
) -> HTMLResponse:
    total = session.exec(select(func.count()).select_from(Procedure)).one()
    entries = session.exec(
        select(Procedure).order_by(col(Procedure.code)).limit(_SHOWN_PROCEDURES)
    ).all()
    context = {
        "sections": SECTIONS,
        "entries": entries,
        "total": total,
        "message": message,
        "error": error.message if error else "",
        "rows": [_located(d) for d in error.details] if error else [],
    }
    status = refused_status(request, error) if error else 200
    return render(request, "admin_procedures.html", context, status_code=status)


def _located(detail: dict[str, Any]) -> dict[str, str]:
    """`file.row[3].modality` as row "3", column "modality"."""
    location = str(detail.get("location", ""))
    row = column = ""
    if ".row[" in location:
        row = location.split(".row[", 1)[1].split("]", 1)[0]
        column = location.split("]", 1)[1].lstrip(".")
    elif location.startswith("form."):
        column = location.removeprefix("form.")
    return {"row": row, "column": column, "message": str(detail.get("message", ""))}
