"""What this process counts as it works, for GET /metrics (sidecar.operations.metrics_router):
studies registered, HL7 messages in and out, critical findings, reports signed, HTTP requests.

Module-level, in prometheus_client's process-wide registry, as is usual: a counter belongs to the
process, whichever app object counted (tests build many apps in one process and compare
deltas). Backlogs read from the database at scrape time are not here but in
sidecar.operations.metrics_backlog. This module imports no domain package, so that every domain
may import it; the recording functions take plain values, and the session of the work they count
when that work is counted once committed (on_commit, at the end).

No label may carry patient data: labels are message types, ACK codes, severities, priorities,
outcomes, route templates and statuses, each checked against a fixed set of what it may be (a
value fed from a message is one of a list, else "other"), which also bounds the number of
series: a series, once created, lives as long as the process, so a label an MLLP sender could
choose would let it grow the memory without bound.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from prometheus_client import Counter, Histogram
from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

from hl7.adt import ADT_EVENTS
from hl7.errors import Hl7Error
from hl7.orders import SUPPORTED_MESSAGES

#: Minutes to days: registration waits for StableAge, findings and reports for people.
_SECONDS_TO_MINUTES = (0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
_MINUTES_TO_DAYS = (60, 300, 600, 900, 1800, 3600, 7200, 14400, 28800, 86400, 172800, 604800)

STUDIES_REGISTERED = Counter(
    "sidecar_studies_registered",
    "Studies registered from Orthanc with their first images (counted once per study)",
)
STUDIES_INSTANCES = Counter(
    "sidecar_studies_instances_registered", "Instances (images) of studies newly registered"
)
STUDIES_REGISTRATION_LAG = Histogram(
    "sidecar_studies_registration_lag_seconds",
    "From Orthanc's StableStudy notice to the study registered and visible in the API",
    buckets=_SECONDS_TO_MINUTES,
)
HL7_RECEIVED = Counter(
    "sidecar_hl7_messages_received",
    "HL7 messages received over MLLP, by message type and the ACK code answered",
    ["message_type", "ack_code"],
)
HL7_ACK_LATENCY = Histogram(
    "sidecar_hl7_ack_latency_seconds",
    "From an HL7 message received to its ACK ready, by message type",
    ["message_type"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
HL7_SENT = Counter(
    "sidecar_hl7_messages_sent",
    "Results (ORU^R01) and order status updates (ORM^O01) sent to the HIS, by outcome: "
    "delivered (AA/CA), refused (any other ACK), no_answer (to be retried)",
    ["kind", "outcome"],
)
FINDINGS_RAISED = Counter(
    "sidecar_critical_findings_raised", "Critical findings raised, by severity", ["severity"]
)
FINDINGS_ACKNOWLEDGED = Counter(
    "sidecar_critical_findings_acknowledged",
    "Critical findings acknowledged, by severity",
    ["severity"],
)
FINDINGS_TIME_TO_ACKNOWLEDGE = Histogram(
    "sidecar_critical_findings_time_to_acknowledge_seconds",
    "From a critical finding raised to its acknowledgement, by severity",
    ["severity"],
    buckets=_MINUTES_TO_DAYS,
)
REPORTS_SIGNED = Counter(
    "sidecar_reports_signed", "Reports signed final, by the study's priority", ["priority"]
)
REPORTS_TURNAROUND = Histogram(
    "sidecar_reports_turnaround_seconds",
    "From a study ready to read (its images complete) to its report signed final, by priority",
    ["priority"],
    buckets=_MINUTES_TO_DAYS,
)
HTTP_DURATION = Histogram(
    "http_request_duration_seconds",
    "HTTP requests to the sidecar by route template, method and status, to the end of the body",
    ["route", "method", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

#: MSH-9 values counted under their own name: what the intake takes (orders, ADT), and what a
#: hospital feed commonly sends besides (the ADT it refuses, results, scheduling, documents),
#: to tell a misrouted feed from noise. Any other value is "other".
MESSAGE_TYPES = frozenset(
    {f"{kind}^{trigger}" for kind, trigger in SUPPORTED_MESSAGES}
    | {f"ADT^{trigger}" for trigger in ADT_EVENTS}
    | {f"ADT^{trigger}" for trigger in ("A02", "A03", "A06", "A07", "A11", "A12", "A13")}
    | {"ORU^R01", "OML^O21", "SIU^S12", "MDM^T02"}
)
ACK_CODES = frozenset({"AA", "AE", "AR", "CA", "CE", "CR"})
PRIORITIES = frozenset({"STAT", "URGENT", "ROUTINE"})
SEVERITIES = frozenset({"CRITICAL", "HIGH", "MODERATE", "LOW"})
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def known(value: object, allowed: frozenset[str], other: str = "other") -> str:
    """`value` as a label if it is one of `allowed`, else `other`."""
    text = str(getattr(value, "value", value) or "")
    return text if text in allowed else other


def message_type_label(message_type: str, trigger: str) -> str:
    """ORM^O01, ADT^A08...: a sender's MSH-9 if one of MESSAGE_TYPES, else "other"."""
    return known(f"{message_type}^{trigger}", MESSAGE_TYPES)


