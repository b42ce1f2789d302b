"""Critical findings (seed 001): raised by a radiologist, acknowledged by a clinician, escalated
when nobody acknowledges them in time, and every notification kept with its delivery attempts.

`CriticalFinding.version` is the optimistic-concurrency counter (as on reports): an
acknowledgement and an escalation racing on the same finding cannot both win.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar

from pydantic import Field as PydanticField
from pydantic import model_validator
from sqlalchemy import JSON, Integer, Text
from sqlmodel import Column, Field, SQLModel

from sidecar.core.models import MAX_RECORD_ID, ApiInput, ApiModel, EnumText, UTCDateTime, utcnow
from sidecar.core.workflow import Workflow


class Severity(StrEnum):
    CRITICAL = "CRITICAL"  # life-threatening, immediate action
    HIGH = "HIGH"  # urgent, prompt attention
    MODERATE = "MODERATE"  # timely follow-up
    LOW = "LOW"  # for awareness


class FindingStatus(StrEnum):
    PENDING = "PENDING"  # raised; the first notification not yet delivered
    NOTIFIED = "NOTIFIED"  # the ordering provider's notification was delivered
    ESCALATED = "ESCALATED"  # not acknowledged in time: the next contact was notified
    ACKNOWLEDGED = "ACKNOWLEDGED"  # a clinician confirmed receipt (closed loop)
    RESOLVED = "RESOLVED"  # follow-up done; nothing more to track


#: Not yet acknowledged: what `GET /pending` lists, what escalates, what may be acknowledged.
UNACKNOWLEDGED = (FindingStatus.PENDING, FindingStatus.NOTIFIED, FindingStatus.ESCALATED)


class AcknowledgementMethod(StrEnum):
    PHONE = "PHONE"
    IN_PERSON = "IN_PERSON"
    ELECTRONIC = "ELECTRONIC"


class NotificationKind(StrEnum):
    RAISED = "RAISED"  # to the ordering provider, when the finding is raised
    ESCALATED = "ESCALATED"  # to the next contact in the escalation chain
    # To the privacy contact, when a physician breaks the glass (sidecar.access.emergency):
    # no finding, the same outbox and delivery.
    EMERGENCY_ACCESS = "EMERGENCY_ACCESS"
    # Reading (sidecar.reading): a study not read by its target time, to its assignee then
    # the escalation contact; a study taken over, to the radiologist who held it.
    READING_OVERDUE = "READING_OVERDUE"
    READING_TAKEOVER = "READING_TAKEOVER"


class DeliveryStatus(StrEnum):
    PENDING = "PENDING"  # in the outbox, to be (re)tried
    DELIVERED = "DELIVERED"  # the notification service answered 2xx
    REFUSED = "REFUSED"  # the service answered a 4xx that a retry cannot fix
    NOT_CONFIGURED = "NOT_CONFIGURED"  # NOTIFICATION_SERVICE_URL unset: nothing was sent


_version_column = Column("version", Integer, nullable=False)


class CriticalFinding(SQLModel, table=True):
    __tablename__ = "critical_finding"
    __mapper_args__: ClassVar[dict[str, Any]] = {"version_id_col": _version_column}

    id: int | None = Field(default=None, primary_key=True)
    study_id: int = Field(foreign_key="study.id", index=True)
    order_id: int | None = Field(default=None, foreign_key="imaging_order.id", index=True)
    report_id: int | None = Field(default=None, foreign_key="radiology_report.id", index=True)
    raised_by_id: int = Field(foreign_key="app_user.id", index=True)
    severity: Severity = Field(sa_column=Column(EnumText(Severity, 16), nullable=False, index=True))
    status: FindingStatus = Field(
        default=FindingStatus.PENDING,
        sa_column=Column(EnumText(FindingStatus, 16), nullable=False, index=True),
    )
    description: str = Field(sa_column=Column(Text, nullable=False))
    recommendation: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False, index=True)
    )
    updated_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False)
    )
    # The severity's deadline from creation (metrics: overdue); None: the severity has none.
    acknowledge_by: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    # 0: the ordering provider; 1..n: the escalation contacts, then the fail-safe recipient.
    escalation_level: int = 0
    # When the escalation worker next moves the finding up the chain; None: never again.
    next_escalation_at: datetime | None = Field(
        default=None, sa_column=Column(UTCDateTime, index=True)
    )
    acknowledged_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    acknowledged_by_id: int | None = Field(default=None, foreign_key="app_user.id")
    # Who received the result (their name or provider id), as told by whoever recorded it.
    acknowledged_by_name: str | None = Field(default=None, max_length=128)
    acknowledgement_method: AcknowledgementMethod | None = Field(
        default=None, sa_column=Column(EnumText(AcknowledgementMethod, 16))
    )
    read_back_confirmed: bool | None = None
    read_back_text: str | None = Field(default=None, sa_column=Column(Text))
    acknowledgement_notes: str | None = Field(default=None, sa_column=Column(Text))
    resolved_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    follow_up_notes: str | None = Field(default=None, sa_column=Column(Text))
    version: int = Field(default=1, sa_column=_version_column)


class FindingNotification(SQLModel, table=True):
    """The webhook outbox: one row per message to the notification service, written in the same
    transaction as the change it announces (a critical finding's, or an emergency access).
    `payload` is fixed when queued, so every retry sends the same body with the same
    `notificationId` (a receiver deduplicates on it)."""

    __tablename__ = "critical_finding_notification"

    id: int | None = Field(default=None, primary_key=True)
    # One of these says what the notification is about.
    finding_id: int | None = Field(default=None, foreign_key="critical_finding.id", index=True)
    emergency_access_id: int | None = Field(
        default=None, foreign_key="emergency_access.id", index=True
    )
    # Or a study (sidecar.reading's notifications).
    study_id: int | None = Field(default=None, foreign_key="study.id", index=True)
    kind: NotificationKind = Field(sa_column=Column(EnumText(NotificationKind, 16), nullable=False))
    escalation_level: int = 0
    recipient: str | None = Field(default=None, max_length=64, index=True)
    status: DeliveryStatus = Field(
        sa_column=Column(EnumText(DeliveryStatus, 16), nullable=False, index=True)
    )
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    attempts: int = 0
    next_attempt_at: datetime | None = Field(
        default=None, sa_column=Column(UTCDateTime, index=True)
    )
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False)
    )
    delivered_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    last_error: str | None = Field(default=None, max_length=500)


class NotificationAttempt(SQLModel, table=True):
    """Every POST to the notification service: when, and what came back (status or error)."""

    __tablename__ = "critical_finding_notification_attempt"

    id: int | None = Field(default=None, primary_key=True)
    notification_id: int = Field(foreign_key="critical_finding_notification.id", index=True)
    attempted_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    http_status: int | None = None
    error: str | None = Field(default=None, max_length=500)
    duration_ms: float = 0.0


_TEXT_MAX = 8000


class FindingCreate(ApiInput):
    study_id: int = PydanticField(ge=1, le=MAX_RECORD_ID)
    report_id: int | None = PydanticField(default=None, ge=1, le=MAX_RECORD_ID)
    severity: Severity
    description: str = PydanticField(min_length=1, max_length=_TEXT_MAX)
    recommendation: str | None = PydanticField(default=None, max_length=_TEXT_MAX)


class FindingUpdate(ApiInput):
    """Clinical text and severity change only before acknowledgement; RESOLVED closes an
    acknowledged finding."""

    severity: Severity | None = None
    description: str | None = PydanticField(default=None, min_length=1, max_length=_TEXT_MAX)
    recommendation: str | None = PydanticField(default=None, max_length=_TEXT_MAX)
    status: FindingStatus | None = None
    follow_up_notes: str | None = PydanticField(default=None, max_length=_TEXT_MAX)

    @model_validator(mode="after")
    def _not_empty(self) -> FindingUpdate:
        if not self.model_fields_set:
            raise ValueError("nothing to change: send at least one field")
        return self


class FindingAcknowledge(ApiInput):
    method: AcknowledgementMethod
    # Who received the result. A physician acknowledging for themself may leave it out; a
    # radiologist recording a phone call must say whom they spoke to.
    acknowledged_by_name: str | None = PydanticField(default=None, min_length=1, max_length=128)
    read_back_confirmed: bool = False
    read_back_text: str | None = PydanticField(default=None, min_length=1, max_length=_TEXT_MAX)
    notes: str | None = PydanticField(default=None, max_length=_TEXT_MAX)


class FindingPublic(ApiModel):
    id: int
    study_id: int
    order_id: int | None
    report_id: int | None
    raised_by_id: int
    severity: Severity
    status: FindingStatus
    description: str
    recommendation: str | None
    created_at: datetime
    updated_at: datetime
    acknowledge_by: datetime | None
    escalation_level: int
    next_escalation_at: datetime | None
    acknowledged_at: datetime | None
    acknowledged_by_id: int | None
    acknowledged_by_name: str | None
    acknowledgement_method: AcknowledgementMethod | None
    read_back_confirmed: bool | None
    read_back_text: str | None
    acknowledgement_notes: str | None
    resolved_at: datetime | None
    follow_up_notes: str | None
    version: int


class NotificationPublic(ApiModel):
    id: int
    kind: NotificationKind
    escalation_level: int
    recipient: str | None
    status: DeliveryStatus
    attempts: int
    created_at: datetime
    delivered_at: datetime | None
    last_error: str | None


class FindingDetail(FindingPublic):
    notifications: list[NotificationPublic]


class SeverityMetrics(ApiModel):
    severity: Severity
    deadline_minutes: int | None
    count: int
    acknowledged: int
    pending: int
    overdue: int  # unacknowledged past the severity's deadline, now
    acknowledged_late: int
    median_minutes_to_acknowledge: float | None
    p90_minutes_to_acknowledge: float | None


class FindingMetrics(ApiModel):
    computed_at: datetime
    since: datetime | None
    severities: list[SeverityMetrics]


# The status workflow (sidecar.core.workflow moves records through it).
_F = FindingStatus
FINDING_WORKFLOW: Workflow[FindingStatus] = Workflow(
    "critical finding",
    "critical_finding",
    {
        # Escalation follows the clock, not delivery: an undelivered PENDING finding escalates.
        _F.PENDING: {_F.NOTIFIED, _F.ESCALATED, _F.ACKNOWLEDGED},
        _F.NOTIFIED: {_F.ESCALATED, _F.ACKNOWLEDGED},
        _F.ESCALATED: {_F.ESCALATED, _F.ACKNOWLEDGED},
        _F.ACKNOWLEDGED: {_F.RESOLVED},
        _F.RESOLVED: set(),
    },
)
