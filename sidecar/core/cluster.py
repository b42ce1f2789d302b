"""Several nodes on one database: who is alive, and which node does each background job.

A node is one sidecar process (with the Orthanc, MLLP listener and front beside it). Nodes form a
cluster by sharing DATABASE_URL (PostgreSQL). There is no primary: every node serves the API,
HL7, DICOM and the viewer; the background jobs that must be done once (an outbox sending in
order, a scan raising escalations, the reading of Orthanc's change log) each run on one node at a
time, under a **lease** kept in the database.

Why leases, one per job, rather than claiming items one by one (SELECT ... FOR UPDATE SKIP
LOCKED): the outboxes must send in order per order over one connection to the HIS, and a second
sender would overtake the first; the scans (escalation, overdue reading, deletion checks) and the
change log are whole-table rounds that two nodes would repeat; and every job's items already live
in tables, so whichever node holds the lease finds all of them, including those a dead node was
working on. None of these jobs is where the cluster's throughput comes from (C-STORE, HL7 intake,
the API and the viewer are served by every node).

Why leases rather than PostgreSQL advisory locks: a session lock is held as long as the
connection lives, and a node that hangs (stopped, swapping, partitioned from its clients) keeps
its connection, so the job would wait on it. A lease ends by itself: the holder renews it every
`renew_every` seconds from a thread of its own; when renewals stop, for whatever reason, another
node takes the job within CLUSTER_LEASE_SECONDS.

Timing, with L = CLUSTER_LEASE_SECONDS: a lease is granted for 2L/3 of the database's clock, and
every node renews its leases and tries to take free or expired ones every L/6. A holder that
dies is replaced at most 2L/3 + L/6 < L later. The holder believes it holds a lease until 2L/3
after it *asked* for it, by its own monotonic clock, so it stops believing before the database
lets anyone else take it: workers check `Lease.held` before each item (BackgroundWorker's
`stopping`). Expiry is read on the database's clock only, so nodes' clocks need not agree.

With SQLite there is one node: a second sidecar process on the same database file is refused at
start (`NodeRefused`), since SQLite is not a database several machines can share.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import IO

from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlmodel import Session, col, select

from sidecar.core.cluster_admission import lock_sqlite_node
from sidecar.core.cluster_models import (
    ClusterNode,
    Lease,
    NodeRefused,
    database_now,
    secret_fingerprint,
)
from sidecar.core.models import utcnow

log = logging.getLogger(__name__)

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


class Cluster:
    """This node's membership: its heartbeat, the leases of the jobs it runs, and (PostgreSQL)
    the notifications nodes send each other (`notify`, `subscribe`)."""

    WAKE_CHANNEL = "sidecar_wake"

    def __init__(
        self,
        engine: Engine,
        *,
        node_name: str,
        lease_seconds: float,
        jwt_secret: str,
        database_url: str,
    ) -> None:
        self.engine = engine
        self.node_name = node_name
        self.instance = secrets.token_hex(8)
        self.lease_seconds = lease_seconds
        self.lease_ttl = lease_seconds * 2 / 3
        self.renew_every = lease_seconds / 6
        self.started_at = utcnow()
        self._fingerprint = secret_fingerprint(jwt_secret)
        self._database_url = database_url
        self._postgresql = engine.dialect.name == "postgresql"
        self._leases: dict[str, Lease] = {}
        self._subscribers: dict[str, list[Callable[[str], None]]] = {}
        self._on_reconnect: list[Callable[[], object]] = []
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._node_lock: IO[bytes] | None = None
        self.last_error: str | None = None
        self.listening = False

    @property
    def shared(self) -> bool:
        """Whether other nodes may share this database (PostgreSQL)."""
        return self._postgresql

    # -- what runs here -------------------------------------------------------------------------

    def lease(self, job: str, on_gained: Callable[[], None] | None = None) -> Lease:
        """The lease of `job`, which this node will compete for once started."""
        lease = self._leases.setdefault(job, Lease(job))
        if on_gained is not None:
            lease.on_gained = on_gained
        return lease

    def subscribe(self, channel: str, callback: Callable[[str], None]) -> None:
        """`callback(payload)` for every notification on `channel`, from any node (this one
        too). PostgreSQL only; on SQLite nothing arrives (one node: nothing to hear)."""
        self._subscribers.setdefault(channel, []).append(callback)

    def on_reconnect(self, callback: Callable[[], object]) -> None:
        """Called after the notification connection was lost and is back: what was notified
        meanwhile was missed, so subscribers catch up from the database."""
        self._on_reconnect.append(callback)

    def notify(self, channel: str, payload: str) -> None:
        """Sends a notification to every node (PostgreSQL); on SQLite, straight to this
        node's subscribers."""
        if not self._postgresql:
            self._dispatch(channel, payload)
            return
        with self.engine.connect() as connection:
            connection.execute(
                text("SELECT pg_notify(:channel, :payload)"),
                {"channel": channel, "payload": payload},
            )
            connection.commit()

    def wake_holder(self, job: str) -> None:
        """Asks whichever node holds `job` to run a round now."""
        self.notify(self.WAKE_CHANNEL, job)

    # -- joining and leaving --------------------------------------------------------------------

    def join(self) -> None:
        """Checks this node may join, records it, and takes the leases it can, before the
        workers start. NodeRefused: it may not (the message says why)."""
        if self._postgresql:
            self._wait_until_admitted()
        else:
            self._lock_sqlite_file()  # the one node: nobody else to agree with
        self.tick()
        log.info(
            "node %s joined (%s); leases held: %s",
            self.node_name,
            "PostgreSQL cluster" if self._postgresql else "SQLite: single node",
            ", ".join(sorted(job for job, lease in self._leases.items() if lease.held)) or "none",
        )

    def _wait_until_admitted(self) -> None:
        deadline = time.monotonic() + self.lease_ttl + self.renew_every
        while True:
            with Session(self.engine) as session:
                refusal = self._refusal(session)
            if refusal is None:
                return
            if refusal[1] or time.monotonic() >= deadline:
                raise NodeRefused(refusal[0])
            # The same name, another instance: a previous run of this node that died without
            # leaving, whose heartbeat is still fresh. Wait for it to go stale.
            time.sleep(min(1.0, self.renew_every))

    def _refusal(self, session: Session) -> tuple[str, bool] | None:
        """Why this node may not join now, and whether that is final (or may pass)."""
        fresh_after = database_now(session) - timedelta(seconds=self.lease_ttl)
        live = session.exec(
            select(ClusterNode).where(
                col(ClusterNode.last_heartbeat_at) > fresh_after,
                col(ClusterNode.stopped_at).is_(None),
            )
        ).all()
        for node in live:
            # Its own previous run (a crash) may have had another secret: the name check waits
            # for that one to go stale instead.
            if node.name != self.node_name and node.secret_fingerprint != self._fingerprint:
                return (
                    f"node {node.name} is running with another JWT_SECRET: every node of a"
                    " cluster needs the same JWT_SECRET (a session opened on one node is used"
                    " on the others)",
                    True,
                )
        for node in live:
            if node.name == self.node_name and node.instance != self.instance:
                return (
                    f"NODE_NAME {self.node_name!r} is in use by a running node (heartbeat"
                    f" {node.last_heartbeat_at.isoformat()}): give each node its own NODE_NAME",
                    False,
                )
        return None

    def _lock_sqlite_file(self) -> None:
        self._node_lock = lock_sqlite_node(self._database_url)

    def start(self) -> None:
        self._stopping.clear()
        self._spawn(self._heartbeat, "cluster-heartbeat")
        if self._postgresql:
            self._spawn(self._listen, "cluster-listen")

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        """Leaves: the leases are released at once (another node takes them now rather than
        after they expire) and the node is marked stopped."""
        self._stopping.set()
        for thread in self._threads:
            thread.join(10)
        self._threads.clear()
        for lease in self._leases.values():
            lease._lost()
        try:
            with Session(self.engine) as session:
                session.execute(
                    text(
                        "UPDATE cluster_lease SET holder = NULL, holder_node = NULL,"
                        " expires_at = NULL WHERE holder = :instance"
                    ),
                    {"instance": self.instance},
                )
                node = session.get(ClusterNode, self.node_name)
                if node is not None and node.instance == self.instance:
                    node.stopped_at = utcnow()
                    session.add(node)
                session.commit()
        except Exception as exc:  # the database gone: the leases expire by themselves
            log.warning("node %s: leases not released (%s)", self.node_name, type(exc).__name__)
        if self._node_lock is not None:
            self._node_lock.close()
            self._node_lock = None

    # -- the heartbeat --------------------------------------------------------------------------

    def _heartbeat(self) -> None:
        while not self._stopping.wait(self.renew_every):
            try:
                self.tick()
                self.last_error = None
            except Exception as exc:
                self.last_error = type(exc).__name__
                log.warning("node %s: heartbeat failed (%s)", self.node_name, type(exc).__name__)

    def tick(self) -> None:
        """One heartbeat: this node's row, then every lease renewed or taken where free, in
        one transaction. Workers that gained a lease are woken."""
        asked_at = time.monotonic()
        gained: list[Lease] = []
        with Session(self.engine) as session:
            now = database_now(session)
            node = session.get(ClusterNode, self.node_name)
            if node is None:
                node = ClusterNode(
                    name=self.node_name,
                    instance=self.instance,
                    started_at=self.started_at,
                    last_heartbeat_at=now,
                    secret_fingerprint=self._fingerprint,
                )
            node.instance, node.started_at = self.instance, self.started_at
            node.last_heartbeat_at, node.stopped_at = now, None
            node.secret_fingerprint = self._fingerprint
            session.add(node)
            session.flush()
            granted: dict[str, int] = {}
            for job in self._leases:
                term = self._acquire(session, job, now)
                if term is not None:
                    granted[job] = term
            session.commit()
        until = asked_at + self.lease_ttl
        for job, lease in self._leases.items():
            if job in granted:
                if lease._granted(until, granted[job]):
                    log.info("node %s now runs %s", self.node_name, job)
                    gained.append(lease)
            elif lease.held:
                log.warning("node %s no longer runs %s", self.node_name, job)
                lease._lost()
        for lease in gained:
            if lease.on_gained is not None:
                lease.on_gained()

    def _acquire(self, session: Session, job: str, now: datetime) -> int | None:
        dialect = "postgresql" if self._postgresql else "sqlite"
        row = session.execute(
            text(_ACQUIRE[dialect]),
            {
                "job": job,
                "instance": self.instance,
                "node": self.node_name,
                "ttl": self.lease_ttl,
                "now": now,
                "expires": now + timedelta(seconds=self.lease_ttl),
            },
        ).first()
        return None if row is None else int(row[0])

    # -- notifications between nodes (PostgreSQL LISTEN/NOTIFY) ---------------------------------

    def _listen(self) -> None:
        import psycopg

        conninfo = make_url(self._database_url).set(drivername="postgresql")
        first = True
        while not self._stopping.is_set():
            try:
                # TCP keepalives: a connection that died silently (the network between this
                # node and the database cut) is noticed within seconds, not hours, and what was
                # notified meanwhile is caught up on reconnection.
                with psycopg.connect(
                    conninfo.render_as_string(hide_password=False),
                    autocommit=True,
                    keepalives=1,
                    keepalives_idle=5,
                    keepalives_interval=2,
                    keepalives_count=3,
                ) as connection:
                    for channel in (self.WAKE_CHANNEL, *self._subscribers):
                        connection.execute(f'LISTEN "{channel}"')
                    self.listening = True
                    if not first:
                        self._caught_up()
                    first = False
                    while not self._stopping.is_set():
                        for notice in connection.notifies(timeout=1.0):
                            self._dispatch(notice.channel, notice.payload)
            except Exception as exc:
                self.listening = False
                if self._stopping.is_set():
                    return
                log.warning(
                    "node %s: notifications from other nodes interrupted (%s); reconnecting",
                    self.node_name,
                    type(exc).__name__,
                )
                first = False
                self._stopping.wait(1.0)
        self.listening = False

    def _caught_up(self) -> None:
        for callback in self._on_reconnect:
            try:
                callback()
            except Exception:
                log.exception("node %s: catching up after a reconnection failed", self.node_name)
        for lease in self._leases.values():
            if lease.held and lease.on_gained is not None:
                lease.on_gained()

    def _dispatch(self, channel: str, payload: str) -> None:
        if channel == self.WAKE_CHANNEL:
            lease = self._leases.get(payload)
            if lease is not None and lease.held and lease.on_gained is not None:
                lease.on_gained()
            return
        for callback in self._subscribers.get(channel, ()):
            try:
                callback(payload)
            except Exception:
                log.exception("node %s: a %s notification failed", self.node_name, channel)
