"""The tables and values of a cluster (sidecar.core.cluster): nodes' heartbeats, job leases,
and what a node knows of its own leases."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlmodel import Column, Field, Session, SQLModel, col, select

from sidecar.core.models import UTCDateTime, utcnow

#: Nodes whose last heartbeat is older than this are not listed as members any more.
MEMBERSHIP_WINDOW = timedelta(minutes=1)


class NodeRefused(RuntimeError):
    """This node cannot join: the message says why and what to change."""


class ClusterNode(SQLModel, table=True):
    """A node's heartbeat: written every `renew_every` seconds while it runs."""

    __tablename__ = "cluster_node"

    name: str = Field(primary_key=True, max_length=64)
    #: A random id of the running process, new at every start: two processes claiming the
    #: same NODE_NAME are told apart (and the second is refused).
    instance: str = Field(max_length=32)
    started_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    last_heartbeat_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    #: A digest of the node's JWT_SECRET: nodes must share it (a session made on one node is
    #: used on another), and one that differs is refused at start. Not the secret, nor usable
    #: to find it.
    secret_fingerprint: str = Field(max_length=16)
    stopped_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, nullable=True))


class JobLease(SQLModel, table=True):
    """Which node runs a background job, until when (the database's clock)."""

    __tablename__ = "cluster_lease"

    job: str = Field(primary_key=True, max_length=64)
    holder: str | None = Field(default=None, max_length=32)  # ClusterNode.instance
    holder_node: str | None = Field(default=None, max_length=64)  # ClusterNode.name
    expires_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, nullable=True))
    #: Goes up by one each time the job changes hands: how many takeovers there were.
    term: int = 0


class Lease:
    """One job's lease as this node knows it. `held` is this node's own, conservative view:
    it turns False before the database would let another node take the job."""

    def __init__(self, job: str, *, wanted: bool = True) -> None:
        self.job = job
        #: Whether this node competes for the job: only while its worker runs here.
        self.wanted = wanted
        #: Called when this node gains the job, and when it loses it (the worker is woken to
        #: start, or to let go of what it holds, such as its connection to the HIS).
        self.on_gained: Callable[[], None] | None = None
        self.on_lost: Callable[[], None] | None = None
        self._held_until = 0.0  # monotonic
        self._holding = False  # granted since it was last lost
        self.term: int | None = None

    @property
    def held(self) -> bool:
        return time.monotonic() < self._held_until

    @property
    def remaining(self) -> float:
        """Seconds until this node stops believing it holds the job (0: it does not)."""
        return max(0.0, self._held_until - time.monotonic())

    def _granted(self, until: float, term: int) -> bool:
        """Records a grant; True when this node did not hold the job before."""
        gained = not self.held
        self._held_until, self.term, self._holding = until, term, True
        return gained

    def _lost(self) -> None:
        """Not granted (any more): the worker is told once, however long ago it lapsed."""
        self._held_until = 0.0
        if self._holding:
            self._holding = False
            if self.on_lost is not None:
                self.on_lost()


def database_now(session: Session) -> datetime:
    """The database's clock (PostgreSQL's), which decides leases and liveness: nodes' own clocks
    need not agree. SQLite has one node, whose clock it is."""
    if session.get_bind().dialect.name != "postgresql":
        return utcnow()
    now: datetime = session.execute(text("SELECT clock_timestamp()")).scalar_one()
    return now


def secret_fingerprint(secret: str) -> str:
    return hashlib.sha256(b"sidecar-cluster-secret-check\x00" + secret.encode()).hexdigest()[:16]


def live_nodes(session: Session, within: timedelta) -> set[str]:
    """The names of the nodes running now: not stopped, and a heartbeat within `within` of the
    database's clock (nodes' own clocks need not agree). What only a node itself can do, such
    as following its Orthanc's jobs, falls to the others once it is not among them."""
    now = database_now(session)
    return set(
        session.exec(
            select(ClusterNode.name).where(
                col(ClusterNode.last_heartbeat_at) > now - within,
                col(ClusterNode.stopped_at).is_(None),
            )
        ).all()
    )


def members(session: Session) -> list[dict[str, Any]]:
    """The nodes seen within MEMBERSHIP_WINDOW, for /health."""
    since = database_now(session) - MEMBERSHIP_WINDOW
    nodes = session.exec(
        select(ClusterNode)
        .where(col(ClusterNode.last_heartbeat_at) > since)
        .order_by(col(ClusterNode.name))
    ).all()
    return [
        {
            "name": node.name,
            "startedAt": node.started_at.isoformat(),
            "lastHeartbeatAt": node.last_heartbeat_at.isoformat(),
            "stopped": node.stopped_at is not None,
        }
        for node in nodes
    ]


def holders(session: Session) -> dict[str, str | None]:
    """Each job and the node holding its lease now (None: nobody), for /health."""
    now = database_now(session)
    return {
        lease.job: (
            lease.holder_node
            if lease.holder_node and lease.expires_at and lease.expires_at > now
            else None
        )
        for lease in session.exec(select(JobLease).order_by(col(JobLease.job))).all()
    }


_ACQUIRE = {
    # The database's clock decides expiry; a row held by another live instance is left alone
    # (no row returned). Renewing keeps the term; taking over adds one.
    "postgresql": """
        INSERT INTO cluster_lease (job, holder, holder_node, expires_at, term)
        VALUES (:job, :instance, :node, clock_timestamp() + make_interval(secs => :ttl), 1)
        ON CONFLICT (job) DO UPDATE SET
            holder = EXCLUDED.holder,
            holder_node = EXCLUDED.holder_node,
            expires_at = EXCLUDED.expires_at,
            term = cluster_lease.term
                + CASE WHEN cluster_lease.holder = EXCLUDED.holder THEN 0 ELSE 1 END
        WHERE cluster_lease.holder = EXCLUDED.holder
            OR cluster_lease.holder IS NULL
            OR cluster_lease.expires_at < clock_timestamp()
        RETURNING term
    """,
    # One node, the only process using the file (its lock says so): a lease left by a run that
    # died is this node's at once, not after it expires.
    "sqlite": """
        INSERT INTO cluster_lease (job, holder, holder_node, expires_at, term)
        VALUES (:job, :instance, :node, :expires, 1)
        ON CONFLICT (job) DO UPDATE SET
            holder = excluded.holder,
            holder_node = excluded.holder_node,
            expires_at = excluded.expires_at,
            term = cluster_lease.term
                + CASE WHEN cluster_lease.holder = excluded.holder THEN 0 ELSE 1 END
        RETURNING term
    """,
}


def acquire_lease(
    session: Session, job: str, *, instance: str, node: str, ttl: float, now: datetime
) -> int | None:
    """Renews `job`'s lease for this instance, or takes it where free or expired: its term,
    or None when another live instance holds it. In the caller's transaction."""
    dialect = "postgresql" if session.get_bind().dialect.name == "postgresql" else "sqlite"
    row = session.execute(
        text(_ACQUIRE[dialect]),
        {
            "job": job,
            "instance": instance,
            "node": node,
            "ttl": ttl,
            "expires": now + timedelta(seconds=ttl),
        },
    ).first()
    return None if row is None else int(row[0])
