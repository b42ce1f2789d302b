"""Nodes on one database (sidecar.core.cluster): a job's lease is held by one node at a time,
taken over when its holder stops renewing it, and believed held by the old holder only until
before the database lets another node take it; joining is refused where it would break the
cluster; on PostgreSQL, nodes hear each other's notifications and every node hears an order
change committed anywhere."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from alembic import command
from lease_nodes import INSERT_ORDER, LEASE_SECONDS, make_node, postgresql_only
from sqlalchemy import Engine, text
from sqlmodel import Session, col, func, select

from sidecar.accounts.models import User
from sidecar.core.background import BackgroundWorker
from sidecar.core.cluster import Cluster
from sidecar.core.cluster_models import ClusterNode, JobLease, NodeRefused, holders, members
from sidecar.core.database import alembic_config, make_engine
from sidecar.core.dependencies import Services
from sidecar.core.models import utcnow
from sidecar.lifecycle import start_up
from sidecar.main import build_services
from sidecar.orders.events import ORDER_CHANGES_CHANNEL
from sidecar.orders.listener import OrderListener
from sidecar.tables import metadata

from stack import wait_for
from testapp import app_settings


def holder(engine: Engine, job: str) -> JobLease | None:
    with Session(engine) as session:
        return session.get(JobLease, job)


class TestLeases:
    def test_one_node_holds_a_job_and_the_other_takes_it_when_the_first_leaves(
        self, engine: Engine, database_url: str, nodes: list[Cluster]
    ) -> None:
        postgresql_only(database_url)
        a = make_node(engine, database_url, "node-a")
        b = make_node(engine, database_url, "node-b")
        nodes += [a, b]
        lease_a, lease_b = a.lease("result-outbox"), b.lease("result-outbox")
        a.join()
        b.join()
        assert lease_a.held and not lease_b.held
        b.tick()
        assert not lease_b.held, "a held lease is not taken while its holder renews it"
        a.stop()  # leaving releases at once: no need to wait for the expiry
        b.tick()
        assert lease_b.held
        row = holder(engine, "result-outbox")
        assert row is not None and row.holder_node == "node-b" and row.term == 2

    def test_a_node_that_stops_renewing_loses_the_job_to_another_within_the_lease(
        self, engine: Engine, database_url: str, nodes: list[Cluster]
    ) -> None:
        """The dead node is simulated by never ticking again (no release). The other node
        takes the job within CLUSTER_LEASE_SECONDS, and by then the dead node itself no longer
        believes it holds it (its belief ends before the database's grant)."""
        postgresql_only(database_url)
        a = make_node(engine, database_url, "node-a")
        b = make_node(engine, database_url, "node-b")
        nodes += [b]
        lease_a, lease_b = a.lease("orthanc-sync"), b.lease("orthanc-sync")
        a.join()
        died_at = time.monotonic()
        b.join()
        assert lease_a.held and not lease_b.held
        b.start()  # its heartbeat keeps trying every L/6
        wait_for(lambda: lease_b.held, timeout=LEASE_SECONDS * 2, what="node B takes the job")
        took = time.monotonic() - died_at
        assert took <= LEASE_SECONDS, f"taken over after {took:.1f} s"
        assert not lease_a.held, "the dead node still believes it holds the job"
        row = holder(engine, "orthanc-sync")
        assert row is not None and row.holder_node == "node-b" and row.term == 2

    def test_each_job_is_held_by_exactly_one_node_when_many_compete(
        self, engine: Engine, database_url: str, nodes: list[Cluster]
    ) -> None:
        postgresql_only(database_url)
        jobs = ["result-outbox", "finding-notifier", "finding-escalation", "image-updates"]
        cluster = [make_node(engine, database_url, f"node-{i}") for i in range(4)]
        nodes += cluster
        leases = {node.node_name: [node.lease(job) for job in jobs] for node in cluster}
        barrier = threading.Barrier(len(cluster))

        def join(node: Cluster) -> None:
            barrier.wait()
            node.join()
            for _ in range(5):
                node.tick()

        threads = [threading.Thread(target=join, args=(node,)) for node in cluster]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        for index, job in enumerate(jobs):
            holding = [name for name, held in leases.items() if held[index].held]
            assert len(holding) == 1, f"{job} held by {holding}"
            row = holder(engine, job)
            assert row is not None and row.holder_node == holding[0]

    def test_a_single_node_holds_its_jobs_on_sqlite_too(
        self, engine: Engine, database_url: str, nodes: list[Cluster]
    ) -> None:
        a = make_node(engine, database_url, "solo")
        nodes.append(a)
        lease = a.lease("result-outbox")
        a.join()
        assert lease.held
        a.tick()
        row = holder(engine, "result-outbox")
        assert row is not None and row.holder_node == "solo" and row.term == 1


class TestJoining:
    def test_a_second_process_on_one_sqlite_file_is_refused(
        self, engine: Engine, database_url: str, nodes: list[Cluster]
    ) -> None:
        if not database_url.startswith("sqlite"):
            pytest.skip("SQLite only")
        first = make_node(engine, database_url, "first")
        nodes.append(first)
        first.join()
        second = make_node(engine, database_url, "second")
        with pytest.raises(NodeRefused, match="SQLite holds one node only"):
            second.join()
        first.stop()
        nodes.remove(first)
        second.join()  # the file is free once the first node stopped
        nodes.append(second)

    def test_a_node_with_another_jwt_secret_is_refused(
        self, engine: Engine, database_url: str, nodes: list[Cluster]
    ) -> None:
        postgresql_only(database_url)
        a = make_node(engine, database_url, "node-a")
        nodes.append(a)
        a.join()
        stranger = make_node(engine, database_url, "node-b", secret="another-" + "x" * 40)
        with pytest.raises(NodeRefused, match="same JWT_SECRET"):
            stranger.join()
        with Session(engine) as session:
            assert session.get(ClusterNode, "node-b") is None

    def test_a_second_live_process_under_one_node_name_is_refused(
        self, engine: Engine, database_url: str, nodes: list[Cluster]
    ) -> None:
        postgresql_only(database_url)
        a = make_node(engine, database_url, "node-a")
        nodes.append(a)
        a.join()
        a.start()  # keeps its heartbeat fresh while the twin waits for it to go stale
        twin = make_node(engine, database_url, "node-a")
        with pytest.raises(NodeRefused, match="in use by a running node"):
            twin.join()

    def test_a_node_restarted_after_a_crash_rejoins_under_its_name(
        self, engine: Engine, database_url: str, nodes: list[Cluster]
    ) -> None:
        """The crashed process left a fresh heartbeat and a lease: the new process waits for
        them to go stale, then takes its name and the job again."""
        postgresql_only(database_url)
        crashed = make_node(engine, database_url, "node-a")
        crashed.lease("result-outbox")
        crashed.join()
        restarted = make_node(engine, database_url, "node-a")
        nodes.append(restarted)
        lease = restarted.lease("result-outbox")
        restarted.join()
        assert lease.held
        with Session(engine) as session:
            node = session.get(ClusterNode, "node-a")
            assert node is not None and node.instance == restarted.instance


class TestNotifications:
    def test_a_notification_from_one_node_reaches_every_node(
        self, engine: Engine, database_url: str, nodes: list[Cluster]
    ) -> None:
        postgresql_only(database_url)
        heard: dict[str, list[str]] = {"node-a": [], "node-b": []}
        a = make_node(engine, database_url, "node-a")
        b = make_node(engine, database_url, "node-b")
        nodes += [a, b]
        for node in (a, b):
            node.subscribe("test_channel", heard[node.node_name].append)
            node.join()
            node.start()
        wait_for(lambda: a.listening and b.listening, timeout=10, what="both nodes listening")
        a.notify("test_channel", "hello")
        wait_for(lambda: heard["node-b"] == ["hello"], timeout=5, what="node B hears node A")
        wait_for(lambda: heard["node-a"] == ["hello"], timeout=5, what="node A hears itself")

    def test_an_order_committed_on_any_node_is_announced_to_every_node(
        self, engine: Engine, database_url: str, nodes: list[Cluster]
    ) -> None:
        """The trigger on imaging_order notifies at commit, whichever connection commits:
        nothing in the application has to remember to tell the other nodes."""
        postgresql_only(database_url)
        heard: list[str] = []
        b = make_node(engine, database_url, "node-b")
        nodes.append(b)
        b.subscribe(ORDER_CHANGES_CHANNEL, heard.append)
        b.join()
        b.start()
        wait_for(lambda: b.listening, timeout=10, what="node B listening")
        with engine.begin() as connection:
            order_id = connection.execute(
                INSERT_ORDER, {"accession": "ACC-CLUSTER-1", "uid": "1.2.826.0.1.1"}
            ).scalar_one()
            assert heard == [], "notified before the commit"
        wait_for(lambda: heard == [str(order_id)], timeout=5, what="the order's id notified")

    def test_a_rolled_back_order_change_is_not_announced(
        self, engine: Engine, database_url: str, nodes: list[Cluster]
    ) -> None:
        postgresql_only(database_url)
        heard: list[str] = []
        b = make_node(engine, database_url, "node-b")
        nodes.append(b)
        b.subscribe(ORDER_CHANGES_CHANNEL, heard.append)
        b.subscribe("test_channel", heard.append)
        b.join()
        b.start()
        wait_for(lambda: b.listening, timeout=10, what="node B listening")
        with engine.connect() as connection:
            connection.execute(INSERT_ORDER, {"accession": "ACC-CLUSTER-2", "uid": "1.2.826.0.1.2"})
            connection.rollback()
        b.notify("test_channel", "after")  # notifications arrive in commit order
        wait_for(lambda: heard, timeout=5, what="the marker notification")
        assert heard == ["after"]

    def test_a_node_whose_connection_was_cut_catches_up_and_hears_again(
        self, engine: Engine, database_url: str, nodes: list[Cluster]
    ) -> None:
        """What was notified while the connection was down is lost with it: the node is told to
        catch up from the database (its worklist rebuilt) once it listens again."""
        postgresql_only(database_url)
        heard: list[str] = []
        caught_up: list[int] = []
        b = make_node(engine, database_url, "node-b")
        nodes.append(b)
        b.subscribe("test_channel", heard.append)
        b.on_reconnect(lambda: caught_up.append(1))
        b.join()
        b.start()
        wait_for(lambda: b.listening, timeout=10, what="node B listening")
        assert caught_up == [], "no catching up on the first connection: start-up did it"
        with engine.begin() as connection:
            cut = connection.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND query LIKE 'LISTEN%'"
                    " AND pid <> pg_backend_pid()"
                )
            ).scalar_one()
        assert cut == 1
        wait_for(lambda: caught_up == [1], timeout=10, what="node B caught up")
        wait_for(lambda: b.listening, timeout=10, what="node B listening again")
        b.notify("test_channel", "again")
        wait_for(lambda: heard == ["again"], timeout=5, what="node B hears again")


