"""Cluster benchmark: one node against two nodes of one cluster on the same PostgreSQL, for
C-STORE ingest and HL7 order intake, with the CPU time every process of the cluster spent.

A node is what `make run` starts (`python -m sidecar.launcher`: Orthanc with the plugin and the
DICOM ingress filter, the sidecar with its MLLP listener and worklist writer, the nginx front),
started as the cluster tests start it (tests/support/cluster_nodes.py). Each round starts its
configuration on a fresh sidecar database, a fresh Orthanc index (both PostgreSQL) and empty
storage; rounds alternate one node, two nodes, one node, ... so drift on a noisy machine hits
both alike. Start-up and a warm-up (a small study and a few orders through each node) are not
timed.

C-STORE: K studies of N/K instances (128x128 CT), one dcmtk storescu association per study, from
two senders at once in both configurations (with two nodes each sender has its node: half the
studies each), so that only the number of nodes differs. Figures: instances/s until the last
C-STORE response; the wall time until every study is registered in the sidecar with all its
instances (includes StableAge and Orthanc's once-a-second stability check); and CPU ms per
instance, from /proc: utime + stime (and those of reaped children) of each node's launcher
(the sidecar runs in it), its Orthanc, its nginx processes and its worklist writer, summed,
from before the first C-STORE until every study is registered. PostgreSQL's backends serving the
bench's two databases are counted apart (the server is shared with whatever else runs).

HL7: M new orders (ORM^O01) over MLLP on eight connections spread over the nodes (eight to the
one node; four to each of two), each ACK after the commit. Figures: messages/s, ACK latency
p50/p99, and CPU ms per message from the first message until every node's worklist offers every
order (each node's writer writes every order: that is part of the cost of a second node).

Before the load, `--idle` seconds with nothing sent give what the cluster spends doing nothing
(heartbeats, leases, polls), per second. CPU is also shown by kind of process, to say where a
second node's extra cost goes.

This machine may have two cores only: two nodes cannot be faster on it, the CPU per instance is
what says whether they would be on two machines (goal: two nodes within 10% of one node).

    make bench    # or: .venv/bin/python bench/cluster.py --instances 1000 --rounds 3
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from hl7_intake import orders  # first: puts tests/support on sys.path
from ingest import make_load
from sidecar_process import SERVER, _fresh_database

from hl7.ack import parse_ack
from hl7.mllp.client import MllpClient
from sidecar.launcher import processes as child_process

from cluster_nodes import ClusterNode
from dicom_factory import GeneratedStudy, make_study
from dicom_senders import storescu_dcmtk
from figures import percentile, seconds_for  # bench/, beside this script
from stack import STACK_ADMIN_PASSWORD, STACK_JWT_SECRET, STACK_PLUGIN_TOKEN, wait_for

TICKS = os.sysconf("SC_CLK_TCK")
CONNECTIONS = 8
SENDERS = 2


# --- CPU time from /proc ----------------------------------------------------------------------


# Where the CPU time goes: the processes of a node, by what they are, and PostgreSQL.
SIDECAR, ORTHANC, NGINX, WRITER, POSTGRESQL = "sidecar", "Orthanc", "nginx", "writer", "PostgreSQL"
NODE_ROLES = (SIDECAR, ORTHANC, NGINX, WRITER)


def _ticks(pid: int) -> int | None:
    """utime + stime + cutime + cstime of `pid` (its own, and its reaped children's)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # fields[0] is the state, field 3 of stat(5)
    return sum(int(value) for value in fields[11:15])


def _role(process: child_process.ProcessInfo, launcher: int) -> str:
    """The launcher runs the sidecar; its other Python descendants are the worklist writer."""
    if process.pid == launcher:
        return SIDECAR
    first = process.argv[0] if process.argv else ""
    if Path(first).name == "Orthanc":
        return ORTHANC
    if Path(first).name == "nginx" or first.startswith("nginx:"):  # "nginx: worker process"
        return NGINX
    return WRITER


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU ticks of each process of the cluster, and of PostgreSQL's backends of its databases,
    by (pid, start time): one process for good, whatever later reuses its pid.

    A process that ended between two snapshots was reaped by its parent (its ticks moved to
    the parent's cutime/cstime) and is missing from the later one; one started since counts
    from zero: the difference of the two sums is what was spent in between."""

    ticks: dict[tuple[int, int], tuple[str, int]]

    def seconds_since(self, before: CpuSnapshot) -> dict[str, float]:
        """Seconds of CPU by role (NODE_ROLES and POSTGRESQL)."""
        spent = dict.fromkeys((*NODE_ROLES, POSTGRESQL), 0.0)
        for role, ticks in self.ticks.values():
            spent[role] += ticks / TICKS
        for role, ticks in before.ticks.values():
            spent[role] -= ticks / TICKS
        return spent


class CpuMeter:
    def __init__(self, nodes: Sequence[ClusterNode], server: str, databases: Sequence[str]):
        self.nodes = nodes
        self.databases = list(databases)
        self.admin = sa.create_engine(server, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)

    def _node_processes(self) -> list[tuple[child_process.ProcessInfo, str]]:
        table = list(child_process.processes())
        found = []
        for node in self.nodes:
            assert node.process is not None
            root = next((p for p in table if p.pid == node.process.pid), None)
            if root is None:
                raise SystemExit(f"node {node.name} has exited:\n{node.log_tail()}")
            for process in (root, *child_process.descendants(root, table)):
                found.append((process, _role(process, root.pid)))
        return found

    def _backends(self) -> list[tuple[child_process.ProcessInfo, str]]:
        with self.admin.connect() as connection:
            rows = connection.execute(
                sa.text("SELECT pid FROM pg_stat_activity WHERE datname = ANY(:names)"),
                {"names": self.databases},
            )
            pids = [row[0] for row in rows]
        found = []
        for pid in pids:
            process = child_process.process_info(pid)
            if process is not None:
                found.append((process, POSTGRESQL))
        return found

    def snapshot(self) -> CpuSnapshot:
        ticks = {}
        for process, role in self._node_processes() + self._backends():
            now = _ticks(process.pid)
            if now is not None and not process.ended:
                ticks[(process.pid, process.started)] = (role, now)
        return CpuSnapshot(ticks)

    def close(self) -> None:
        self.admin.dispose()


# --- the cluster ------------------------------------------------------------------------------


@dataclass
class Cluster:
    nodes: list[ClusterNode]
    meter: CpuMeter


@contextmanager
def running_cluster(server: str, work: Path, count: int, stable_age: int) -> Iterator[Cluster]:
    """`count` nodes on a fresh sidecar database, a fresh Orthanc index and empty storage,
    started one after the other (both would create Orthanc's index schema at once)."""
    nodes: list[ClusterNode] = []
    with ExitStack() as stack:
        database_url = stack.enter_context(_fresh_database(server, str(work), sqlite=False))
        index_url = stack.enter_context(_fresh_database(server, str(work), sqlite=False))
        storage = work / "storage"
        shared = {
            "DATABASE_URL": database_url,
            # Orthanc's PostgreSQL plugin takes libpq's form: postgresql://, no driver.
            "ORTHANC_INDEX_URL": index_url.replace("postgresql+psycopg://", "postgresql://", 1),
            "ORTHANC_STORAGE_DIR": str(storage),
            "JWT_SECRET": STACK_JWT_SECRET,
            "SIDECAR_PLUGIN_TOKEN": STACK_PLUGIN_TOKEN,
            "ADMIN_PASSWORD": STACK_ADMIN_PASSWORD,
            "STABLE_AGE": str(stable_age),
            "TIMEZONE": "Europe/Brussels",
            "LOG_LEVEL": "WARNING",
        }
        try:
            for number in range(count):
                node = ClusterNode.on_free_ports(f"node-{number + 1}", work / str(number), shared)
                nodes.append(node)
                node.start().wait_ready()
            names = [sa.engine.make_url(url).database or "" for url in (database_url, index_url)]
            meter = CpuMeter(nodes, server, names)
            try:
                yield Cluster(nodes, meter)
            finally:
                meter.close()
            for node in nodes:
                node.stop()
        finally:
            for node in nodes:
                node.kill_group()


# --- the loads --------------------------------------------------------------------------------


def registered(node: ClusterNode, expected: dict[str, int]) -> bool:
    """Whether the sidecar lists every study of `expected` with all its instances."""
    counts = {s["studyInstanceUID"]: s["instanceCount"] for s in node.studies()}
    return all(counts.get(uid) == instances for uid, instances in expected.items())


def send_studies(cluster: Cluster, load: list[GeneratedStudy]) -> float:
    """SENDERS threads, sender i sending studies i, i + SENDERS, ... to node i % nodes, one
    association per study; returns the seconds until the last response."""
    failures: list[str] = []

    def sender(number: int) -> None:
        node = cluster.nodes[number % len(cluster.nodes)]
        for study in load[number::SENDERS]:
            result = storescu_dcmtk(study.files, *node.dicom_address, timeout=300)
            if not result.all_success:
                failures.append(f"{node.name}: {result.failed[:3]}")
                return

    elapsed = seconds_for(functools.partial(sender, n) for n in range(SENDERS))
    if failures:
        raise SystemExit(f"C-STORE failed: {failures[0]}")
    return elapsed


def send_orders(
    cluster: Cluster, connections: int, messages: list[str]
) -> tuple[float, list[float]]:
    """`connections` MLLP connections, connection i to node i % nodes; returns the seconds until
    the last ACK and every ACK's latency."""
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()

    def worker(number: int) -> None:
        node = cluster.nodes[number % len(cluster.nodes)]
        mine = []
        with MllpClient("127.0.0.1", node.mllp_port, timeout=30) as client:
            for message in messages[number::connections]:
                started = time.perf_counter()
                ack = parse_ack(client.send(message))
                mine.append(time.perf_counter() - started)
                if ack.code != "AA":
                    failures.append(f"{ack.code} {ack.error_code} {ack.text}")
        with lock:
            latencies.extend(mine)

    elapsed = seconds_for(functools.partial(worker, n) for n in range(connections))
    if failures:
        raise SystemExit(f"{len(failures)} messages not accepted, e.g. {failures[0]}")
    return elapsed, latencies


def offered(node: ClusterNode) -> int:
    worklist = node.health()["worklist"]
    return int(worklist.get("scheduledProcedureSteps", 0))


def on_every_worklist(cluster: Cluster, expected: int) -> None:
    wait_for(
        lambda: all(offered(node) >= expected for node in cluster.nodes),
        timeout=180,
        interval=0.05,
        what=f"{expected} orders on every node's worklist",
    )


# --- one round --------------------------------------------------------------------------------


@dataclass
class RoundResult:
    nodes: int
    instances: int
    store_seconds: float
    registered_seconds: float
    store_cpu: dict[str, float]  # seconds by role
    messages: int
    intake_seconds: float
    intake_cpu: dict[str, float]
    idle_seconds: float
    idle_cpu: dict[str, float]
    latencies: list[float] = field(default_factory=list)

    @property
    def store_rate(self) -> float:
        return self.instances / self.store_seconds

    @property
    def intake_rate(self) -> float:
        return self.messages / self.intake_seconds

    def per_instance(self, *roles: str) -> float:
        """CPU ms per instance stored, of the processes of these roles."""
        return sum(self.store_cpu[role] for role in roles) / self.instances * 1000

    def per_message(self, *roles: str) -> float:
        return sum(self.intake_cpu[role] for role in roles) / self.messages * 1000

    def idle(self, *roles: str) -> float:
        """CPU ms per second with nothing sent: heartbeats, leases, polls."""
        return sum(self.idle_cpu[role] for role in roles) / self.idle_seconds * 1000


def run_round(
    server: str,
    work: Path,
    count: int,
    load: list[GeneratedStudy],
    warm_up: list[GeneratedStudy],
    messages: int,
    stable_age: int,
    idle_seconds: float,
    tag: str,
) -> RoundResult:
    with running_cluster(server, work, count, stable_age) as cluster:
        first = cluster.nodes[0]
        # Warm-up, not timed: an association, a registration and a few orders through each node.
        for node, study in zip(cluster.nodes, warm_up, strict=False):
            assert storescu_dcmtk(study.files, *node.dicom_address, timeout=60).all_success
        warmed = {s.study_instance_uid: s.instance_count for s in warm_up[:count]}
        wait_for(lambda: registered(first, warmed), timeout=120, what="the warm-up studies")
        send_orders(cluster, count, orders(10 * count, f"W{tag}"))
        on_every_worklist(cluster, 10 * count)
        before = cluster.meter.snapshot()
        time.sleep(idle_seconds)  # a measurement window: what the cluster spends doing nothing
        idle_cpu = cluster.meter.snapshot().seconds_since(before)

        expected = {s.study_instance_uid: s.instance_count for s in load}
        before = cluster.meter.snapshot()
        started = time.perf_counter()
        store_seconds = send_studies(cluster, load)
        wait_for(lambda: registered(first, expected), timeout=300, interval=0.1, what="studies")
        registered_seconds = time.perf_counter() - started
        store_cpu = cluster.meter.snapshot().seconds_since(before)

        before = cluster.meter.snapshot()
        intake_seconds, latencies = send_orders(cluster, CONNECTIONS, orders(messages, f"B{tag}"))
        on_every_worklist(cluster, 10 * count + messages)
        intake_cpu = cluster.meter.snapshot().seconds_since(before)
    return RoundResult(
        nodes=count,
        instances=sum(s.instance_count for s in load),
        store_seconds=store_seconds,
        registered_seconds=registered_seconds,
        store_cpu=store_cpu,
        messages=messages,
        intake_seconds=intake_seconds,
        intake_cpu=intake_cpu,
        idle_seconds=idle_seconds,
        idle_cpu=idle_cpu,
        latencies=latencies,
    )


def describe(result: RoundResult) -> str:
    return (
        f"{result.store_rate:6.1f} instances/s, registered after {result.registered_seconds:5.1f}"
        f" s, {result.per_instance(*NODE_ROLES):5.2f} CPU ms/instance "
        f"(+{result.per_instance(POSTGRESQL):.2f} PostgreSQL); "
        f"HL7 {result.intake_rate:6.1f} messages/s, "
        f"{result.per_message(*NODE_ROLES):5.2f} CPU ms/message "
        f"(+{result.per_message(POSTGRESQL):.2f} PostgreSQL)"
    )


def summary(results: list[RoundResult]) -> None:
    """The medians of each configuration over its rounds (ACK latencies pooled)."""
    print(
        f"{'':9} {'C-STORE':>11} {'registered':>10} {'CPU ms':>9} {'+PG ms':>7} | "
        f"{'HL7 msg/s':>9} {'p50 ms':>6} {'p99 ms':>6} {'CPU ms':>7} {'+PG ms':>7}"
    )
    print(
        f"{'':9} {'instances/s':>11} {'after s':>10} {'/instance':>9} {'/inst.':>7} | "
        f"{'(8 conn.)':>9} {'ACK':>6} {'ACK':>6} {'/msg':>7} {'/msg':>7}"
    )
    for count in (1, 2):
        mine = [r for r in results if r.nodes == count]
        latencies = [x for r in mine for x in r.latencies]
        print(
            f"{count} node(s) "
            f"{statistics.median(r.store_rate for r in mine):11.1f} "
            f"{statistics.median(r.registered_seconds for r in mine):10.1f} "
            f"{statistics.median(r.per_instance(*NODE_ROLES) for r in mine):9.2f} "
            f"{statistics.median(r.per_instance(POSTGRESQL) for r in mine):7.2f} | "
            f"{statistics.median(r.intake_rate for r in mine):9.1f} "
            f"{percentile(latencies, 0.5) * 1000:6.1f} "
            f"{percentile(latencies, 0.99) * 1000:6.1f} "
            f"{statistics.median(r.per_message(*NODE_ROLES) for r in mine):7.2f} "
            f"{statistics.median(r.per_message(POSTGRESQL) for r in mine):7.2f}"
        )
    print()
    roles = (*NODE_ROLES, POSTGRESQL)
    print(f"{'CPU ms by process':26}" + "".join(f"{role:>11}" for role in roles))
    for what, figure in (
        ("C-STORE, per instance", RoundResult.per_instance),
        ("HL7, per message", RoundResult.per_message),
        ("idle, per second", RoundResult.idle),
    ):
        print(what)
        for count in (1, 2):
            mine = [r for r in results if r.nodes == count]
            medians = [statistics.median(figure(r, role) for r in mine) for role in roles]
            print(
                f"  {count} node(s){'':15}"
                + "".join(f"{round(ms, 2) + 0.0:11.2f}" for ms in medians)
            )
    print(
        "(medians over the rounds; a node: its launcher (the sidecar), Orthanc, nginx, worklist "
        "writer; PostgreSQL: its backends serving the bench's two databases)"
    )
    print()
    for label, roles_counted in (("nodes", NODE_ROLES), ("nodes + PostgreSQL", roles)):
        one, two = (
            statistics.median(r.per_instance(*roles_counted) for r in results if r.nodes == n)
            for n in (1, 2)
        )
        print(f"CPU per instance, two nodes / one node ({label}): {two / one:.3f} (goal <= 1.10)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=1000, help="instances per round")
    parser.add_argument("--studies", type=int, default=10, help="studies per round")
    parser.add_argument("--messages", type=int, default=2000, help="ORM^O01 per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each configuration")
    parser.add_argument("--stable-age", type=int, default=2)
    parser.add_argument(
        "--idle", type=float, default=5.0, help="seconds of CPU measured with nothing sent"
    )
    parser.add_argument("--server", default=SERVER, help="PostgreSQL server URL")
    args = parser.parse_args()
    print("command:", " ".join([sys.executable, *sys.argv]))

    results: list[RoundResult] = []
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        root = Path(tmp)
        load = make_load(root / "load", args.studies, args.instances // args.studies)
        warm_up = [
            make_study(root / "warm" / str(n), series_count=1, instances_per_series=2)
            for n in range(2)
        ]
        total = sum(s.instance_count for s in load)
        print(
            f"load: {args.studies} studies, {total} instances of 128x128 CT from {SENDERS} "
            f"senders at once, then {args.messages} ORM^O01 on {CONNECTIONS} connections; "
            f"StableAge {args.stable_age} s; {args.rounds} rounds each, alternating; "
            f"{os.cpu_count()} cores"
        )
        for n in range(args.rounds):
            for count in (1, 2):
                # Every round its own UIDs: the load's studies are new to each fresh cluster
                # anyway, the orders are made unique per round to read the logs.
                result = run_round(
                    args.server,
                    root / f"round{n}-{count}",
                    count,
                    load,
                    warm_up,
                    args.messages,
                    args.stable_age,
                    args.idle,
                    f"{n}{count}",
                )
                results.append(result)
                print(f"  round {n + 1} {count} node(s): {describe(result)}", flush=True)

    print()
    summary(results)


if __name__ == "__main__":
    main()
