"""What a work item's performer and its requesters may do to it (PS3.4 CC.1.1, the UPS state
machine), and what each change does to the analysis task it carries.

    SCHEDULED --claim (IN PROGRESS + a new Transaction UID)--> IN PROGRESS
    IN PROGRESS --COMPLETED (its Transaction UID; its report stored in the study)--> COMPLETED
    IN PROGRESS --CANCELED (its Transaction UID)--> CANCELED
    SCHEDULED --cancel request--> CANCELED
    IN PROGRESS --silent for AI_CLAIM_TIMEOUT_MINUTES--> SCHEDULED (released, sidecar.analyses
                                                                   .claim_timeout)

The Transaction UID is the performer's proof of ownership: kept in its own column, asked back
for every change, never shown. The account that claimed is the only one it works for.

Each change is one transaction, with the task and the analysis, and is decided on the row's
version (as the models say): of two claims at once, or a claim and a release, one wins and the
other is answered 409, as a claim of a work item already claimed is.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_
from sqlalchemy.orm.exc import StaleDataError
from sqlmodel import Session, col, select

from sidecar.access.care_scope import CareScope
from sidecar.accounts.models import Role, User
from sidecar.analyses import dicom_json
from sidecar.analyses.findings import AnalyzerFinding
from sidecar.analyses.models import (
    ENDED,
    AnalysisStatus,
    AnalysisTask,
    Workitem,
    WorkitemState,
)
from sidecar.analyses.status import complete_task, end_task, start_task
from sidecar.analyses.workitems import dicom_datetime
from sidecar.core import audit
from sidecar.core.errors import Refusal
from sidecar.studies.models import Study

PROCEDURE_STEP_STATE = "00741000"
TRANSACTION_UID = "00081195"
PROGRESS_INFORMATION = "00741002"
PERFORMED_PROCEDURE = "00741216"
OUTPUT_INFORMATION = "00404033"
#: What a performer may set with an update (N-SET): its progress, what it performed and what it
#: produced. Everything else the sidecar wrote and keeps.
UPDATABLE = frozenset({PROGRESS_INFORMATION, PERFORMED_PROCEDURE, OUTPUT_INFORMATION, "00080005"})
#: Roles that follow the work items (search, retrieve, ask a cancel) without performing them.
REQUESTER_ROLES = frozenset({Role.ADMIN, Role.RADIOLOGIST})
#: Who cancels a work item whose study's images are gone.
CANCEL_ACTOR = "system:ai-analysis"

# PS3.18 11.6.3.2, 11.7.3.2, 11.8.3.2: the Warning header's texts.
NOT_CLAIMED = "The target URI did not reference a claimed Workitem."
INCONSISTENT = "The submitted request is inconsistent with the current state of the Workitem."
TRANSACTION_MISSING = "The Transaction UID is missing."
TRANSACTION_INCORRECT = "The Transaction UID is incorrect."
STATE_INCONSISTENT = "The submitted request is inconsistent with the state of the UPS Instance."
ALREADY_CANCELED = "The UPS is already in the requested state of CANCELED."
ALREADY_COMPLETED = "The UPS is already in the requested state of COMPLETED."


WARNING_AGENT = "sidecar"
_CODES = {
    400: "bad_request",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    501: "not_implemented",
}


class WorkitemRefusal(Refusal):
    """A refusal with the Warning header PS3.18 asks for, when it asks for one."""

    def __init__(self, status: int, message: str, warning: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status
        self.code = _CODES.get(status, "conflict")
        self.warning = warning
        if warning:
            self.headers["Warning"] = warning_header(warning)


def warning_header(text: str) -> str:
    """PS3.18's form, `299 <service>: <text>`, the service named as the sidecar."""
    return f"299 {WARNING_AGENT}: {text}"


@dataclass(frozen=True)
class StoredReport:
    """A Structured Report the performer stored in the study, read back."""

    sop_instance_uid: str
    findings: list[AnalyzerFinding]


def visible(user: User, now: datetime) -> list[Any]:
    """Conditions on Workitem: what the user may search and retrieve. An analyzer: every
    SCHEDULED work item (any may claim one) and those it performs or performed; a requester:
    those of the studies in its reach."""
    if user.role is Role.ANALYZER:
        return [
            or_(
                col(Workitem.state) == WorkitemState.SCHEDULED,
                col(Workitem.performer_id) == user.id,
            )
        ]
    if user.role in REQUESTER_ROLES:
        return CareScope(user, now).workitems()
    raise WorkitemRefusal(
        403, "work items are for analyzer accounts, administrators and radiologists"
    )


def find(
    session: Session, uid: str, user: User, now: datetime, *, to_change: bool = False
) -> Workitem:
    """The work item, if the user may see it. To change one, an analyzer may name any (it saw
    it SCHEDULED): a claim of one another analyzer holds is a conflict (409), not unknown, and
    the Transaction UID decides the rest."""
    conditions = visible(user, now)
    if to_change and user.role is Role.ANALYZER:
        conditions = []
    workitem = session.exec(
        select(Workitem).where(Workitem.sop_instance_uid == uid, *conditions)
    ).first()
    if workitem is None:
        raise WorkitemRefusal(404, "no such work item")
    return workitem


