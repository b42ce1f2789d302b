"""UPS work items for the tests, made as the analyses service makes them: an analysis of a study
with one task for an external analyzer, and its work item (sidecar.analyses.workitems), in rows;
and analyzer accounts."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine
from sqlmodel import Session, select

from sidecar.accounts.models import Role, User
from sidecar.accounts.security import hash_password
from sidecar.analyses.models import (
    Analysis,
    AnalysisPriority,
    AnalysisStatus,
    AnalysisTask,
    AnalyzerKind,
)
from sidecar.analyses.workitems import schedule_workitem
from sidecar.studies.models import Study

ANALYZER_PASSWORD = "analyzer-password-for-tests"


@dataclass(frozen=True)
class ScheduledItem:
    uid: str  # the work item's SOP Instance UID
    workitem_id: int
    analysis_id: int
    task_id: int
    study_id: int
    study_instance_uid: str


def study_row(engine: Engine, study_instance_uid: str, patient_id: str = "MRN000000001") -> int:
    """A registered study (no images): what a work item names."""
    with Session(engine) as session:
        study = Study(
            study_instance_uid=study_instance_uid,
            patient_id=patient_id,
            patient_name="DOE^JANE",
            accession_number="A000000000001",
        )
        session.add(study)
        session.commit()
        assert study.id is not None
        return study.id


def schedule(
    engine: Engine,
    study_instance_uid: str,
    *,
    analyzer: str = "ext-detector",
    priority: AnalysisPriority = AnalysisPriority.MEDIUM,
) -> ScheduledItem:
    """An analysis of the registered study asking for one external analyzer, and its work item."""
    with Session(engine) as session:
        study = session.exec(
            select(Study).where(Study.study_instance_uid == study_instance_uid)
        ).one()
        assert study.id is not None
        analysis = Analysis(
            study_id=study.id,
            priority=priority,
            status=AnalysisStatus.SCHEDULED,
            requested_by="radiologist-user",
        )
        session.add(analysis)
        session.flush()
        assert analysis.id is not None
        task = AnalysisTask(
            analysis_id=analysis.id,
            analyzer=analyzer,
            kind=AnalyzerKind.EXTERNAL,
            status=AnalysisStatus.SCHEDULED,
        )
        session.add(task)
        session.flush()
        workitem = schedule_workitem(session, task, study, priority)
        session.commit()
        assert workitem.id is not None and task.id is not None
        return ScheduledItem(
            workitem.sop_instance_uid,
            workitem.id,
            analysis.id,
            task.id,
            study.id,
            study_instance_uid,
        )


def analyzer_account(engine: Engine, username: str) -> None:
    """An analyzer account (ANALYZER_PASSWORD), created once."""
    with Session(engine) as session:
        if session.exec(select(User).where(User.username == username)).first() is None:
            session.add(
                User(
                    username=username,
                    password_hash=hash_password(ANALYZER_PASSWORD),
                    role=Role.ANALYZER,
                )
            )
            session.commit()
