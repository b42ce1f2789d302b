"""Radiology reports: write, sign, amend, discard. One set of operations; the caller commits.

The study follows its report (COMPLETED -> PRELIMINARY while a draft exists -> FINAL once signed)
and every change is audited in the same transaction. What the hospital receives is decided in
`sidecar.results.service`: the outbox row for a result is added to the same transaction as the
signature, so a signed report is never without its queued result.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, col, select

from sidecar.access.care_scope import CareScope
from sidecar.accounts.models import User
from sidecar.core import audit
from sidecar.core.errors import ConflictingState, InvalidRequest, UnknownRecord
from sidecar.core.models import utcnow
from sidecar.core.workflow import move
from sidecar.operations import metrics
from sidecar.reading import holder as reading_holder
from sidecar.reports.models import (
    REPORT_WORKFLOW,
    SECTIONS,
    AmendmentKind,
    RadiologyReport,
    ReportRevision,
    ReportStatus,
)
from sidecar.reports.templates import unfilled_fields
from sidecar.studies import registry as study_registry
from sidecar.studies.models import Study, StudyStatus


class ReportConflict(ConflictingState):
    """The report or its study is not in a state that allows the change (HTTP 409)."""


class StaleReport(ReportConflict):
    """The client wrote from a version that is no longer current."""


class IncompleteReport(InvalidRequest):
    """Signing needs an impression or findings (HTTP 400)."""


def get_report(session: Session, report_id: int) -> RadiologyReport:
    """The report, 404 when unknown or discarded."""
    report = session.get(RadiologyReport, report_id)
    if report is None or report.deleted_at is not None:
        raise UnknownRecord(f"report {report_id} not found")
    return report


def readable_report(session: Session, report_id: int, scope: CareScope) -> RadiologyReport:
    """The report, when the caller may read it (the API's and the results page's rule)."""
    report = get_report(session, report_id)
    if (
        scope.limited
        and not session.exec(
            select(RadiologyReport.id).where(RadiologyReport.id == report_id, *scope.reports())
        ).first()
    ):
        # Not "forbidden": whether a report exists is itself not theirs to know.
        raise UnknownRecord(f"report {report_id} not found")
    return report


def active_report(session: Session, study_id: int) -> RadiologyReport | None:
    return session.exec(
        select(RadiologyReport).where(
            RadiologyReport.study_id == study_id, col(RadiologyReport.deleted_at).is_(None)
        )
    ).first()


def create_report(
    session: Session,
    study: Study,
    author: User,
    sections: dict[str, Any],
    *,
    template_id: int | None = None,
) -> RadiologyReport:
    """A preliminary report on a study whose images have arrived; one report per study."""
    existing = active_report(session, _id(study))
    if existing is not None:
        raise ReportConflict(
            f"study {study.id} already has report {existing.id}: edit or amend that one"
        )
    if StudyStatus(study.status) != StudyStatus.COMPLETED:
        raise ReportConflict(
            f"study {study.id} is {study.status.value}: a report is written once its images "
            "have arrived (status COMPLETED)"
        )
    # The study's reader writes it: held by another radiologist, 409 naming them.
    reading_holder.claim_for_report(session, study, author, now=utcnow())
    report = RadiologyReport(
        study_id=_id(study),
        order_id=study.order_id,
        radiologist_id=_id(author),
        **_sections(sections),
    )
    session.add(report)
    session.flush()
    study_registry.change_status(session, study, StudyStatus.PRELIMINARY, actor=author.username)
    audit.record(
        session,
        actor=author.username,
        action="report.created",
        entity_type="report",
        entity_id=report.id,
        study_id=study.id,
        sections=sorted(k for k, v in _sections(sections).items() if v),
        **({"template_id": template_id} if template_id is not None else {}),
    )
    return report


def update_report(
    session: Session,
    report: RadiologyReport,
    sections: dict[str, Any],
    *,
    actor: User,
    expected_version: int | None,
) -> RadiologyReport:
    """Edits a preliminary report's sections; a signed report never changes (amend it)."""
    check_version(report, expected_version)
    reading_holder.check_may_report(session, report.study_id, actor)
    if ReportStatus(report.status) != ReportStatus.PRELIMINARY:
        raise ReportConflict(
            f"report {report.id} is {report.status.value}: a signed report is never edited; "
            "amend it (POST /api/reports/{id}/amend)"
        )
    changed = _sections(sections)
    for name, value in changed.items():
        setattr(report, name, value)
    report.updated_at = utcnow()
    session.add(report)
    audit.record(
        session,
        actor=actor.username,
        action="report.updated",
        entity_type="report",
        entity_id=report.id,
        sections=sorted(changed),
    )
    return report