def set_state(workitem: Workitem, state: WorkitemState, now: datetime) -> dict[str, Any]:
    dataset = copy.deepcopy(workitem.dataset)
    dataset[PROCEDURE_STEP_STATE] = dicom_json.string_element("CS", state.value)
    workitem.state = state
    workitem.updated_at = now
    return dataset


def _task(session: Session, workitem: Workitem) -> AnalysisTask:
    task = session.get(AnalysisTask, workitem.task_id)
    if task is None:  # a work item carries its task (foreign key)
        raise LookupError(f"task {workitem.task_id} of work item {workitem.id} not found")
    return task


def _changed() -> WorkitemRefusal:
    return WorkitemRefusal(409, "the work item changed meanwhile: retrieve it again", INCONSISTENT)


@contextmanager
def _decided(session: Session, lost_race: WorkitemRefusal) -> Iterator[None]:
    """Commits what the block changed; a row changed meanwhile (its version moved on, at a
    flush inside the block or at the commit) answers `lost_race`, nothing written."""
    try:
        yield
        session.commit()
    except StaleDataError:
        session.rollback()
        raise lost_race from None


def claim(
    session: Session, workitem: Workitem, user: User, transaction_uid: str, now: datetime
) -> None:
    """IN PROGRESS for this analyzer under its new Transaction UID; the task IN_PROGRESS."""
    if user.role is not Role.ANALYZER:
        raise WorkitemRefusal(403, "only an analyzer account claims a work item")
    if workitem.state is not WorkitemState.SCHEDULED:
        raise WorkitemRefusal(
            409,
            f"the work item is {workitem.state.value}: only a SCHEDULED one is claimed",
            STATE_INCONSISTENT,
        )
    task = _task(session, workitem)
    if task.status in ENDED:
        raise WorkitemRefusal(409, f"its analysis task is {task.status.value}", STATE_INCONSISTENT)
    study = session.get(Study, workitem.study_id)
    if study is None or study.removed_at is not None or study.images_deleted_at is not None:
        # Its study's images were deleted since it was scheduled: no analyzer could perform it,
        # and one holding it would never complete. It ends here, offered to no one again.
        problem = f"the images of study {workitem.study_id} are no longer stored"
        _end(session, workitem, now, f"not performed: {problem}", user, actor=CANCEL_ACTOR)
        raise WorkitemRefusal(409, f"the work item is canceled: {problem}", STATE_INCONSISTENT)
    with _decided(
        session, WorkitemRefusal(409, "another analyzer claimed it first", STATE_INCONSISTENT)
    ):
        dataset = set_state(workitem, WorkitemState.IN_PROGRESS, now)
        workitem.dataset = dataset
        workitem.transaction_uid = transaction_uid
        workitem.performer_id = user.id
        workitem.claimed_at = workitem.performer_seen_at = now
        session.add(workitem)
        task.attempts += 1
        start_task(session, task, now)
        audit.record(
            session,
            actor=user.username,
            action="workitem.claimed",
            entity_type="workitem",
            entity_id=workitem.id,
            task_id=task.id,
            analysis_id=task.analysis_id,
            role=user.role,
        )


def check_owner(
    workitem: Workitem, user: User, transaction_uid: str | None, *, not_claimed_status: int = 409
) -> None:
    """The request comes from the work item's performer, with its Transaction UID."""
    if workitem.state is not WorkitemState.IN_PROGRESS:
        raise WorkitemRefusal(
            not_claimed_status,
            f"the work item is {workitem.state.value}, not IN PROGRESS",
            NOT_CLAIMED if workitem.state is WorkitemState.SCHEDULED else INCONSISTENT,
        )
    if not transaction_uid:
        raise WorkitemRefusal(
            400,
            "send the Transaction UID (0008,1195) the work item was claimed with",
            TRANSACTION_MISSING,
        )
    if transaction_uid != workitem.transaction_uid or workitem.performer_id != user.id:
        raise WorkitemRefusal(
            400,
            "the Transaction UID is not the one the work item was claimed with",
            TRANSACTION_INCORRECT,
        )