class RoundCounter(BackgroundWorker):
    def __init__(self) -> None:
        super().__init__("round-counter", idle_poll=60.0)
        self.rounds = 0

    def run_once(self) -> float | None:
        self.rounds += 1
        return None


class TestWorkersUnderLeases:
    def test_only_the_holder_runs_rounds_and_a_wake_anywhere_reaches_it(
        self, engine: Engine, database_url: str, nodes: list[Cluster]
    ) -> None:
        postgresql_only(database_url)
        a = make_node(engine, database_url, "node-a")
        b = make_node(engine, database_url, "node-b")
        nodes += [a, b]
        on_a, on_b = RoundCounter(), RoundCounter()
        on_a.run_under_lease(a)
        on_b.run_under_lease(b)
        for node in (a, b):
            node.join()
            node.start()
        on_a.start()
        on_b.start()
        try:
            wait_for(lambda: a.listening and b.listening, timeout=10, what="nodes listening")
            wait_for(lambda: on_a.rounds >= 1, timeout=5, what="the holder's first round")
            assert on_a.lease is not None and on_a.lease.held
            before = on_a.rounds
            on_b.wake()  # node B has no lease: node A is asked
            wait_for(lambda: on_a.rounds > before, timeout=5, what="node A woken by node B")
            assert on_b.rounds == 0
            assert on_b.stopping, "a worker without the lease is told to stop its round"
        finally:
            on_a.stop()
            on_b.stop()