def sign_report(
    session: Session, report: RadiologyReport, signer: User, *, expected_version: int | None
) -> ReportRevision:
    """PRELIMINARY -> FINAL: the text becomes revision 1, and the study FINAL."""
    check_version(report, expected_version)
    REPORT_WORKFLOW.check(ReportStatus(report.status), ReportStatus.FINAL)
    reading_holder.check_may_report(session, report.study_id, signer)
    if not (report.impression or "").strip() and not (report.findings or "").strip():
        raise IncompleteReport(f"report {report.id} has neither findings nor an impression")
    check_filled(report)
    revision = _sign(session, report, signer, ReportStatus.FINAL, reason=None)
    study = session.get(Study, report.study_id)
    assert study is not None
    # The study may have been matched to its order after the draft was started.
    report.order_id = report.order_id or study.order_id
    if study.status != StudyStatus.FINAL:
        study_registry.change_status(session, study, StudyStatus.FINAL, actor=signer.username)
    audit.record(
        session,
        actor=signer.username,
        action="report.signed",
        entity_type="report",
        entity_id=report.id,
        revision=revision.revision,
        study_id=report.study_id,
    )
    reading = reading_holder.reading_of(session, report.study_id)  # ready to read since when
    ready_at = (reading.ready_at if reading else None) or study.images_received_at
    metrics.report_signed(session, study.priority, ready_at, revision.signed_at)
    return revision


def amend_report(
    session: Session,
    report: RadiologyReport,
    signer: User,
    sections: dict[str, Any],
    *,
    kind: AmendmentKind,
    reason: str,
    expected_version: int | None,
) -> ReportRevision:
    """A signed report gets a new signed revision; the earlier ones stay as they were."""
    check_version(report, expected_version)
    target = ReportStatus(kind.value)
    REPORT_WORKFLOW.check(ReportStatus(report.status), target)
    changed = _sections(sections)
    if not changed:
        raise IncompleteReport("an amendment needs at least one changed section")
    for name, value in changed.items():
        setattr(report, name, value)
    check_filled(report)
    report.amendment_required_reason = None  # the amendment answers it
    revision = _sign(session, report, signer, target, reason=reason)
    audit.record(
        session,
        actor=signer.username,
        action="report.amended",
        entity_type="report",
        entity_id=report.id,
        revision=revision.revision,
        kind=kind,
        sections=sorted(changed),
    )
    return revision


def discard_report(
    session: Session, report: RadiologyReport, actor: User, *, expected_version: int | None
) -> None:
    """Deletes a preliminary report: the row and its trail stay, the study is to be read again."""
    check_version(report, expected_version)
    if ReportStatus(report.status) != ReportStatus.PRELIMINARY:
        raise ReportConflict(
            f"report {report.id} is {report.status.value}: only a preliminary report can be "
            "deleted; a signed one is amended"
        )
    report.deleted_at = utcnow()
    report.updated_at = report.deleted_at
    session.add(report)
    study = session.get(Study, report.study_id)
    assert study is not None
    study_registry.change_status(session, study, StudyStatus.COMPLETED, actor=actor.username)
    audit.record(
        session,
        actor=actor.username,
        action="report.deleted",
        entity_type="report",
        entity_id=report.id,
        study_id=report.study_id,
    )


def revisions(session: Session, report_id: int) -> list[ReportRevision]:
    return list(
        session.exec(
            select(ReportRevision)
            .where(ReportRevision.report_id == report_id)
            .order_by(col(ReportRevision.revision))
        ).all()
    )


def check_filled(report: RadiologyReport) -> None:
    """A report started from a template is signed only once every `[[field]]` is filled in."""
    left = unfilled_fields({name: getattr(report, name) for name in SECTIONS})
    if left:
        raise ReportConflict(
            f"report {report.id} still has template fields to fill: {', '.join(left)}"
        )


def check_version(report: RadiologyReport, expected: int | None) -> None:
    """A client that says which version it read is refused when that is no longer current.
    (Without one, the UPDATE's own version check still refuses a write lost in a race.)"""
    if expected is not None and expected != report.version:
        raise StaleReport(
            f"report {report.id} is at version {report.version}, not {expected}: "
            "someone changed it since you read it; reload and apply your change again"
        )


def _sign(
    session: Session,
    report: RadiologyReport,
    signer: User,
    status: ReportStatus,
    *,
    reason: str | None,
) -> ReportRevision:
    now = utcnow()
    # Audited by the caller as report.signed or report.amended, with the revision.
    move(session, report, REPORT_WORKFLOW, status, actor=signer.username, audited=False, at=now)
    report.revision += 1
    report.signed_at = now
    report.signed_by_id = signer.id
    report.updated_at = now
    session.add(report)
    revision = ReportRevision(
        report_id=_id(report),
        revision=report.revision,
        status=status,
        signed_by_id=_id(signer),
        signed_at=now,
        reason=reason,
        **{name: getattr(report, name) for name in SECTIONS},
    )
    session.add(revision)
    return revision


def _sections(values: dict[str, Any]) -> dict[str, Any]:
    return {name: values[name] for name in SECTIONS if name in values}


def _id(row: Study | User | RadiologyReport) -> int:
    assert row.id is not None
    return row.id