def update(
    session: Session,
    workitem: Workitem,
    user: User,
    transaction_uid: str | None,
    changes: dict[str, Any],
    now: datetime,
) -> None:
    """The performer's N-SET: its progress, what it performed, its output information; a sign
    of life that keeps the claim."""
    if workitem.state in (WorkitemState.COMPLETED, WorkitemState.CANCELED):
        raise WorkitemRefusal(400, f"the work item is {workitem.state.value}", INCONSISTENT)
    check_owner(workitem, user, transaction_uid)
    refused = sorted(set(changes) - UPDATABLE - {TRANSACTION_UID})
    if refused:
        raise WorkitemRefusal(
            400,
            f"{dicom_json.name_of(refused[0])} is not set by an update: a performer sets"
            " (0074,1002) Procedure Step Progress Information Sequence, (0074,1216) Unified"
            " Procedure Step Performed Procedure Sequence and (0040,4033) Output Information"
            " Sequence; the state changes through PUT .../state",
        )
    with _decided(session, _changed()):
        dataset = copy.deepcopy(workitem.dataset)
        for tag in UPDATABLE & set(changes):
            dataset[tag] = changes[tag]
        workitem.dataset = dataset
        workitem.performer_seen_at = workitem.updated_at = now
        session.add(workitem)
        audit.record(
            session,
            actor=user.username,
            action="workitem.updated",
            entity_type="workitem",
            entity_id=workitem.id,
            attributes=sorted(UPDATABLE & set(changes)),
        )


def complete(
    session: Session,
    workitem: Workitem,
    user: User,
    transaction_uid: str,
    reports: Sequence[StoredReport],
    now: datetime,
    review_after: timedelta,
) -> None:
    """COMPLETED: its reports stored in the study (checked by the caller), their findings
    recorded, the task COMPLETED; a critical finding asks for review `review_after` from now
    (AI_REVIEW_MINUTES)."""
    check_owner(workitem, user, transaction_uid)
    if not reports:
        raise ValueError("a work item completes with its report")
    task = _task(session, workitem)
    if task.status in ENDED:
        raise WorkitemRefusal(409, f"its analysis task is {task.status.value}", INCONSISTENT)
    with _decided(session, _changed()):
        workitem.dataset = set_state(workitem, WorkitemState.COMPLETED, now)
        workitem.performer_seen_at = now
        session.add(workitem)
        findings = [finding for report in reports for finding in report.findings]
        complete_task(
            session, task, findings, reports[0].sop_instance_uid, now, review_after=review_after
        )
        audit.record(
            session,
            actor=user.username,
            action="workitem.completed",
            entity_type="workitem",
            entity_id=workitem.id,
            task_id=task.id,
            analysis_id=task.analysis_id,
            reports=[report.sop_instance_uid for report in reports],
            findings=len(findings),
        )


def cancel(
    session: Session, workitem: Workitem, user: User, transaction_uid: str, now: datetime
) -> None:
    """CANCELED by its performer: the task CANCELED."""
    check_owner(workitem, user, transaction_uid)
    _end(session, workitem, now, f"canceled by its analyzer ({user.username})", user)


def _end(
    session: Session,
    workitem: Workitem,
    now: datetime,
    reason: str,
    user: User,
    *,
    actor: str | None = None,
) -> None:
    task = _task(session, workitem)
    with _decided(session, _changed()):
        workitem.dataset = set_state(workitem, WorkitemState.CANCELED, now)
        session.add(workitem)
        if task.status not in ENDED:
            end_task(session, task, AnalysisStatus.CANCELED, reason, now)
        audit.record(
            session,
            actor=actor or user.username,
            action="workitem.canceled",
            entity_type="workitem",
            entity_id=workitem.id,
            task_id=task.id,
            analysis_id=task.analysis_id,
        )


def request_cancel(
    session: Session, workitem: Workitem, user: User, reason: str | None, now: datetime
) -> str | None:
    """A requester (or the performer) asks for a cancel: a SCHEDULED work item is CANCELED at
    once; an IN PROGRESS one records the request for its performer (told on the event stream),
    who decides. Returns the Warning text, if any."""
    if user.role is Role.ANALYZER and workitem.performer_id != user.id:
        raise WorkitemRefusal(403, "an analyzer asks to cancel only the work items it performs")
    if workitem.state is WorkitemState.CANCELED:
        return ALREADY_CANCELED
    if workitem.state is WorkitemState.COMPLETED:
        raise WorkitemRefusal(409, "the work item is COMPLETED", INCONSISTENT)
    if workitem.state is WorkitemState.SCHEDULED:
        _end(session, workitem, now, f"canceled on request of {user.username}", user)
        return None
    with _decided(session, _changed()):
        dataset = copy.deepcopy(workitem.dataset)
        request = {
            "00404052": dicom_json.string_element("DT", dicom_datetime(now)),  # cancellation asked
            "00741238": dicom_json.string_element("LT", *([reason] if reason else [])),
            "0074100A": dicom_json.string_element("LO", user.username[:64]),  # contact
        }
        progress = dicom_json.items(dataset, PROGRESS_INFORMATION)
        dataset[PROGRESS_INFORMATION] = {"vr": "SQ", "Value": [*(progress[:1] or [{}])]}
        dataset[PROGRESS_INFORMATION]["Value"][0].update(request)
        workitem.dataset = dataset
        workitem.updated_at = now
        session.add(workitem)
        audit.record(
            session,
            actor=user.username,
            action="workitem.cancel_requested",
            entity_type="workitem",
            entity_id=workitem.id,
            task_id=workitem.task_id,
            role=user.role,
        )
    return None