def test_health_names_the_node_and_lists_the_cluster(
    engine: Engine, database_url: str, nodes: list[Cluster]
) -> None:
    a = make_node(engine, database_url, "node-a")
    nodes.append(a)
    a.lease("result-outbox")
    a.join()
    with Session(engine) as session:
        session.add(
            ClusterNode(
                name="long-gone",
                instance="0" * 16,
                started_at=utcnow() - timedelta(hours=2),
                last_heartbeat_at=utcnow() - timedelta(hours=1),
                secret_fingerprint="0" * 16,
            )
        )
        session.commit()
        listed = members(session)
        leases = holders(session)
    assert [m["name"] for m in listed] == ["node-a"], "a node silent for an hour is not listed"
    assert leases == {"result-outbox": "node-a"}


def test_nodes_started_together_set_an_empty_database_up_once(
    database_url: str, tmp_path: Path
) -> None:
    """Two nodes starting at the same instant on an empty database: without the start-up lock
    both would run the first migration, and one would fail on a table the other made."""
    postgresql_only(database_url)
    engine = make_engine(database_url)
    command.downgrade(alembic_config(engine, metadata), "base")
    engine.dispose()
    nodes = [
        build_services(
            app_settings(database_url, tmp_path / name, node_name=name, worklist_enabled=False),
            orthanc=None,
            clock=utcnow,
        )
        for name in ("node-a", "node-b")
    ]
    barrier = threading.Barrier(len(nodes))
    failures: list[BaseException] = []

    def start(services: Services) -> None:
        barrier.wait()
        try:
            start_up(services)
        except BaseException as exc:  # reported below, with the other node's outcome
            failures.append(exc)

    threads = [threading.Thread(target=start, args=(services,)) for services in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    try:
        assert failures == []
        engine = nodes[0].get(Engine)
        with Session(engine) as session:
            assert session.exec(select(func.count()).select_from(User)).one() == 1
            names = session.exec(select(ClusterNode.name).order_by(col(ClusterNode.name))).all()
        assert names == ["node-a", "node-b"]
    finally:
        for services in nodes:
            services.get(Cluster).stop()
            services.get(Engine).dispose()
            services.get(OrderListener).intake.engine.dispose()


def test_on_sqlite_a_node_restarted_after_a_crash_takes_its_jobs_at_once(
    engine: Engine, database_url: str, nodes: list[Cluster]
) -> None:
    """The file lock proves no other process uses the database: the lease the crashed run
    left (not expired) is no reason to wait."""
    if not database_url.startswith("sqlite"):
        pytest.skip("SQLite only")
    crashed = make_node(engine, database_url, "solo", lease_seconds=300)
    crashed.lease("result-outbox")
    crashed.join()
    assert crashed._node_lock is not None
    crashed._node_lock.close()  # what the process's death does to its lock
    restarted = make_node(engine, database_url, "solo", secret="a new random secret" * 3)
    nodes.append(restarted)
    lease = restarted.lease("result-outbox")
    restarted.join()
    assert lease.held
