"""Asking for an analysis: by a radiologist or an administrator (POST
/api/v1/imaging/analyze/{studyId}), or by the sidecar itself for the analyzers of
AI_AUTO_ANALYZERS when a study's images are stored and stable.

An analysis is one task per analyzer asked for. A task run inside the sidecar (built in, ONNX)
waits for the runner (sidecar.analyses.runner); an external analyzer's task is a UPS work item
(sidecar.analyses.workitems), created in the same transaction so no request is lost.

A study is analysed only once its images are stored and stable (registered from Orthanc): asked
earlier, the request is refused (422) rather than kept waiting for images that may never come;
the auto analyzers run by themselves once they are stored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime

from sqlmodel import Session, col, select

from sidecar.analyses.analyzers import AnalyzerRegistry, UnknownAnalyzer
from sidecar.analyses.models import (
    Analysis,
    AnalysisPriority,
    AnalysisStatus,
    AnalysisTask,
    AnalyzerKind,
)
from sidecar.core import audit
from sidecar.core.errors import UnacceptableValue
from sidecar.operations import metrics
from sidecar.orders.models import Priority
from sidecar.studies.models import Study, StudyStatus

log = logging.getLogger(__name__)

#: Who asked for the analyses of AI_AUTO_ANALYZERS (Analysis.requested_by, the audit's actor).
AUTO_REQUESTER = "auto"

_AWAITING_IMAGES = (StudyStatus.SCHEDULED, StudyStatus.ARRIVED, StudyStatus.IN_PROGRESS)

#: The auto analyses of a study follow its reading priority: a STAT study's first.
_AUTO_PRIORITY = {
    Priority.STAT.value: AnalysisPriority.HIGH,
    Priority.URGENT.value: AnalysisPriority.MEDIUM,
}


def images_problem(study: Study) -> str | None:
    """Why the study's images cannot be analysed now; None when they can."""
    if study.images_deleted_at is not None:
        return f"the images of study {study.id} are no longer stored"
    if study.status in _AWAITING_IMAGES or not study.orthanc_id or study.instance_count < 1:
        return (
            f"study {study.id} has no stored images yet: ask again once they are stored "
            "(the analyzers of AI_AUTO_ANALYZERS run by themselves then)"
        )
    if study.status == StudyStatus.CANCELLED:
        return f"study {study.id} is cancelled"
    return None


def request_analysis(
    session: Session,
    study: Study,
    models: Sequence[str],
    *,
    priority: AnalysisPriority,
    requested_by: str,
    registry: AnalyzerRegistry,
    now: datetime,
) -> Analysis:
    """The analysis of `study` by each analyzer of `models` (in that order, each once), with
    a task per analyzer and a work item per external one, audited; in the caller's
    transaction. Refused (422, naming it) when a model is unknown or refused, when no model is
    given, or when the study's images are not stored yet."""
    names = list(dict.fromkeys(models))
    if not names:
        raise UnacceptableValue("body.models", "name at least one analyzer")
    registered = []
    for name in names:
        try:
            registered.append(registry.get(name))
        except UnknownAnalyzer as exc:
            raise UnacceptableValue("body.models", str(exc)) from None
    if (problem := images_problem(study)) is not None:
        raise UnacceptableValue("path.studyId", problem)
    assert study.id is not None
    analysis = Analysis(
        study_id=study.id,
        priority=priority,
        status=AnalysisStatus.SCHEDULED,
        requested_by=requested_by[:64],
        created_at=now,
    )
    session.add(analysis)
    session.flush()
    tasks = [
        AnalysisTask(
            analysis_id=analysis.id or 0,
            analyzer=found.name,
            kind=found.kind,
            status=AnalysisStatus.SCHEDULED,
        )
        for found in registered
    ]
    session.add_all(tasks)
    session.flush()
    external = [task for task in tasks if task.kind == AnalyzerKind.EXTERNAL]
    if external:
        # Imported here: the work items need the analyses, not the other way round.
        from sidecar.analyses.workitems import schedule_workitem

        for task in external:
            schedule_workitem(session, task, study, analysis.priority)
    audit.record(
        session,
        actor=requested_by,
        action="analysis.requested",
        entity_type="analysis",
        entity_id=analysis.id,
        study_id=study.id,
        analyzers=names,
        priority=priority,
    )
    return analysis


def request_auto_analysis(
    session: Session,
    study: Study,
    *,
    analyzers: Sequence[str],
    registry: AnalyzerRegistry,
    now: datetime,
    on_committed: Callable[[], object] | None = None,
) -> Analysis | None:
    """The study's images are stored and stable (sidecar.ingest.sync, in the registration's
    transaction): the analyzers of AI_AUTO_ANALYZERS are asked for, once per study. Images
    arriving later do not ask again (the analyses' own reports are new instances of the study
    too); a radiologist may. Names no analyzer is registered under are passed over (logged at
    start-up). `on_committed` (waking the runner) is called once the transaction commits."""
    names = [name for name in analyzers if registry.find(name) is not None]
    if not names or images_problem(study) is not None:
        return None
    asked = session.exec(
        select(Analysis.id)
        .where(Analysis.study_id == study.id, col(Analysis.requested_by) == AUTO_REQUESTER)
        .limit(1)
    ).first()
    if asked is not None:
        return None
    analysis = request_analysis(
        session,
        study,
        names,
        priority=_AUTO_PRIORITY.get(study.priority or "", AnalysisPriority.LOW),
        requested_by=AUTO_REQUESTER,
        registry=registry,
        now=now,
    )
    if on_committed is not None:
        metrics.on_commit(session, on_committed)
    log.info("study %s: analysis %s asked of %s", study.id, analysis.id, ", ".join(names))
    return analysis


def check_auto_analyzers(registry: AnalyzerRegistry, names: Sequence[str]) -> list[str]:
    """The names of AI_AUTO_ANALYZERS no analyzer is registered under (each logged: a typo in
    the setting would otherwise go unnoticed)."""
    missing = [name for name in names if registry.find(name) is None]
    for name in missing:
        log.error("AI_AUTO_ANALYZERS names %s, which no analyzer is registered as", name)
    return missing
