"""A report as a clinician reads it: a header (patient, study, order), the sections, the
signature. Plain text for terminals and e-mail, HTML (escaped, no scripts) for browsers."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

from sidecar.accounts.models import User
from sidecar.orders.models import ImagingOrder
from sidecar.reports.models import SECTIONS, RadiologyReport, ReportStatus
from sidecar.studies.models import Study

_TITLES = {
    "technique": "Technique",
    "comparison": "Comparison",
    "findings": "Findings",
    "impression": "Impression",
    "recommendations": "Recommendations",
}


@dataclass(frozen=True)
class Rendering:
    title: str
    header: list[tuple[str, str]]
    sections: list[tuple[str, str]]
    signature: str


def person_name(name: str | None) -> str:
    """DICOM PN (FAMILY^GIVEN^MIDDLE^PREFIX^SUFFIX) as people write it: Prefix Given Family."""
    if not name:
        return ""
    family, given, middle, prefix, suffix = (name.split("^") + [""] * 5)[:5]
    return " ".join(p for p in (prefix, given, middle, family, suffix) if p)


def compose(
    report: RadiologyReport, study: Study, order: ImagingOrder | None, signer: User | None
) -> Rendering:
    status = ReportStatus(report.status)
    header = [
        ("Patient", person_name(study.patient_name or (order.patient_name if order else None))),
        ("Patient ID", study.patient_id or (order.patient_id if order else "") or ""),
        ("Birth date", str(study.patient_birth_date or "")),
        ("Accession number", study.accession_number or (order.accession_number if order else "")),
        ("Study", study.study_description or (order.procedure_description if order else "") or ""),
        ("Study date", str(study.study_date or "")),
        ("Referring physician", person_name(study.referring_physician)),
        ("Clinical indication", study.clinical_indication or ""),
        ("Report status", status.value),
    ]
    sections = [
        (_TITLES[name], text)
        for name in SECTIONS
        if (text := (getattr(report, name) or "").strip())
    ]
    if report.signed_at and signer is not None:
        signature = f"Signed by {signer.username} on {report.signed_at:%Y-%m-%d %H:%M} UTC"
        if report.revision > 1:
            signature += f" (revision {report.revision}, {status.value.lower()})"
    else:
        signature = "PRELIMINARY: not signed"
    return Rendering(
        title=f"Radiology report {report.id}",
        header=[(label, value) for label, value in header if value],
        sections=sections,
        signature=signature,
    )


def render_text(
    report: RadiologyReport, study: Study, order: ImagingOrder | None, signer: User | None
) -> str:
    rendering = compose(report, study, order, signer)
    lines = [rendering.title, "=" * len(rendering.title), ""]
    width = max((len(label) for label, _ in rendering.header), default=0)
    lines += [f"{label + ':':<{width + 1}} {value}" for label, value in rendering.header]
    for title, text in rendering.sections:
        lines += ["", title.upper(), text]
    lines += ["", rendering.signature, ""]
    return "\n".join(lines)


def render_html(
    report: RadiologyReport, study: Study, order: ImagingOrder | None, signer: User | None
) -> str:
    rendering = compose(report, study, order, signer)
    rows = "".join(
        f"<tr><th>{escape(label)}</th><td>{escape(value)}</td></tr>"
        for label, value in rendering.header
    )
    sections = "".join(
        f"<section><h2>{escape(title)}</h2><p>{escape(text).replace(chr(10), '<br>')}</p></section>"
        for title, text in rendering.sections
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(rendering.title)}</title></head><body>"
        f"<h1>{escape(rendering.title)}</h1><table>{rows}</table>{sections}"
        f"<p><em>{escape(rendering.signature)}</em></p></body></html>"
    )
