"""UPS-RS (DICOM PS3.18 section 11; IHE RAD-80 to RAD-88) at /dicom-web/workitems, on both fronts:
the sidecar's own, and nginx's, which hands these paths to the sidecar as received
(viewer/nginx.conf). Each external analyzer's task is a work item (sidecar.analyses.workitems);
an analyzer account searches, claims, updates and completes or cancels it; administrators and
radiologists follow the work items and may ask for a cancel.

    GET    /dicom-web/workitems                         search (RAD-81)
    GET    /dicom-web/workitems/{uid}                   retrieve (RAD-82)
    POST   /dicom-web/workitems/{uid}?{transaction}     update (RAD-83)
    PUT    /dicom-web/workitems/{uid}/state             change state (RAD-84)
    POST   /dicom-web/workitems/{uid}/cancelrequest     request cancellation (RAD-85)
    POST   /dicom-web/workitems                         405: the sidecar creates work items
    POST, DELETE .../{uid}/subscribers/{aet}            501: events come on GET /api/events

Answers are DICOM JSON (application/dicom+json); refusals the API's error body, with the
Warning header PS3.18 asks for. Checks of the request itself: sidecar.analyses.workitems_http.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import Engine
from sqlmodel import Session

from sidecar.analyses import dicom_json, workitem_search
from sidecar.analyses import workitem_states as states
from sidecar.analyses.models import WorkitemState
from sidecar.analyses.workitem_results import stored_reports
from sidecar.analyses.workitems_http import (
    DICOM_JSON,
    Caller,
    CallerDep,
    read_body,
    transaction_in_query,
)
from sidecar.core.dependencies import EngineDep, provide
from sidecar.core.settings import Settings
from sidecar.ingest.orthanc_client import OrthancClient
from sidecar.studies.models import Study
from sidecar.viewer.front import ViewerFront

router = APIRouter(tags=["workitems"])

PREFIX = "/dicom-web/workitems"
SUBSCRIPTIONS_REFUSED = (
    "UPS-RS subscriptions (WebSocket event reports) are not offered here: follow the work items"
    " on the Server-Sent Events stream GET /api/events with the account's bearer token (events"
    " of kind `workitem`), then search or retrieve them"
)
# Procedure Step State (0074,1000) as PS3.18 11.7.1.4 spells CANCELED too.
_STATES = {**{state.value: state for state in WorkitemState}, "CANCELLED": WorkitemState.CANCELED}

FrontDep = Annotated[ViewerFront, Depends(provide(ViewerFront))]
OrthancDep = Annotated[OrthancClient, Depends(provide(OrthancClient))]
SettingsDep = Annotated[Settings, Depends(provide(Settings))]


def _dicom_json(answer: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(answer, status, headers, media_type=DICOM_JSON)


# --- search and retrieve -----------------------------------------------------------------------


def _search(engine: Engine, caller: Caller, parameters: list[tuple[str, str]]) -> Any:
    search = workitem_search.parse_search(parameters)
    visible = states.visible(caller.user, caller.now)
    statement, whole = workitem_search.query(search, visible)
    start, stop = search.offset, search.offset + search.limit
    with Session(engine) as session:
        if whole:  # the database decided every filter: it cuts the page
            rows = list(session.exec(statement.offset(start).limit(search.limit + 1)).all())
            page, more = rows[: search.limit], len(rows) > search.limit
        else:
            found = [
                i
                for i in session.exec(statement).all()
                if workitem_search.matches(i.dataset, search)
            ]
            page, more = found[start:stop], len(found) > stop
        return [workitem_search.served(item, caller.dicomweb_base) for item in page], more


@router.get(PREFIX, include_in_schema=False)
async def search_workitems(request: Request, caller: CallerDep, engine: EngineDep) -> Response:
    parameters = list(request.query_params.multi_items())
    answer, more = await asyncio.to_thread(_search, engine, caller, parameters)
    if not answer:
        return Response(status_code=204)
    more_text = "There are additional results that can be requested"
    return _dicom_json(
        answer, headers={"Warning": states.warning_header(more_text)} if more else None
    )


def _retrieve(engine: Engine, caller: Caller, uid: str) -> list[dict[str, Any]]:
    with Session(engine) as session:
        workitem = states.find(session, uid, caller.user, caller.now, to_change=False)
        return [workitem_search.served(workitem, caller.dicomweb_base)]


@router.get(PREFIX + "/{uid}", include_in_schema=False)
async def retrieve_workitem(uid: str, caller: CallerDep, engine: EngineDep) -> Response:
    return _dicom_json(await asyncio.to_thread(_retrieve, engine, caller, uid))


@router.post(PREFIX, include_in_schema=False)
async def create_workitem(caller: CallerDep) -> Response:
    del caller  # checked: the answer is the same for every account that has work items
    refused = states.WorkitemRefusal(
        405,
        "work items are created by the sidecar, one for each external analyzer an analysis asks"
        " for (POST /api/v1/imaging/analyze/{studyId}); find them with GET /dicom-web/workitems",
    )
    refused.headers["Allow"] = "GET"
    raise refused


# --- the performer's changes -------------------------------------------------------------------


def _update(
    engine: Engine, caller: Caller, uid: str, transaction: str | None, changes: dict[str, Any]
) -> None:
    in_body = dicom_json.first_string(changes, states.TRANSACTION_UID)
    if transaction and in_body and in_body != transaction:
        raise states.WorkitemRefusal(
            400,
            "the query and the body name different Transaction UIDs",
            states.TRANSACTION_INCORRECT,
        )
    with Session(engine) as session:
        workitem = states.find(session, uid, caller.user, caller.now, to_change=True)
        states.update(session, workitem, caller.user, transaction or in_body, changes, caller.now)


@router.post(PREFIX + "/{uid}", include_in_schema=False)
async def update_workitem(
    request: Request, uid: str, caller: CallerDep, engine: EngineDep
) -> Response:
    transaction = transaction_in_query(request)
    changes = await read_body(request)
    await asyncio.to_thread(_update, engine, caller, uid, transaction, changes)
    return Response(status_code=200)


def _state_request(body: dict[str, Any]) -> tuple[WorkitemState, str]:
    asked = dicom_json.first_string(body, states.PROCEDURE_STEP_STATE)
    if asked is None:
        raise states.WorkitemRefusal(
            400, "(0074,1000) ProcedureStepState is missing: IN PROGRESS, COMPLETED or CANCELED"
        )
    state = _STATES.get(asked)
    if state is None or state is WorkitemState.SCHEDULED:
        raise states.WorkitemRefusal(
            400,
            f"(0074,1000) ProcedureStepState {asked[:32]!r}: a work item is changed to IN PROGRESS,"
            " COMPLETED or CANCELED (it is SCHEDULED only when the sidecar creates it)",
        )
    transaction = dicom_json.first_string(body, states.TRANSACTION_UID)
    if transaction is None:
        raise states.WorkitemRefusal(
            400, "(0008,1195) TransactionUID is missing", states.TRANSACTION_MISSING
        )
    return state, transaction


def _change_state(
    engine: Engine,
    orthanc: OrthancClient,
    caller: Caller,
    uid: str,
    body: dict[str, Any],
    review_after: timedelta,
) -> str | None:
    """Returns the Warning text of a request that asked for the state the work item is in."""
    state, transaction = _state_request(body)
    user, now = caller.user, caller.now
    with Session(engine) as session:
        workitem = states.find(session, uid, user, now, to_change=True)
        if state is WorkitemState.IN_PROGRESS:
            states.claim(session, workitem, user, transaction, now)
            return None
        performed = workitem.performer_id == user.id and workitem.transaction_uid == transaction
        if workitem.state is state and performed:  # asked again (its answer was lost): done
            completed = state is WorkitemState.COMPLETED
            return states.ALREADY_COMPLETED if completed else states.ALREADY_CANCELED
        if state is WorkitemState.CANCELED:
            if workitem.state is WorkitemState.SCHEDULED:
                raise states.WorkitemRefusal(
                    409,
                    "a SCHEDULED work item is not claimed: ask for its cancel with"
                    " POST /dicom-web/workitems/{uid}/cancelrequest",
                    states.NOT_CLAIMED,
                )
            states.cancel(session, workitem, user, transaction, now)
            return None
        states.check_owner(workitem, user, transaction)
        study = session.get(Study, workitem.study_id)
        study_uid = study.study_instance_uid if study is not None else ""
        dataset, version = workitem.dataset, workitem.version
    # Orthanc is read outside any transaction; the work item must not have changed meanwhile.
    reports = stored_reports(orthanc, study_uid, dataset)
    with Session(engine) as session:
        workitem = states.find(session, uid, user, now, to_change=True)
        if workitem.version != version:
            raise states.WorkitemRefusal(
                409,
                "the work item changed while its results were read: complete it again",
                states.STATE_INCONSISTENT,
            )
        states.complete(session, workitem, user, transaction, reports, now, review_after)
    return None


@router.put(PREFIX + "/{uid}/state", include_in_schema=False)
async def change_workitem_state(
    request: Request,
    uid: str,
    caller: CallerDep,
    engine: EngineDep,
    orthanc: OrthancDep,
    front: FrontDep,
    settings: SettingsDep,
) -> Response:
    body = await read_body(request)
    review_after = timedelta(minutes=settings.ai_review_minutes)
    try:
        warning = await asyncio.to_thread(
            _change_state, engine, orthanc, caller, uid, body, review_after
        )
    finally:
        # Completed or canceled: the performer's cached access to the study ends now on this
        # node (10 s at most on the others; nginx keeps its own answer 10 s too).
        front.access.forget(caller.user.id or 0)
    headers = {"Warning": states.warning_header(warning)} if warning else None
    return Response(status_code=200, headers=headers)


def _cancel_request(engine: Engine, caller: Caller, uid: str, body: dict[str, Any]) -> str | None:
    reason = dicom_json.first_string(body, "00741238")  # Reason For Cancellation
    with Session(engine) as session:
        workitem = states.find(session, uid, caller.user, caller.now, to_change=True)
        return states.request_cancel(session, workitem, caller.user, reason, caller.now)


@router.post(PREFIX + "/{uid}/cancelrequest", include_in_schema=False)
async def request_workitem_cancel(
    request: Request, uid: str, caller: CallerDep, engine: EngineDep
) -> Response:
    body = await read_body(request)
    warning = await asyncio.to_thread(_cancel_request, engine, caller, uid, body)
    headers = {"Warning": states.warning_header(warning)} if warning else None
    return Response(status_code=202, headers=headers)


# --- subscriptions -----------------------------------------------------------------------------


@router.api_route(
    PREFIX + "/{uid}/subscribers/{aet}", methods=["POST", "DELETE"], include_in_schema=False
)
@router.post(PREFIX + "/{uid}/subscribers/{aet}/suspend", include_in_schema=False)
async def subscribe(caller: CallerDep) -> Response:
    del caller
    raise states.WorkitemRefusal(501, SUBSCRIPTIONS_REFUSED)
