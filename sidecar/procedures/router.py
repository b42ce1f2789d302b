"""The procedure catalog over the API: administrators manage it; those who create orders may
read it."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, status
from sqlmodel import Session, col
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from sidecar.accounts.dependencies import Admin, require_roles
from sidecar.accounts.models import Role, User
from sidecar.core.dependencies import SessionDep
from sidecar.core.errors import Refusal, UnacceptableValue, UnknownRecord
from sidecar.core.models import Page
from sidecar.core.pagination import PaginationDep, RecordId, equal_to, paginate
from sidecar.orders.models import Modality
from sidecar.procedures import catalog
from sidecar.procedures.csv_file import MAX_BYTES
from sidecar.procedures.models import (
    ImportOutcome,
    Procedure,
    ProcedureCreate,
    ProcedurePublic,
    ProcedureUpdate,
)

router = APIRouter(prefix="/api/procedures", tags=["procedure catalog"])

_R = Role
CatalogReader = Annotated[
    User, Depends(require_roles(_R.ADMIN, _R.TECHNOLOGIST, _R.RADIOLOGIST, _R.INTEGRATION))
]
#: The multipart envelope around a file of MAX_BYTES: headers and boundaries.
_ENVELOPE = 16 * 1024
_IMPORT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            }
        },
    }
}


class TooLarge(Refusal):
    status_code = 413
    code = "payload_too_large"


class LengthRequired(Refusal):
    status_code = 411
    code = "length_required"


@router.get("", response_model=Page[ProcedurePublic])
def list_procedures(
    session: SessionDep,
    _: CatalogReader,
    pagination: PaginationDep,
    code: Annotated[str | None, Query(max_length=16)] = None,
    modality: Modality | None = None,
    station_ae_title: Annotated[str | None, Query(alias="stationAeTitle", max_length=16)] = None,
) -> dict[str, Any]:
    conditions = equal_to(
        (Procedure.code, code),
        (Procedure.modality, modality),
        (Procedure.station_ae_title, station_ae_title),
    )
    return paginate(session, Procedure, conditions, [col(Procedure.code)], pagination)


@router.post("", response_model=ProcedurePublic, status_code=status.HTTP_201_CREATED)
def create_procedure(body: ProcedureCreate, session: SessionDep, user: Admin) -> Procedure:
    entry = catalog.create(session, body.model_dump(), actor=user.username)
    session.commit()
    session.refresh(entry)
    return entry


@router.post(
    "/import",
    response_model=ImportOutcome,
    openapi_extra=_IMPORT_BODY,
    responses={
        411: {"description": "the request has no Content-Length"},
        413: {"description": "the file is larger than the import accepts"},
    },
)
async def import_procedures(request: Request, session: SessionDep, user: Admin) -> ImportOutcome:
    """A CSV file as the multipart field `file`: every row imported, or none (422 naming each
    row and column at fault). Codes not in the catalog are created, the others updated.
    The size is checked on Content-Length before the body is read (413), and again on the
    file itself (422)."""
    length = request.headers.get("content-length", "")
    if not length.isdigit():
        raise LengthRequired("send the file with a Content-Length (no chunked upload)")
    if int(length) > MAX_BYTES + _ENVELOPE:
        raise TooLarge(f"the file is larger than the import accepts ({MAX_BYTES} bytes)")
    async with request.form(max_files=1, max_fields=8) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise UnacceptableValue("file", "send the CSV file as the multipart field `file`")
        data = await upload.read(MAX_BYTES + 1)
    return await run_in_threadpool(catalog.import_file, session, data, actor=user.username)


@router.get("/{procedure_id}", response_model=ProcedurePublic)
def get_procedure(procedure_id: RecordId, session: SessionDep, _: CatalogReader) -> Procedure:
    return _entry_or_404(session, procedure_id)


@router.patch("/{procedure_id}", response_model=ProcedurePublic)
def update_procedure(
    procedure_id: RecordId, body: ProcedureUpdate, session: SessionDep, user: Admin
) -> Procedure:
    entry = _entry_or_404(session, procedure_id)
    catalog.update(session, entry, body.model_dump(exclude_unset=True), actor=user.username)
    session.commit()
    session.refresh(entry)
    return entry


@router.delete("/{procedure_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_procedure(procedure_id: RecordId, session: SessionDep, user: Admin) -> None:
    catalog.delete(session, _entry_or_404(session, procedure_id), actor=user.username)
    session.commit()


def _entry_or_404(session: Session, procedure_id: int) -> Procedure:
    entry = session.get(Procedure, procedure_id)
    if entry is None:
        raise UnknownRecord(f"procedure {procedure_id} not found")
    return entry
