"""What the reports API (sidecar.reports.router) and the report editor page
(sidecar.web.study_page) do, each as one transaction: the operation (sidecar.reports.service),
the result queued for the hospital (sidecar.results.service) in the same transaction, then
`commit`, which wakes the result outbox. One rule for both; the callers only read their input.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from sidecar.accounts.models import User
from sidecar.core.errors import InvalidRequest
from sidecar.reports import service as reports
from sidecar.reports.models import AmendmentKind, RadiologyReport
from sidecar.reports.templates import ReportTemplate
from sidecar.results import service as results
from sidecar.results.outbox import ResultOutbox
from sidecar.results.routing import ResultRouting
from sidecar.studies.models import Study


def template_sections(session: Session, template_id: int) -> dict[str, str]:
    template = session.get(ReportTemplate, template_id)
    if template is None:
        raise InvalidRequest(f"templateId: report template {template_id} not found")
    return dict(template.sections)


def create(
    session: Session,
    study: Study,
    author: User,
    sections: dict[str, Any],
    routing: ResultRouting,
    *,
    template_id: int | None = None,
) -> RadiologyReport:
    """A draft on the study (claiming it when nobody holds it), from a template's sections if
    named, the sections given winning over the template's."""
    values = dict(sections)
    if template_id is not None:
        values = {**template_sections(session, template_id), **values}
    report = reports.create_report(session, study, author, values, template_id=template_id)
    _queue_result(routing, session, report, author)
    return report


def update(
    session: Session,
    report: RadiologyReport,
    sections: dict[str, Any],
    author: User,
    routing: ResultRouting,
    *,
    expected_version: int | None,
) -> RadiologyReport:
    reports.update_report(
        session, report, sections, actor=author, expected_version=expected_version
    )
    _queue_result(routing, session, report, author)
    return report


def sign(
    session: Session,
    report: RadiologyReport,
    signer: User,
    routing: ResultRouting,
    *,
    expected_version: int | None,
) -> RadiologyReport:
    reports.sign_report(session, report, signer, expected_version=expected_version)
    _queue_result(routing, session, report, signer)
    return report


def amend(
    session: Session,
    report: RadiologyReport,
    signer: User,
    sections: dict[str, Any],
    routing: ResultRouting,
    *,
    kind: AmendmentKind,
    reason: str,
    expected_version: int | None,
) -> RadiologyReport:
    reports.amend_report(
        session,
        report,
        signer,
        sections,
        kind=kind,
        reason=reason,
        expected_version=expected_version,
    )
    _queue_result(routing, session, report, signer)
    return report


def save(
    session: Session,
    study: Study,
    author: User,
    sections: dict[str, Any],
    routing: ResultRouting,
    *,
    expected_version: int | None,
) -> RadiologyReport:
    """The editor's text saved as the study's draft: a new report when the editor had none
    (`expected_version` None; one started meanwhile answers 409), else an update of the version
    it read (a stale one answers 409)."""
    assert study.id is not None
    if expected_version is None:
        return create(session, study, author, sections, routing)
    report = reports.active_report(session, study.id)
    if report is None:
        raise reports.StaleReport(
            f"the report of study {study.id} was deleted since you read it: save it again "
            "to start a new one"
        )
    return update(session, report, sections, author, routing, expected_version=expected_version)


def save_and_sign(
    session: Session,
    study: Study,
    author: User,
    sections: dict[str, Any],
    routing: ResultRouting,
    *,
    expected_version: int | None,
) -> RadiologyReport:
    """ "Sign" in the editor: the text it shows saved (as `save`) and signed, in one
    transaction: either both happen or neither."""
    report = save(session, study, author, sections, routing, expected_version=expected_version)
    session.flush()
    return sign(session, report, author, routing, expected_version=None)


def commit(session: Session, report: RadiologyReport, outbox: ResultOutbox | None) -> None:
    session.commit()
    session.refresh(report)
    if outbox is not None:
        outbox.wake()


def _queue_result(
    routing: ResultRouting, session: Session, report: RadiologyReport, user: User
) -> None:
    session.flush()
    results.queue_result(session, report, routing, actor=user.username)
