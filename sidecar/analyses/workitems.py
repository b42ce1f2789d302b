"""An external analyzer's task as a DICOM Unified Procedure Step (PS3.4 Annex CC), the work item an
IHE AI Workflow for Imaging (AIW-I) performer finds at /dicom-web/workitems: what to do (the
analyzer's name, as Procedure Step Label, Scheduled Station Name and a processing parameter), on
what (the study, in the Input Information Sequence), how urgently (Scheduled Procedure Step
Priority) and for whom (the patient module attributes UPS requires, PS3.4 Table CC.2.5-3).

Work items are rows: the sidecar writes them, the performer changes them over UPS-RS, and a
process killed mid-claim loses nothing.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, generate_uid
from sqlmodel import Session

from sidecar.analyses.models import AnalysisPriority, AnalysisTask, Workitem, WorkitemState
from sidecar.core.models import utcnow
from sidecar.studies.models import Study

#: Unified Procedure Step - Push SOP Class: the work item's SOP Class UID (0008,0016).
UPS_PUSH_SOP_CLASS = UID("1.2.840.10008.5.1.4.34.6.1")
#: The well-known instance UPS-RS subscriptions to every work item are addressed to.
UPS_GLOBAL_SUBSCRIPTION = UID("1.2.840.10008.5.1.4.34.5")
#: The Worklist Label (0074,1202) of every work item the sidecar writes.
WORKLIST_LABEL = "AI ANALYSIS"
#: A scheme of our own for the analyzer's name as a code (PS3.16 8.2: private schemes begin 99).
LOCAL_SCHEME = "99SIDECAR"
#: Code Value (0008,0100) is SH; a longer value goes in Long Code Value (0008,0119).
_CODE_VALUE_LENGTH = 16
#: CID 9231 Workitem Definition: what the performer is asked to do.
_WORKITEM_CODE = ("110003", "DCM", "Computer Aided Detection")
#: When the analysis is expected done, after it was scheduled: a hint for the performer's
#: ordering, not a deadline (the claim timeout is what releases a silent performer).
_EXPECTED_DURATION = {
    AnalysisPriority.HIGH: timedelta(minutes=15),
    AnalysisPriority.MEDIUM: timedelta(hours=1),
    AnalysisPriority.LOW: timedelta(hours=24),
}


def dicom_datetime(moment: datetime) -> str:
    """DT with its UTC offset, to the second (the performer compares, it does not guess zones)."""
    return moment.strftime("%Y%m%d%H%M%S%z") if moment.tzinfo else moment.strftime("%Y%m%d%H%M%S")


def code_item(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    if len(value) > _CODE_VALUE_LENGTH:
        item.LongCodeValue = value
    else:
        item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning[:64]
    return item


def _text_parameter(concept: str, meaning: str, text: str) -> Dataset:
    """A Scheduled Processing Parameters item (TEXT content item, PS3.3 Table 10-2)."""
    item = Dataset()
    item.ValueType = "TEXT"
    item.ConceptNameCodeSequence = Sequence([code_item(concept, LOCAL_SCHEME, meaning)])
    item.TextValue = text
    return item


def workitem_dataset(
    *,
    sop_instance_uid: str,
    analyzer: str,
    analysis_id: int,
    study: Study,
    priority: AnalysisPriority,
    now: datetime,
) -> dict[str, Any]:
    """The work item's attributes as DICOM JSON, SCHEDULED: those PS3.4 Table CC.2.5-3 asks of
    the creator (Type 1 with values, Type 2 present, empty when unknown) and what an AIW-I
    performer needs to find the study. The Retrieve URL of the study is added when the work item
    is served (sidecar.analyses.workitems_json), from the front the performer came through."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"  # patient names in any script, as UTF-8
    # SOP Common
    ds.SOPClassUID = UPS_PUSH_SOP_CLASS
    ds.SOPInstanceUID = sop_instance_uid
    # Unified Procedure Step Scheduled Procedure Information
    ds.ScheduledProcedureStepPriority = priority.value
    ds.ScheduledProcedureStepModificationDateTime = dicom_datetime(now)
    ds.ProcedureStepLabel = analyzer
    ds.WorklistLabel = WORKLIST_LABEL
    ds.ScheduledProcessingParametersSequence = Sequence(
        [
            _text_parameter("analyzer", "Analyzer", analyzer),
            _text_parameter("analysis", "Analysis", str(analysis_id)),
        ]
    )
    ds.ScheduledStationNameCodeSequence = Sequence(
        [code_item(analyzer, LOCAL_SCHEME, f"AI analyzer {analyzer}")]
    )
    ds.ScheduledStationClassCodeSequence = Sequence()
    ds.ScheduledStationGeographicLocationCodeSequence = Sequence()
    ds.ScheduledProcedureStepStartDateTime = dicom_datetime(now)
    ds.ExpectedCompletionDateTime = dicom_datetime(now + _EXPECTED_DURATION[priority])
    ds.ScheduledWorkitemCodeSequence = Sequence([code_item(*_WORKITEM_CODE)])
    ds.CommentsOnTheScheduledProcedureStep = f"AI analysis {analysis_id} by {analyzer}"
    ds.InputReadinessState = "READY"  # only stable studies are analysed
    source = Dataset()
    source.TypeOfInstances = "DICOM"
    source.StudyInstanceUID = study.study_instance_uid
    source.ReferencedSeriesSequence = Sequence()  # the whole study: the performer lists it
    ds.InputInformationSequence = Sequence([source])
    ds.StudyInstanceUID = study.study_instance_uid  # where the results are to be stored
    # Unified Procedure Step Relationship (the patient, the request)
    ds.PatientName = study.patient_name or ""
    ds.PatientID = study.patient_id or ""
    if study.issuer_of_patient_id:
        ds.IssuerOfPatientID = study.issuer_of_patient_id
    ds.PatientBirthDate = (
        study.patient_birth_date.strftime("%Y%m%d") if study.patient_birth_date else ""
    )
    ds.PatientSex = study.patient_sex if study.patient_sex in ("M", "F", "O") else ""
    ds.AdmissionID = ""
    ds.IssuerOfAdmissionIDSequence = Sequence()
    ds.AdmittingDiagnosesDescription = ""
    ds.AdmittingDiagnosesCodeSequence = Sequence()
    request = Dataset()
    request.StudyInstanceUID = study.study_instance_uid
    request.AccessionNumber = study.accession_number or ""
    request.IssuerOfAccessionNumberSequence = Sequence()
    request.RequestedProcedureID = ""
    request.RequestedProcedureDescription = study.study_description or ""
    request.RequestedProcedureCodeSequence = Sequence()
    ds.ReferencedRequestSequence = Sequence([request])
    # Unified Procedure Step Progress Information
    ds.ProcedureStepState = WorkitemState.SCHEDULED.value
    ds.ProcedureStepProgressInformationSequence = Sequence()
    # Unified Procedure Step Performed Procedure Information (filled by the performer)
    ds.UnifiedProcedureStepPerformedProcedureSequence = Sequence()
    return ds.to_json_dict()


def schedule_workitem(
    session: Session, task: AnalysisTask, study: Study, priority: AnalysisPriority
) -> Workitem:
    """A SCHEDULED work item for an external analyzer's task on the study, in the caller's
    transaction (flushed: it has its id). Any analyzer account may claim it."""
    if task.id is None or study.id is None:
        raise ValueError("the task and the study are stored before their work item")
    now = utcnow()
    uid = str(generate_uid())
    workitem = Workitem(
        sop_instance_uid=uid,
        task_id=task.id,
        study_id=study.id,
        state=WorkitemState.SCHEDULED,
        dataset=workitem_dataset(
            sop_instance_uid=uid,
            analyzer=task.analyzer,
            analysis_id=task.analysis_id,
            study=study,
            priority=priority,
            now=now,
        ),
        created_at=now,
        updated_at=now,
    )
    session.add(workitem)
    session.flush()
    return workitem
