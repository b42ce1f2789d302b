"""Every table model, imported here so that metadata (and Alembic) sees them all."""

from sidecar.models.audit import AuditEvent
from sidecar.models.studies import Image, Series, Study
from sidecar.models.sync import ChangesCursor, PendingStudy
from sidecar.models.users import User

__all__ = ["AuditEvent", "ChangesCursor", "Image", "PendingStudy", "Series", "Study", "User"]