def message_type_of(raw: bytes) -> str:
    """MSH-9 of a message as received, as a label. Read from the bytes (a split of the first
    segment), not parsed: this runs for every message, and the intake parses it anyway."""
    if raw[:3] != b"MSH" or len(raw) < 8:
        return "other"
    first = raw.split(b"\r", 1)[0].split(b"\n", 1)[0]
    fields = first.split(raw[3:4])  # MSH-1 is the separator itself: MSH-9 is fields[8]
    if len(fields) < 9:
        return "other"
    parts = [*fields[8].split(raw[4:5]), b""]
    return message_type_label(
        parts[0].decode("ascii", "replace").strip(), parts[1].decode("ascii", "replace").strip()
    )


def ack_code_of(ack: bytes) -> str:
    """MSA-1 of an ACK as sent (AA, AE, AR...), "other" when it has none readable."""
    separator = ack[3:4] or b"|"
    for segment in ack.split(b"\r"):
        if segment[:4] == b"MSA" + separator:
            return known(segment[4:6].decode("ascii", "replace"), ACK_CODES)
    return "other"


Peer = TypeVar("Peer")


def metered_hl7(
    handler: Callable[[bytes, Peer], Awaitable[bytes]],
) -> Callable[[bytes, Peer], Awaitable[bytes]]:
    """The MLLP handler, counting each message by type and ACK code and timing its ACK. A
    handler that raises is counted with the code the MLLP server answers for it (an HL7
    error's, AR for anything else). Messages over the size limit never reach a handler and
    are not counted."""

    async def metered(raw: bytes, peer: Peer) -> bytes:
        started = time.perf_counter()
        code = "AR"
        try:
            answer = await handler(raw, peer)
            code = ack_code_of(answer) if isinstance(answer, bytes) and answer else "AR"
            return answer
        except Hl7Error as error:
            code = known(error.ack_code, ACK_CODES)
            raise
        except asyncio.CancelledError:  # the listener stopping: no ACK goes out at all
            code = ""
            raise
        finally:
            if code:
                kind = message_type_of(raw)
                HL7_RECEIVED.labels(kind, code).inc()
                HL7_ACK_LATENCY.labels(kind).observe(time.perf_counter() - started)

    return metered


def hl7_sent(kind: str, outcome: str) -> None:
    """One delivery attempt of the result outbox (sidecar.results.outbox), once recorded."""
    HL7_SENT.labels(kind, outcome).inc()


def finding_raised(session: Session, severity: object) -> None:
    label = known(severity, SEVERITIES)
    on_commit(session, lambda: FINDINGS_RAISED.labels(label).inc())


def finding_acknowledged(
    session: Session, severity: object, raised_at: datetime, acknowledged_at: datetime
) -> None:
    label = known(severity, SEVERITIES)
    waited = max(0.0, (acknowledged_at - raised_at).total_seconds())

    def count() -> None:
        FINDINGS_ACKNOWLEDGED.labels(label).inc()
        FINDINGS_TIME_TO_ACKNOWLEDGE.labels(label).observe(waited)

    on_commit(session, count)


def report_signed(
    session: Session, priority: str | None, ready_at: datetime | None, signed_at: datetime
) -> None:
    """A report signed final; its turnaround when the study's ready time is known."""
    label = known(priority, PRIORITIES, other="ROUTINE")  # no priority: read as routine
    turnaround = None if ready_at is None else max(0.0, (signed_at - ready_at).total_seconds())

    def count() -> None:
        REPORTS_SIGNED.labels(label).inc()
        if turnaround is not None:
            REPORTS_TURNAROUND.labels(label).observe(turnaround)

    on_commit(session, count)


# --- counted when committed ---------------------------------------------------------------------
#
# Work done in a transaction is counted when that transaction commits, not when the work is done:
# a registration or a signature rolled back (a database error, a conflict) and done again is
# counted once, and one never committed not at all. The counts wait in session.info, each with
# the transaction it was done in (a savepoint's or the session's): a savepoint that commits hands
# them to its enclosing transaction, the session's transaction that commits runs them, and any
# transaction that ends otherwise (rollback, close) drops its own.

_PENDING = "sidecar.metrics.pending"


@dataclass
class _Pending:
    transaction: SessionTransaction
    count: Callable[[], object]


def on_commit(session: Session, count: Callable[[], object]) -> None:
    """Run `count` once the transaction now in progress in `session` is committed (none in
    progress: the one the session's next statement would begin)."""
    pending: list[_Pending] | None = session.info.get(_PENDING)
    if pending is None:
        pending = session.info[_PENDING] = []
        event.listen(session, "after_commit", _committed)
        event.listen(session, "after_transaction_end", _ended)
    transaction = session.get_nested_transaction() or session.get_transaction() or session.begin()
    pending.append(_Pending(transaction, count))


def _committed(session: Session) -> None:
    # Dispatched while the transaction committing is still the session's current one.
    done = session.get_nested_transaction() or session.get_transaction()
    enclosing = done.parent if done is not None else None
    while enclosing is not None and enclosing.parent is not None and not enclosing.nested:
        enclosing = enclosing.parent  # a flush's subtransaction is no boundary
    pending: list[_Pending] = session.info[_PENDING]
    for entry in [entry for entry in pending if entry.transaction is done]:
        if enclosing is None:
            pending.remove(entry)
            entry.count()
        else:
            entry.transaction = enclosing


def _ended(session: Session, transaction: SessionTransaction) -> None:
    # After _committed: what is left of this transaction's counts was never committed.
    pending: list[_Pending] = session.info[_PENDING]
    pending[:] = [entry for entry in pending if entry.transaction is not transaction]
