"""What the study page shows (sidecar.web.study_page), read as the API reads it: the study as
GET /api/studies/{id} (sidecar.studies.lookup, care scope: 404 outside it), its order, the
patient's other studies the user may read, its critical findings (the findings API's scope),
its report (the reports API's scope: a physician sees signed reports only) and, for the
report's writers, the editor's state and the templates that suit the study."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, col, select

from sidecar.access.care_scope import CareScope
from sidecar.accounts.models import Role, User
from sidecar.findings.models import CriticalFinding, Severity
from sidecar.orders.models import ImagingOrder
from sidecar.reading import holder
from sidecar.reports import service as reports
from sidecar.reports.models import SECTIONS, AmendmentKind, RadiologyReport, ReportStatus
from sidecar.reports.templates import ReportTemplate, suggestions
from sidecar.studies.lookup import listed_studies, readable_study, study_detail
from sidecar.studies.models import Study
from sidecar.studies.thumbnails import representative_image
from sidecar.viewer.front import ViewerLinks

#: The editor's fields: each report section (sidecar.reports.models.SECTIONS) and its label.
SECTION_LABELS = {name: name.capitalize() for name in SECTIONS}
PRIORS_SHOWN = 20


def report_of(session: Session, study_id: int, scope: CareScope) -> RadiologyReport | None:
    """The study's report if the user may read it (the reports API's scope)."""
    return session.exec(
        select(RadiologyReport).where(
            RadiologyReport.study_id == study_id,
            col(RadiologyReport.deleted_at).is_(None),
            *scope.reports(),
        )
    ).first()


def may_write(user: User) -> bool:
    """Who writes, signs and amends reports and raises findings: the APIs' role."""
    return user.role is Role.RADIOLOGIST


def editor_of(report: RadiologyReport | None) -> dict[str, Any]:
    """The editor showing the report as saved (empty without one)."""
    texts = {name: (getattr(report, name) or "") if report else "" for name in SECTIONS}
    return {"sections": texts, "version": str(report.version) if report else ""}


def study_context(
    session: Session,
    user: User,
    scope: CareScope,
    links: ViewerLinks,
    study_id: int,
    *,
    editor: dict[str, Any] | None = None,
) -> dict[str, Any]:
    study = readable_study(session, study_id, scope)
    detail = study_detail(session, study, links)
    order = session.get(ImagingOrder, study.order_id) if study.order_id else None
    report = report_of(session, study_id, scope)
    writer = may_write(user)
    signed = report is not None and report.status is not ReportStatus.PRELIMINARY
    reading = holder.reading_of(session, study_id)
    reader = holder.active_holder(session, reading)
    return {
        "study": detail,
        "order": order,
        "priors": _priors(session, study, scope),
        "findings": list(
            session.exec(
                select(CriticalFinding)
                .where(CriticalFinding.study_id == study_id, *scope.findings())
                .order_by(col(CriticalFinding.created_at), col(CriticalFinding.id))
            )
        ),
        "has_thumbnail": representative_image(session, study_id) is not None,
        "report": report,
        "signed": signed,
        "revisions": reports.revisions(session, report.id) if report and report.id else [],
        "reader": reader,
        "may_write": writer,
        "editor": {"reason": "", "kind": "AMENDED", **editor_of(report), **(editor or {})},
        "labels": SECTION_LABELS,
        "templates": _templates(session, study, order) if writer and not signed else [],
        "severities": [s.value for s in Severity],
        "kinds": [k.value for k in AmendmentKind],
        "message": "",
        "message_ok": False,
        "saved_now": None,
        "finding_sent": {"severity": "", "description": "", "recommendation": ""},
        "finding_message": "",
        "finding_ok": False,
    }


def _priors(session: Session, study: Study, scope: CareScope) -> list[Study]:
    if not study.patient_id:
        return []
    return list(
        session.exec(
            select(Study)
            .where(
                Study.patient_id == study.patient_id,
                col(Study.issuer_of_patient_id).is_not_distinct_from(study.issuer_of_patient_id),
                Study.id != study.id,
                listed_studies(),
                *scope.studies(),
            )
            .order_by(col(Study.study_date).desc().nulls_last(), col(Study.id).desc())
            .limit(PRIORS_SHOWN)
        )
    )


def _templates(session: Session, study: Study, order: ImagingOrder | None) -> list[Any]:
    """Every template, those that suit the study first (GET /api/report-templates?studyId)."""
    every = list(session.exec(select(ReportTemplate).order_by(col(ReportTemplate.id))))
    suited = suggestions(every, study, order)
    chosen = {t.id for t in suited}
    return [(t, True) for t in suited] + [(t, False) for t in every if t.id not in chosen]
