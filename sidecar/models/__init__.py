"""Every table model, imported here so that metadata (and Alembic) sees them all."""

from sidecar.models.audit import AuditEvent
from sidecar.models.orders import Hl7Message, ImagingOrder
from sidecar.models.studies import Image, Series, Study
from sidecar.models.sync import ChangesCursor, PendingStudy
from sidecar.models.users import User

__all__ = [
    "AuditEvent",
    "ChangesCursor",
    "Hl7Message",
    "Image",
    "ImagingOrder",
    "PendingStudy",
    "Series",
    "Study",
    "User",
]
