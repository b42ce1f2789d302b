"""A report as a PDF (issue 14, item 7), drawn with fpdf2: the department, patient, exam and
order, each section, the signature block, the amendment history, and each critical finding with
its communication record (who was told, when, the read-back).

fpdf2 is pure Python (its dependencies, Pillow, fontTools and defusedxml, install as wheels),
maintained, and draws text PDFs that any reader extracts text from. Its built-in Helvetica
covers Latin-1: other characters are drawn as "?" (a known limit of this rendering; the report's
text itself is unchanged).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from fpdf import FPDF
from fpdf.enums import XPos, YPos
from sqlalchemy import or_
from sqlmodel import Session, col, select

from sidecar.accounts.models import User
from sidecar.findings.models import CriticalFinding, FindingNotification
from sidecar.orders.models import ImagingOrder
from sidecar.reports.models import SECTIONS, RadiologyReport, ReportRevision, ReportStatus
from sidecar.reports.rendering import person_name
from sidecar.studies.models import Study

_TITLES = {
    "technique": "Technique",
    "comparison": "Comparison",
    "findings": "Findings",
    "impression": "Impression",
    "recommendations": "Recommendations",
}


@dataclass(frozen=True)
class FindingRecord:
    """A critical finding and whom it was sent to."""

    finding: CriticalFinding
    raised_by: str
    notifications: Sequence[FindingNotification] = ()


@dataclass(frozen=True)
class ReportDocument:
    """Everything the PDF shows, gathered by the caller."""

    department: str
    report: RadiologyReport
    study: Study
    order: ImagingOrder | None
    signer: User | None
    revisions: Sequence[ReportRevision] = ()
    # User id -> user name, for the revisions' signers.
    names: dict[int, str] = field(default_factory=dict)
    findings: Sequence[FindingRecord] = ()


def gather(session: Session, report: RadiologyReport, department: str) -> ReportDocument:
    """What the PDF of `report` shows, read in one session."""
    study = session.get(Study, report.study_id)
    assert study is not None
    revisions = list(
        session.exec(
            select(ReportRevision)
            .where(ReportRevision.report_id == report.id)
            .order_by(col(ReportRevision.revision))
        )
    )
    findings = list(
        session.exec(
            select(CriticalFinding)
            .where(
                or_(
                    col(CriticalFinding.report_id) == report.id,
                    col(CriticalFinding.study_id) == report.study_id,
                )
            )
            .order_by(col(CriticalFinding.id))
        )
    )
    user_ids = {r.signed_by_id for r in revisions} | {f.raised_by_id for f in findings}
    if report.signed_by_id:
        user_ids.add(report.signed_by_id)
    users = {u.id: u for u in session.exec(select(User).where(col(User.id).in_(user_ids)))}
    names = {user_id: user.username for user_id, user in users.items() if user_id is not None}
    records = [
        FindingRecord(
            finding=finding,
            raised_by=names.get(finding.raised_by_id, f"user {finding.raised_by_id}"),
            notifications=list(
                session.exec(
                    select(FindingNotification)
                    .where(FindingNotification.finding_id == finding.id)
                    .order_by(col(FindingNotification.id))
                )
            ),
        )
        for finding in findings
    ]
    return ReportDocument(
        department=department,
        report=report,
        study=study,
        order=session.get(ImagingOrder, report.order_id) if report.order_id else None,
        signer=users.get(report.signed_by_id) if report.signed_by_id else None,
        revisions=revisions,
        names=names,
        findings=records,
    )


def render_pdf(document: ReportDocument) -> bytes:
    pdf = _Page()
    # Dated by the report, not the clock: the same report state gives the same bytes (the
    # PDF embedded in its ORU is the one the API renders).
    report = document.report
    pdf.set_creation_date(report.signed_at or report.updated_at or report.created_at)
    pdf.set_title(f"Radiology report {document.report.id}")
    pdf.set_creator("radiology-integration sidecar")
    pdf.add_page()
    pdf.heading(document.department, size=16)
    pdf.heading(f"Radiology report {document.report.id}", size=12)
    pdf.table_of("Patient", _patient(document))
    pdf.table_of("Exam", _exam(document))
    if document.order is not None:
        pdf.table_of("Order", _order(document.order))
    for name in SECTIONS:
        text = (getattr(document.report, name) or "").strip()
        if text:
            pdf.heading(_TITLES[name], size=11)
            pdf.paragraph(text)
    pdf.heading("Signature", size=11)
    pdf.paragraph(_signature(document))
    if document.revisions:
        pdf.heading("Amendment history", size=11)
        for revision in document.revisions:
            who = document.names.get(revision.signed_by_id, f"user {revision.signed_by_id}")
            line = (
                f"Revision {revision.revision} ({revision.status.value}) signed by {who} "
                f"on {_when(revision.signed_at)}"
            )
            if revision.reason:
                line += f". Reason: {revision.reason}"
            pdf.paragraph(line)
    for record in document.findings:
        _finding(pdf, record)
    return bytes(pdf.output())


class _Page(FPDF):
    def __init__(self) -> None:
        super().__init__(format="A4")
        self.set_auto_page_break(auto=True, margin=15)
        self.set_margins(18, 15, 18)

    def heading(self, text: str, *, size: int) -> None:
        self.set_font("Helvetica", "B", size)
        self.ln(2)
        self.multi_cell(0, size * 0.55, _latin1(text), new_x=XPos.LMARGIN, new_y=YPos.NEXT)

    def paragraph(self, text: str) -> None:
        self.set_font("Helvetica", "", 10)
        self.multi_cell(0, 5, _latin1(text), new_x=XPos.LMARGIN, new_y=YPos.NEXT)

    def table_of(self, title: str, rows: list[tuple[str, str]]) -> None:
        rows = [(label, value) for label, value in rows if value]
        if not rows:
            return
        self.heading(title, size=11)
        for label, value in rows:
            self.set_font("Helvetica", "B", 10)
            self.cell(45, 5, _latin1(label))
            self.set_font("Helvetica", "", 10)
            self.multi_cell(0, 5, _latin1(value), new_x=XPos.LMARGIN, new_y=YPos.NEXT)

    def footer(self) -> None:
        self.set_y(-12)
        self.set_font("Helvetica", "", 8)
        self.cell(0, 5, f"Page {self.page_no()}", align="C")


def _patient(document: ReportDocument) -> list[tuple[str, str]]:
    study, order = document.study, document.order
    return [
        ("Name", person_name(study.patient_name or (order.patient_name if order else None))),
        ("Patient ID", study.patient_id or (order.patient_id if order else "") or ""),
        ("Issuer", study.issuer_of_patient_id or ""),
        ("Birth date", str(study.patient_birth_date or "")),
        ("Sex", study.patient_sex or ""),
    ]


def _exam(document: ReportDocument) -> list[tuple[str, str]]:
    study = document.study
    return [
        ("Accession number", study.accession_number or ""),
        ("Study", study.study_description or ""),
        ("Modalities", study.modalities.replace(",", ", ")),
        ("Body part", study.body_part or ""),
        ("Study date", str(study.study_date or "")),
        ("Study Instance UID", study.study_instance_uid),
    ]


def _order(order: ImagingOrder) -> list[tuple[str, str]]:
    procedure = " ".join(p for p in (order.procedure_code, order.procedure_description) if p)
    return [
        ("Order", f"{order.id} (accession {order.accession_number})"),
        ("Procedure", procedure),
        ("Priority", order.priority.value),
        ("Ordering provider", person_name(order.ordering_provider)),
        ("Referring physician", person_name(order.referring_physician)),
        ("Clinical indication", order.clinical_indication or ""),
    ]


def _signature(document: ReportDocument) -> str:
    report, signer = document.report, document.signer
    if report.signed_at is None or signer is None:
        return "PRELIMINARY: not signed"
    line = f"Signed by {signer.username} on {_when(report.signed_at)}"
    if ReportStatus(report.status) != ReportStatus.FINAL:
        line += f" (revision {report.revision}, {report.status.value.lower()})"
    return line


def _finding(pdf: _Page, record: FindingRecord) -> None:
    finding = record.finding
    pdf.heading(f"Critical finding {finding.id} ({finding.severity.value})", size=11)
    pdf.paragraph(finding.description)
    if finding.recommendation:
        pdf.paragraph(f"Recommendation: {finding.recommendation}")
    pdf.paragraph(
        f"Raised by {record.raised_by} on {_when(finding.created_at)}; {finding.status.value}"
    )
    for sent in record.notifications:
        delivered = (
            f"delivered {_when(sent.delivered_at)}" if sent.delivered_at else sent.status.value
        )
        pdf.paragraph(
            f"Notified {sent.recipient or '(no recipient)'} ({sent.kind.value.lower()}, "
            f"level {sent.escalation_level}): {delivered}"
        )
    if finding.acknowledged_at is not None:
        method = finding.acknowledgement_method.value if finding.acknowledgement_method else ""
        pdf.paragraph(
            f"Communicated to {finding.acknowledged_by_name or 'the recipient'} on "
            f"{_when(finding.acknowledged_at)} ({method.lower().replace('_', ' ')}); "
            f"read-back {'confirmed' if finding.read_back_confirmed else 'not confirmed'}"
        )
        if finding.read_back_text:
            pdf.paragraph(f"Read back: {finding.read_back_text}")
    else:
        pdf.paragraph("Not yet acknowledged")


def _when(moment: datetime | None) -> str:
    return f"{moment:%Y-%m-%d %H:%M} UTC" if moment else ""


def _latin1(text: str) -> str:
    return text.encode("latin-1", "replace").decode("latin-1")
