"""Several nodes on one database: who is alive, and which node does each background job.

A node is one sidecar process (with its Orthanc, listeners and front). Nodes form a cluster by
sharing DATABASE_URL (PostgreSQL); there is no primary. The background jobs that must be done
once each run on one node at a time, under a **lease** in the database (`cluster_lease`).

Leases, one per job, rather than claims per item (SELECT ... FOR UPDATE SKIP LOCKED): the outbox
sends in order per order over one HIS connection, the other jobs are rounds over whole tables, and
every job's items live in tables, so the holder finds all of them, a dead node's included.
Leases rather than advisory locks: a session lock lives as long as its connection, which a hung
node keeps; a lease ends by itself when its holder stops renewing it.

Timing, with L = CLUSTER_LEASE_SECONDS: a lease is granted for 2L/3 of the database's clock; every
node renews its leases and tries to take free or expired ones every L/6, so a dead holder is
replaced within 2L/3 + L/6 < L. The holder believes it holds a lease until 2L/3 after it *asked*,
by its monotonic clock, so it stops before the database lets another node start: workers check
`Lease.held` before each item (BackgroundWorker's `stopping`).

With SQLite there is one node: a second process on the same file is refused (`NodeRefused`).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import IO

from sqlalchemy import Engine, text
from sqlmodel import Session

from sidecar.core.cluster_admission import lock_sqlite_node, refusal_to_join
from sidecar.core.cluster_listener import NodeListener
from sidecar.core.cluster_models import (
    ClusterNode,
    Lease,
    NodeRefused,
    acquire_lease,
    database_now,
    secret_fingerprint,
)
from sidecar.core.models import utcnow

log = logging.getLogger(__name__)


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
        self._tick_lock = threading.Lock()  # the heartbeat, and a worker starting, take leases
        self._joined = False
        self._replaced = False  # another process was admitted under this NODE_NAME
        self.last_error: str | None = None
        self._listener = NodeListener(
            database_url,
            node_name,
            channels=lambda: (self.WAKE_CHANNEL, *self._subscribers),
            deliver=self._dispatch,
            caught_up=self._caught_up,
            # Three heartbeats, and a margin for one held up by a slow database.
            echo_timeout=3 * self.renew_every + 2.0,
        )

    @property
    def listening(self) -> bool:
        """Whether this node hears the others now (PostgreSQL)."""
        return self._listener.listening

    @property
    def shared(self) -> bool:
        """Whether other nodes may share this database (PostgreSQL)."""
        return self._postgresql

    # -- what runs here -------------------------------------------------------------------------

    def lease(
        self,
        job: str,
        on_gained: Callable[[], None] | None = None,
        *,
        wanted: bool = True,
        on_lost: Callable[[], None] | None = None,
    ) -> Lease:
        """The lease of `job`, which this node competes for while `wanted` (a worker wants it
        from its start to its stop: `want`, `let_go`)."""
        lease = self._leases.setdefault(job, Lease(job, wanted=wanted))
        lease.on_gained = on_gained or lease.on_gained
        lease.on_lost = on_lost or lease.on_lost
        return lease

    def want(self, job: str) -> None:
        """This node runs `job`'s worker from now: it competes for the lease, at once once
        joined (not at the next heartbeat)."""
        self._leases[job].wanted = True
        if self._joined:
            self.tick()

    def let_go(self, job: str) -> None:
        """This node stopped `job`'s worker: the lease is released now if held, for another
        node to take without waiting for it to expire."""
        lease = self._leases[job]
        lease.wanted = False
        if self._joined:
            self.tick()

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
        self._claim_name()
        self._joined = True
        self.tick()
        if self._postgresql:
            # Listening before the caller rebuilds anything from the database (the worklist):
            # what another node commits from now on is heard; what came before, read.
            self._stopping.clear()
            self._spawn(lambda: self._listener.run(self._stopping), "cluster-listen")
            deadline = time.monotonic() + 10.0
            while not self.listening and time.monotonic() < deadline:
                time.sleep(0.02)
            if not self.listening:
                log.warning("node %s: not hearing the other nodes yet", self.node_name)
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
                refusal = refusal_to_join(
                    session,
                    node_name=self.node_name,
                    instance=self.instance,
                    fingerprint=self._fingerprint,
                    within=timedelta(seconds=self.lease_ttl),
                )
            if refusal is None:
                return
            if refusal[1] or time.monotonic() >= deadline:
                raise NodeRefused(refusal[0])
            # The same name, another instance: a previous run of this node that died without
            # leaving, whose heartbeat is still fresh. Wait for it to go stale.
            time.sleep(min(1.0, self.renew_every))

    def _lock_sqlite_file(self) -> None:
        self._node_lock = lock_sqlite_node(self._database_url)

    def start(self) -> None:
        """The heartbeat, from now on (the listener runs from `join`)."""
        self._stopping.clear()
        self._spawn(self._heartbeat, "cluster-heartbeat")

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
        self._joined = False
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
        self._listener.expect_echoes_from_now()
        try:
            while not self._stopping.wait(self.renew_every):
                try:
                    self.tick()
                    self.last_error = None
                except NodeRefused as exc:
                    self.last_error = str(exc)
                except Exception as exc:
                    self.last_error = type(exc).__name__
                    log.warning("node %s: heartbeat failed (%s)", self.node_name, self.last_error)
        finally:
            self._listener.expect_echoes = False

    def _claim_name(self) -> None:
        """This process takes its NODE_NAME's row (admitted: nobody else runs under it)."""
        with Session(self.engine) as session:
            now = database_now(session)
            node = session.get(ClusterNode, self.node_name) or ClusterNode(
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
            session.commit()

    def tick(self) -> None:
        """One heartbeat: this node's row, then every lease it wants renewed or taken where
        free, and those it no longer wants released, in one transaction. Workers that gained
        or lost a lease are woken. NodeRefused: another process was admitted under this
        NODE_NAME meanwhile (this one was paused past its leases): it runs no job any more."""
        with self._tick_lock:
            self._tick()

    def _tick(self) -> None:
        if self._replaced:
            raise NodeRefused(self._replaced_reason())
        asked_at = time.monotonic()
        gained: list[Lease] = []
        with Session(self.engine) as session:
            now = database_now(session)
            beat = session.execute(
                text(
                    "UPDATE cluster_node SET last_heartbeat_at = :now, stopped_at = NULL"
                    " WHERE name = :name AND instance = :instance"
                ),
                {"now": now, "name": self.node_name, "instance": self.instance},
            )
            if beat.rowcount == 0:  # type: ignore[attr-defined]
                session.rollback()
                self._replaced = True
                for lease in self._leases.values():
                    lease._lost()
                log.error("node %s: %s", self.node_name, self._replaced_reason())
                raise NodeRefused(self._replaced_reason())
            granted: dict[str, int] = {}
            for job, lease in self._leases.items():
                if lease.wanted:
                    term = acquire_lease(
                        session,
                        job,
                        instance=self.instance,
                        node=self.node_name,
                        ttl=self.lease_ttl,
                        now=now,
                    )
                    if term is not None:
                        granted[job] = term
                else:
                    session.execute(
                        text(
                            "UPDATE cluster_lease SET holder = NULL, holder_node = NULL,"
                            " expires_at = NULL WHERE job = :job AND holder = :instance"
                        ),
                        {"job": job, "instance": self.instance},
                    )
            if self.listening:  # heard back by this node's listener: the connection works
                session.execute(
                    text("SELECT pg_notify(:channel, :payload)"),
                    {"channel": self.WAKE_CHANNEL, "payload": self._echo},
                )
            session.commit()
        until = asked_at + self.lease_ttl
        for job, lease in self._leases.items():
            if job in granted:
                if lease._granted(until, granted[job]):
                    log.info("node %s now runs %s", self.node_name, job)
                    gained.append(lease)
            else:
                if lease.held:
                    log.warning("node %s no longer runs %s", self.node_name, job)
                lease._lost()
        for lease in gained:
            if lease.on_gained is not None:
                lease.on_gained()

    def _replaced_reason(self) -> str:
        return (
            f"another process was admitted under NODE_NAME {self.node_name!r} while this one"
            " did not answer (paused past its leases): this process runs no background job"
            " any more; stop it"
        )

    @property
    def _echo(self) -> str:
        return f"echo:{self.instance}"

    # -- notifications between nodes (PostgreSQL LISTEN/NOTIFY) ---------------------------------

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
        if channel == self.WAKE_CHANNEL and payload == self._echo:
            self._listener.heard_echo()
            return
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
