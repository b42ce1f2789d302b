"""Every table model, imported here so that metadata (and Alembic) sees them all."""

from sidecar.models.audit import AuditEvent
from sidecar.models.critical_findings import (
    CriticalFinding,
    FindingNotification,
    NotificationAttempt,
)
from sidecar.models.orders import Hl7Message, ImagingOrder
from sidecar.models.reports import RadiologyReport, ReportRevision
from sidecar.models.studies import Image, Series, Study
from sidecar.models.sync import ChangesCursor, PendingStudy
from sidecar.models.users import User

__all__ = [
    "AuditEvent",
    "ChangesCursor",
    "CriticalFinding",
    "FindingNotification",
    "Hl7Message",
    "Image",
    "ImagingOrder",
    "NotificationAttempt",
    "PendingStudy",
    "RadiologyReport",
    "ReportRevision",
    "Series",
    "Study",
    "User",
]
