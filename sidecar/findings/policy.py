"""How critical findings travel: the deadline each severity has to be acknowledged, the
escalation chain after the ordering provider, and where notifications go (from the settings)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated

from fastapi import Depends

from sidecar.core.dependencies import provide
from sidecar.core.settings import Settings
from sidecar.findings.models import Severity


@dataclass(frozen=True)
class FindingPolicy:
    """Deadlines per severity, the escalation chain, and where notifications go."""

    deadlines: dict[Severity, timedelta | None]
    contacts: tuple[str, ...] = ()
    failsafe: str | None = None
    notify: bool = False  # a notification service is configured
    public_url: str = ""

    @classmethod
    def from_settings(cls, settings: Settings) -> FindingPolicy:
        minutes = {
            Severity.CRITICAL: settings.critical_finding_ack_minutes_critical,
            Severity.HIGH: settings.critical_finding_ack_minutes_high,
            Severity.MODERATE: settings.critical_finding_ack_minutes_moderate,
            Severity.LOW: settings.critical_finding_ack_minutes_low,
        }
        contacts = settings.critical_finding_escalation_contacts.split(",")
        return cls(
            deadlines={s: timedelta(minutes=m) if m else None for s, m in minutes.items()},
            contacts=tuple(c.strip() for c in contacts if c.strip()),
            failsafe=settings.critical_finding_failsafe.strip() or None,
            notify=bool(settings.notification_service_url),
            public_url=settings.public_url,
        )

    def deadline(self, severity: Severity) -> timedelta | None:
        return self.deadlines.get(severity)

    def recipient_at(self, level: int) -> str | None:
        """Level 1.. of the chain: the contacts in order, then the fail-safe recipient."""
        chain = (*self.contacts, *((self.failsafe,) if self.failsafe else ()))
        return chain[level - 1] if 1 <= level <= len(chain) else None


FindingPolicyDep = Annotated[FindingPolicy, Depends(provide(FindingPolicy))]
