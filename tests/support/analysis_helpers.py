"""AI analysis test helpers: an analyzer of the test's own (registered through the app's
registry, as the built-in ones are), findings on a study's images, and a task completed as the
runner completes it (sidecar.analyses.status)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydicom import Dataset
from sqlmodel import Session, col, select

from sidecar.analyses import status
from sidecar.analyses.analyzers import AnalyzerRegistry
from sidecar.analyses.findings import (
    AnalysisError,
    AnalyzerFinding,
    Box,
    ImageRef,
    Severity,
    StudyContext,
)
from sidecar.analyses.models import AnalysisTask
from sidecar.core.settings import Settings

from testapp import engine_of, service_of

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


@dataclass
class FixedAnalyzer:
    """Says the same thing of every study: one finding per entry of `findings` (severity,
    words), on the first image it is shown, with a box when `box` is given. Keeps what it saw;
    `refuse` makes it raise AnalysisError, `crash` any other error (a bug, an outage)."""

    name: str = "test-critical"
    version: str = "1.0"
    findings: Sequence[tuple[Severity, str]] = ((Severity.CRITICAL, "suspected pneumothorax"),)
    box: Box | None = field(default_factory=lambda: Box(8.0, 12.0, 20.0, 16.0))
    refuse: str | None = None
    crash: int = 0  # the next `crash` runs fail with an unexpected error
    seen: list[list[str]] = field(default_factory=list)
    contexts: list[StudyContext] = field(default_factory=list)

    def analyze(self, images: Iterable[Dataset], context: StudyContext) -> list[AnalyzerFinding]:
        self.contexts.append(context)
        shown = list(images)
        self.seen.append([str(image.SOPInstanceUID) for image in shown])
        if self.crash:
            self.crash -= 1
            raise ConnectionError("the analyzer's accelerator went away")
        if self.refuse:
            raise AnalysisError(self.refuse)
        first = shown[0]
        image = ImageRef(
            study_instance_uid=str(first.StudyInstanceUID),
            series_instance_uid=str(first.SeriesInstanceUID),
            sop_instance_uid=str(first.SOPInstanceUID),
            sop_class_uid=str(first.SOPClassUID),
        )
        return [
            AnalyzerFinding(
                model=self.name,
                finding=words,
                confidence=0.9,
                severity=severity,
                recommendation="review by a radiologist",
                image=image,
                box=self.box,
            )
            for severity, words in self.findings
        ]


def register(app: FastAPI, analyzer: Any) -> None:
    service_of(app, AnalyzerRegistry).register(analyzer)


def finding(
    severity: Severity = Severity.CRITICAL,
    words: str = "suspected pneumothorax",
    *,
    study_uid: str = "1.2.3",
    sop_uid: str | None = "1.2.3.1.1",
    box: Box | None = None,
) -> AnalyzerFinding:
    image = None
    if sop_uid is not None:
        image = ImageRef(study_uid, f"{study_uid}.1", sop_uid, CT_IMAGE_STORAGE)
    return AnalyzerFinding(
        model="test-critical",
        finding=words,
        confidence=0.75,
        severity=severity,
        recommendation="review by a radiologist",
        image=image,
        box=box,
    )


def complete_tasks(
    app: FastAPI,
    analysis_id: int,
    findings: Sequence[AnalyzerFinding],
    *,
    now: datetime,
    report_uid: str = "1.2.826.0.1.3680043.8.498.999.1",
    review_minutes: int | None = None,
) -> None:
    """Every task of the analysis started and completed with `findings`, its report said to be
    stored, as the runner records it (AI_REVIEW_MINUTES from the app's settings)."""
    minutes = review_minutes or service_of(app, Settings).ai_review_minutes
    with Session(engine_of(app)) as session:
        tasks = session.exec(
            select(AnalysisTask)
            .where(AnalysisTask.analysis_id == analysis_id)
            .order_by(col(AnalysisTask.id))
        ).all()
        for task in tasks:
            status.start_task(session, task, now)
            status.complete_task(
                session, task, findings, report_uid, now, review_after=timedelta(minutes=minutes)
            )
        session.commit()


def request(
    client: TestClient, headers: dict[str, str], study_id: int, *models: str, **body: Any
) -> dict[str, Any]:
    """Asks for an analysis over the API: its answer (202)."""
    answer = client.post(
        f"/api/v1/imaging/analyze/{study_id}",
        json={"models": list(models), **body},
        headers=headers,
    )
    assert answer.status_code == 202, answer.text
    accepted: dict[str, Any] = answer.json()
    return accepted
