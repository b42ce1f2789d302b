"""What waits, read from the database when /metrics is scraped: studies queued for
registration and the change log's lag, the HIS outbox, critical findings not acknowledged, the
reading worklist; and this node's own state: its database pools, its background jobs' failures,
whether Orthanc answers it (one request for the change log's last sequence number, which the
cursor's lag needs anyway).

A collector built per scrape (not registered in prometheus_client's process-wide registry:
tests build many apps in one process, each with its own database). The backlogs are the
database's, so the whole cluster's: every node reports the same figures, labelled
`scope="cluster"`, to be read from one node or max()'d across nodes, never summed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, case
from sqlmodel import Session, col, func, select

from sidecar.core.background import ROUND_FAILURES
from sidecar.findings.models import UNACKNOWLEDGED, CriticalFinding
from sidecar.ingest.models import ChangesCursor, PendingStudy
from sidecar.ingest.orthanc_client import OrthancClient, OrthancError
from sidecar.operations.metrics import PRIORITIES, SEVERITIES, known
from sidecar.reading.models import StudyReading
from sidecar.reading.policy import READY_TO_READ, ReadingPolicy, priority_of
from sidecar.results.message_log import Hl7Direction, Hl7Message, Hl7MessageStatus
from sidecar.studies.models import Study

log = logging.getLogger(__name__)

CLUSTER = {"scope": "cluster"}


@dataclass(eq=False)
class BacklogCollector(Collector):
    """One scrape's view; `now` is the app's clock (tests move it)."""

    engine: Engine
    intake_engine: Engine
    orthanc: OrthancClient
    policy: ReadingPolicy
    node: str
    now: datetime

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "sidecar_node_info", "This node's name (NODE_NAME): 1", labels=["node"]
        )
        info.add_metric([self.node], 1)
        yield info
        yield from self._pools()
        yield from self._job_failures()
        try:  # one short request: the change log's last sequence number
            orthanc_last: int | None = int(self.orthanc.changes(0, 0)["Last"])
        except (OrthancError, KeyError, TypeError, ValueError):
            orthanc_last = None
        orthanc_up = GaugeMetricFamily(
            "sidecar_orthanc_up", "1 when this node reached Orthanc's REST API at this scrape"
        )
        orthanc_up.add_metric([], 0 if orthanc_last is None else 1)
        yield orthanc_up
        try:
            with Session(self.engine) as session:
                families = [
                    *self._studies(session, orthanc_last),
                    *self._outbox(session),
                    *self._findings(session),
                    *self._worklist(session),
                ]
        except Exception as exc:  # the database is down: say so, and keep the node's figures
            log.warning("metrics: the backlogs could not be read (%s)", type(exc).__name__)
            families = []
        up = GaugeMetricFamily(
            "sidecar_database_up", "1 when the backlogs below could be read from the database"
        )
        up.add_metric([], 1 if families else 0)
        yield up
        yield from families

    def _pools(self) -> Iterator[Metric]:
        in_use = GaugeMetricFamily(
            "sidecar_database_pool_connections_in_use",
            "Database connections checked out of this node's pools (api: requests and workers; "
            "hl7_intake: the MLLP listener's own)",
            labels=["pool"],
        )
        for name, engine in (("api", self.engine), ("hl7_intake", self.intake_engine)):
            checked_out = getattr(engine.pool, "checkedout", None)
            if checked_out is not None:  # a pool that keeps no count (SQLite's) is left out
                in_use.add_metric([name], checked_out())
        yield in_use

    def _job_failures(self) -> Iterator[Metric]:
        failures = CounterMetricFamily(
            "sidecar_background_job_failures",
            "Rounds of a background job that raised on this node (retried with back-off)",
            labels=["job"],
        )
        for job, count in sorted(ROUND_FAILURES.items()):
            failures.add_metric([job], count)
        yield failures

    def _studies(self, session: Session, orthanc_last: int | None) -> list[Metric]:
        pending = GaugeMetricFamily(
            "sidecar_studies_pending",
            "Studies queued for registration (noticed, not yet registered)",
            labels=["scope"],
        )
        pending.add_metric(
            ["cluster"], session.exec(select(func.count()).select_from(PendingStudy)).one()
        )
        families: list[Metric] = [pending]
        if orthanc_last is not None:
            cursor = session.get(ChangesCursor, 1)
            lag = GaugeMetricFamily(
                "sidecar_studies_changes_cursor_lag",
                "Orthanc's last change minus the sidecar's /changes cursor: changes not yet read "
                "(absent when Orthanc did not answer)",
                labels=["scope"],
            )
            lag.add_metric(["cluster"], max(0, orthanc_last - (cursor.last_seq if cursor else 0)))
            families.append(lag)
        return families

    def _outbox(self, session: Session) -> list[Metric]:
        outbound = Hl7Message.direction == Hl7Direction.OUTBOUND
        depth = GaugeMetricFamily(
            "sidecar_hl7_outbox_depth",
            "Results and status updates for the HIS: pending (queued or retrying), failed "
            "(refused by the HIS, waiting for someone)",
            labels=["scope", "status"],
        )
        counts = dict(
            session.exec(
                select(Hl7Message.status, func.count())
                .where(outbound, col(Hl7Message.status).in_(_OUTBOX_STATUSES))
                .group_by(col(Hl7Message.status))
            ).all()
        )
        for status in _OUTBOX_STATUSES:
            depth.add_metric(["cluster", status.value], counts.get(status, 0))
        oldest = session.exec(
            select(func.min(Hl7Message.received_at)).where(
                outbound, Hl7Message.status == Hl7MessageStatus.PENDING
            )
        ).one()
        age = GaugeMetricFamily(
            "sidecar_hl7_outbox_oldest_age_seconds",
            "Age of the oldest pending message for the HIS (0: none waiting)",
            labels=["scope"],
        )
        age.add_metric(["cluster"], _age(self.now, oldest))
        return [depth, age]

    def _findings(self, session: Session) -> list[Metric]:
        overdue_now = case(
            (
                col(CriticalFinding.acknowledge_by).is_not(None)
                & (col(CriticalFinding.acknowledge_by) <= self.now),
                1,
            ),
            else_=0,
        )
        rows = session.exec(
            select(CriticalFinding.severity, func.count(), func.sum(overdue_now))
            .where(col(CriticalFinding.status).in_(UNACKNOWLEDGED))
            .group_by(col(CriticalFinding.severity))
        ).all()
        waiting = GaugeMetricFamily(
            "sidecar_critical_findings_unacknowledged",
            "Critical findings not yet acknowledged, by severity",
            labels=["scope", "severity"],
        )
        overdue = GaugeMetricFamily(
            "sidecar_critical_findings_overdue",
            "Critical findings not acknowledged past their severity's deadline, by severity",
            labels=["scope", "severity"],
        )
        found = {known(severity, SEVERITIES): (n, late or 0) for severity, n, late in rows}
        for severity in sorted(SEVERITIES):
            n, late = found.get(severity, (0, 0))
            waiting.add_metric(["cluster", severity], n)
            overdue.add_metric(["cluster", severity], late)
        return [waiting, overdue]

    def _worklist(self, session: Session) -> list[Metric]:
        priority = priority_of()
        late = case((self.policy.overdue_condition(self.now), 1), else_=0)
        rows = session.exec(
            select(priority, func.count(), func.sum(late))
            .select_from(Study)
            .outerjoin(StudyReading, col(StudyReading.study_id) == col(Study.id))
            .where(col(Study.status).in_(READY_TO_READ), col(Study.images_deleted_at).is_(None))
            .group_by(priority)
        ).all()
        waiting = GaugeMetricFamily(
            "sidecar_reading_worklist_waiting",
            "Studies ready to read and not yet signed final, by priority",
            labels=["scope", "priority"],
        )
        overdue = GaugeMetricFamily(
            "sidecar_reading_worklist_overdue",
            "Studies ready to read past their priority's reading target, by priority",
            labels=["scope", "priority"],
        )
        found: dict[str, tuple[int, int]] = {}
        for value, n, over in rows:
            label = known(value, PRIORITIES, other="ROUTINE")
            before = found.get(label, (0, 0))
            found[label] = (before[0] + n, before[1] + (over or 0))
        for label in sorted(PRIORITIES):
            n, over = found.get(label, (0, 0))
            waiting.add_metric(["cluster", label], n)
            overdue.add_metric(["cluster", label], over)
        return [waiting, overdue]


_OUTBOX_STATUSES = (Hl7MessageStatus.PENDING, Hl7MessageStatus.FAILED)


def _age(now: datetime, since: datetime | None) -> float:
    return 0.0 if since is None else max(0.0, (now - since).total_seconds())
