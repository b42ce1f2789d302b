"""The work item the sidecar schedules for an external analyzer carries what an AIW-I performer
needs, as DICOM JSON pydicom reads back."""

from __future__ import annotations

from datetime import date

from pydicom.dataset import Dataset
from sqlalchemy import Engine
from sqlmodel import Session

from sidecar.analyses.models import (
    Analysis,
    AnalysisPriority,
    AnalysisStatus,
    AnalysisTask,
    AnalyzerKind,
    WorkitemState,
)
from sidecar.analyses.workitems import UPS_PUSH_SOP_CLASS, schedule_workitem
from sidecar.studies.models import Study


def test_a_scheduled_work_item_names_the_analyzer_the_study_and_the_patient(
    engine: Engine,
) -> None:
    with Session(engine) as session:
        study = Study(
            study_instance_uid="1.2.826.0.1.3680043.8.498.1",
            accession_number="A1",
            patient_id="P-1",
            patient_name="Doe^Jane",
            patient_birth_date=date(1970, 2, 3),
            patient_sex="F",
        )
        session.add(study)
        session.flush()
        analysis = Analysis(
            study_id=study.id or 0,
            priority=AnalysisPriority.HIGH,
            status=AnalysisStatus.SCHEDULED,
            requested_by="rad",
        )
        session.add(analysis)
        session.flush()
        task = AnalysisTask(
            analysis_id=analysis.id or 0,
            analyzer="a-very-long-analyzer-name",
            kind=AnalyzerKind.EXTERNAL,
            status=AnalysisStatus.SCHEDULED,
        )
        session.add(task)
        session.flush()
        workitem = schedule_workitem(session, task, study, AnalysisPriority.HIGH)
        session.commit()
        stored = workitem.dataset
        uid = workitem.sop_instance_uid
        assert workitem.state == WorkitemState.SCHEDULED
        assert workitem.transaction_uid is None and workitem.performer_id is None

    ds = Dataset.from_json(stored)
    assert ds.SOPClassUID == UPS_PUSH_SOP_CLASS
    assert ds.SOPInstanceUID == uid
    assert ds.ProcedureStepState == "SCHEDULED"
    assert ds.ScheduledProcedureStepPriority == "HIGH"
    assert ds.ProcedureStepLabel == "a-very-long-analyzer-name"
    assert ds.ScheduledStationNameCodeSequence[0].LongCodeValue == "a-very-long-analyzer-name"
    texts = [item.TextValue for item in ds.ScheduledProcessingParametersSequence]
    assert "a-very-long-analyzer-name" in texts
    assert ds.ScheduledWorkitemCodeSequence[0].CodeValue == "110003"
    assert ds.InputInformationSequence[0].StudyInstanceUID == "1.2.826.0.1.3680043.8.498.1"
    assert ds.InputReadinessState == "READY"
    assert ds.ScheduledProcedureStepStartDateTime < ds.ExpectedCompletionDateTime
    assert str(ds.PatientName) == "Doe^Jane" and ds.PatientID == "P-1"
    assert ds.PatientBirthDate == "19700203" and ds.PatientSex == "F"
    assert ds.ReferencedRequestSequence[0].AccessionNumber == "A1"
    # Type 2: present, empty until the performer fills them
    assert "UnifiedProcedureStepPerformedProcedureSequence" in ds
    assert "AdmissionID" in ds
    # never the performer's transaction UID
    assert "0008119" + "5" not in stored
