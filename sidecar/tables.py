"""Every table model, imported here so that `metadata` (and so Alembic) holds them all."""

from sqlmodel import SQLModel

from sidecar.access.models import EmergencyAccess
from sidecar.accounts.models import LoginAttempt, RefreshToken, User
from sidecar.analyses.models import Analysis, AnalysisFinding, AnalysisTask, Workitem
from sidecar.core.audit import AuditEvent
from sidecar.core.cluster_models import ClusterNode, JobLease
from sidecar.events.models import LiveEvent
from sidecar.findings.models import CriticalFinding, FindingNotification, NotificationAttempt
from sidecar.ingest.models import ChangesCursor, DeletionCheck, PendingStudy
from sidecar.mpps.models import PerformedProcedureStep
from sidecar.orders.models import ImagingOrder
from sidecar.patients.models import ImageUpdate, Patient
from sidecar.procedures.models import Procedure
from sidecar.reading.models import AssignmentRule, StudyReading
from sidecar.reports.models import RadiologyReport, ReportRevision
from sidecar.reports.templates import ReportTemplate
from sidecar.results.message_log import Hl7Message
from sidecar.studies.deidentification import DeidentifiedCopy
from sidecar.studies.models import Image, Series, Study
from sidecar.studies.removal_models import ImageRemoval, ImageRemovalInstance

metadata = SQLModel.metadata

__all__ = [
    "Analysis",
    "AnalysisFinding",
    "AnalysisTask",
    "AssignmentRule",
    "AuditEvent",
    "ChangesCursor",
    "ClusterNode",
    "CriticalFinding",
    "DeidentifiedCopy",
    "DeletionCheck",
    "EmergencyAccess",
    "FindingNotification",
    "Hl7Message",
    "Image",
    "ImageRemoval",
    "ImageRemovalInstance",
    "ImageUpdate",
    "ImagingOrder",
    "JobLease",
    "LiveEvent",
    "LoginAttempt",
    "NotificationAttempt",
    "Patient",
    "PendingStudy",
    "PerformedProcedureStep",
    "Procedure",
    "RadiologyReport",
    "RefreshToken",
    "ReportRevision",
    "ReportTemplate",
    "Series",
    "Study",
    "StudyReading",
    "User",
    "Workitem",
    "metadata",
]
