"""Report templates (issue 14, item 6): the text of each report section, with fields to fill
written `[[name]]`, for the studies a template applies to (modality, body part, procedure code).

A template applies to a study when every criterion it names matches (text compared without
case; the modality among the study's or its order's). Suggestions rank the more specific first:
a procedure code match over a body part over a modality, then the older template. A report
started from a template keeps the markers until the radiologist replaces them, and cannot be
signed while any is left (`unfilled_fields`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import ClassVar

from pydantic import Field as PydanticField
from pydantic import field_validator, model_validator
from sqlalchemy import JSON
from sqlmodel import Column, Field, SQLModel

from sidecar.core.models import ApiInput, ApiModel, UTCDateTime, split_multi, utcnow
from sidecar.orders.models import ImagingOrder
from sidecar.reports.models import SECTIONS
from sidecar.studies.models import ModalityCode, Study

#: A field to fill: `[[size]]`, `[[level of the lesion]]`.
FIELD = re.compile(r"\[\[([^\[\]\n]{1,64})\]\]")
_SECTION_MAX = 20000


class ReportTemplate(SQLModel, table=True):
    __tablename__ = "report_template"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=128)
    modality: str | None = Field(default=None, max_length=16)
    body_part: str | None = Field(default=None, max_length=64)
    procedure_code: str | None = Field(default=None, max_length=64)
    # Section name (one of SECTIONS) -> its text.
    sections: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False)
    )
    updated_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False)
    )


class TemplateSections(ApiInput):
    technique: str | None = PydanticField(default=None, max_length=_SECTION_MAX)
    comparison: str | None = PydanticField(default=None, max_length=_SECTION_MAX)
    findings: str | None = PydanticField(default=None, max_length=_SECTION_MAX)
    impression: str | None = PydanticField(default=None, max_length=_SECTION_MAX)
    recommendations: str | None = PydanticField(default=None, max_length=_SECTION_MAX)


class TemplateFields(ApiInput):
    name: str | None = PydanticField(default=None, min_length=1, max_length=128)
    modality: ModalityCode | None = None
    body_part: str | None = PydanticField(default=None, min_length=1, max_length=64)
    procedure_code: str | None = PydanticField(default=None, min_length=1, max_length=64)
    sections: TemplateSections | None = None


class TemplateCreate(TemplateFields):
    name: str = PydanticField(min_length=1, max_length=128)
    sections: TemplateSections

    @field_validator("sections")
    @classmethod
    def _some_text(cls, value: TemplateSections) -> TemplateSections:
        if not any((getattr(value, name) or "").strip() for name in SECTIONS):
            raise ValueError("a template needs the text of at least one section")
        return value


class TemplateUpdate(TemplateFields):
    not_nullable: ClassVar[frozenset[str]] = frozenset({"name", "sections"})

    @model_validator(mode="after")
    def _not_empty(self) -> TemplateUpdate:
        if not self.model_fields_set:
            raise ValueError("nothing to change: send at least one field")
        return self


class TemplatePublic(ApiModel):
    id: int
    name: str
    modality: str | None
    body_part: str | None
    procedure_code: str | None
    sections: dict[str, str]
    fields: list[str]  # the fields to fill, in order of appearance
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, template: ReportTemplate) -> TemplatePublic:
        assert template.id is not None
        return cls(
            id=template.id,
            name=template.name,
            modality=template.modality,
            body_part=template.body_part,
            procedure_code=template.procedure_code,
            sections=template.sections,
            fields=unfilled_fields(template.sections),
            created_at=template.created_at,
            updated_at=template.updated_at,
        )


def section_texts(sections: TemplateSections) -> dict[str, str]:
    return {name: text for name in SECTIONS if (text := getattr(sections, name))}


def unfilled_fields(sections: Mapping[str, str | None]) -> list[str]:
    """The `[[fields]]` left in these sections, each once, in reading order."""
    found: dict[str, None] = {}
    for name in SECTIONS:
        for match in FIELD.finditer(sections.get(name) or ""):
            found.setdefault(match.group(1).strip(), None)
    return list(found)


def match_score(template: ReportTemplate, study: Study, order: ImagingOrder | None) -> int | None:
    """How specifically the template fits the study (higher first); None: it does not."""
    score = 0
    if template.procedure_code:
        code = order.procedure_code if order else None
        if (code or "").upper() != template.procedure_code.upper():
            return None
        score += 4
    if template.body_part:
        parts = {(p or "").upper() for p in (study.body_part, order.body_part if order else None)}
        if template.body_part.upper() not in parts:
            return None
        score += 2
    if template.modality:
        modalities = set(split_multi(study.modalities))
        if order is not None:
            modalities.add(order.modality.value)
        if template.modality not in modalities:
            return None
        score += 1
    return score


def suggestions(
    templates: list[ReportTemplate], study: Study, order: ImagingOrder | None
) -> list[ReportTemplate]:
    scored = [(match_score(t, study, order), t) for t in templates]
    fitting = [(score, t) for score, t in scored if score is not None]
    return [t for _, t in sorted(fitting, key=lambda st: (-st[0], st[1].id or 0))]
