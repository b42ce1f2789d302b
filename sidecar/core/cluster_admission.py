"""Whether a node may join, known before it starts: one process per SQLite database file, and one
JWT_SECRET across the nodes of a cluster (sidecar.core.cluster joins under the same rules)."""

from __future__ import annotations

import contextlib
import fcntl
import os
from datetime import timedelta
from pathlib import Path
from typing import IO

from sqlalchemy import inspect
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool
from sqlmodel import Session, col, create_engine, select

from sidecar.core.cluster_models import (
    ClusterNode,
    NodeRefused,
    database_now,
    secret_fingerprint,
)


def lock_sqlite_node(database_url: str) -> IO[bytes] | None:
    """Holds the node lock of a SQLite database file (a flock on a file beside it, released
    when the returned file is closed or the process ends, kill -9 included); None for a
    database without a file. NodeRefused: another process holds it."""
    path = make_url(database_url).database
    if not path or path == ":memory:" or path.startswith("file:"):
        return None
    lock_path = Path(path).resolve().with_name(Path(path).name + ".node.lock")
    lock_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    handle = open(lock_path, "ab")  # noqa: SIM115  (held open by the caller)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise NodeRefused(
            f"the SQLite database {path} is in use by another running sidecar: SQLite holds"
            " one node only. Several nodes need a PostgreSQL DATABASE_URL (and"
            " ORTHANC_INDEX_URL) they all share"
        ) from None
    with contextlib.suppress(OSError):
        os.chmod(lock_path, 0o600)
    return handle


def refusal_before_start(
    database_url: str, jwt_secret: str, node_name: str, *, within: timedelta
) -> str | None:
    """Why a node could not join, known before anything is started (the launcher says it in
    one line rather than after starting Orthanc): the SQLite file in use by another process,
    or running nodes with another JWT_SECRET. The node checks again when it joins."""
    if not database_url.startswith("postgresql"):
        try:
            handle = lock_sqlite_node(database_url)
        except NodeRefused as exc:
            return str(exc)
        if handle is not None:
            handle.close()
        return None
    engine = create_engine(database_url, poolclass=NullPool, hide_parameters=True)
    try:
        with Session(engine) as session:
            if not inspect(session.connection()).has_table(ClusterNode.__tablename__):
                return None
            fresh_after = database_now(session) - within
            fingerprints = session.exec(
                select(ClusterNode.name, ClusterNode.secret_fingerprint).where(
                    col(ClusterNode.last_heartbeat_at) > fresh_after,
                    col(ClusterNode.stopped_at).is_(None),
                )
            ).all()
    except Exception:  # the database is the node's to report when it starts
        return None
    finally:
        engine.dispose()
    mine = secret_fingerprint(jwt_secret)
    for name, fingerprint in fingerprints:
        if name != node_name and fingerprint != mine:
            return (
                f"node {name} is running with another JWT_SECRET: every node of a cluster"
                " needs the same JWT_SECRET"
            )
    return None


def refusal_to_join(
    session: Session, *, node_name: str, instance: str, fingerprint: str, within: timedelta
) -> tuple[str, bool] | None:
    """Why a node may not join now, and whether that is final (or may pass: its own previous
    run, dead, whose heartbeat is not stale yet)."""
    fresh_after = database_now(session) - within
    live = session.exec(
        select(ClusterNode).where(
            col(ClusterNode.last_heartbeat_at) > fresh_after,
            col(ClusterNode.stopped_at).is_(None),
        )
    ).all()
    for node in live:
        # Its own previous run (a crash) may have had another secret: the name check waits
        # for that one to go stale instead.
        if node.name != node_name and node.secret_fingerprint != fingerprint:
            return (
                f"node {node.name} is running with another JWT_SECRET: every node of a"
                " cluster needs the same JWT_SECRET (a session opened on one node is used"
                " on the others)",
                True,
            )
    for node in live:
        if node.name == node_name and node.instance != instance:
            return (
                f"NODE_NAME {node_name!r} is in use by a running node (heartbeat"
                f" {node.last_heartbeat_at.isoformat()}): give each node its own NODE_NAME",
                False,
            )
    return None
