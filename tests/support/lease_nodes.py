"""Nodes of a cluster in one test process (sidecar.core.cluster.Cluster on one engine): what the
tests of leases, joining and notifications build them with."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, text

from sidecar.core.cluster import Cluster

SECRET = "cluster-test-secret-" + "s" * 40
LEASE_SECONDS = 3.0  # the least the setting allows: leases of 2 s, renewed every 0.5 s


def make_node(
    engine: Engine,
    database_url: str,
    name: str,
    *,
    secret: str = SECRET,
    lease_seconds: float = LEASE_SECONDS,
) -> Cluster:
    return Cluster(
        engine,
        node_name=name,
        lease_seconds=lease_seconds,
        jwt_secret=secret,
        database_url=database_url,
    )


def postgresql_only(database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("several nodes share PostgreSQL only (SQLite refuses a second node)")


INSERT_ORDER = text(
    "INSERT INTO imaging_order (accession_number, study_instance_uid, patient_id,"
    " modality, status, priority, source, created_at, updated_at)"
    " VALUES (:accession, :uid, 'P1', 'CT', 'SCHEDULED', 'ROUTINE', 'API', now(), now())"
    " RETURNING id"
)


def insert_order(engine: Engine, accession: str, uid: str) -> int:
    """An order committed by another node (its own connection): the trigger notifies it."""
    with engine.begin() as connection:
        order_id: int = connection.execute(
            INSERT_ORDER, {"accession": accession, "uid": uid}
        ).scalar_one()
    return order_id
