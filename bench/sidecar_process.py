"""The sidecar as the benchmarks run it: its own process (`python -m sidecar`), on a fresh
PostgreSQL database that is dropped afterwards (or a fresh SQLite file)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import sqlalchemy as sa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "support"))

from stack import free_port, wait_for  # noqa: E402

SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
ADMIN_PASSWORD = "bench-admin-password"


@dataclass(frozen=True)
class RunningSidecar:
    http_port: int
    mllp_port: int
    mpps_port: int
    pid: int
    database_url: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


def _up(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health/db", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def _fresh_database(server: str, tmp: str, sqlite: bool) -> Iterator[str]:
    if sqlite:
        yield f"sqlite:///{tmp}/sidecar.db"
        return
    name = f"bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield str(sa.engine.make_url(server).set(database=name))
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def running_sidecar(
    server: str, *, sqlite: bool = False, **environment: str
) -> Iterator[RunningSidecar]:
    with (
        tempfile.TemporaryDirectory(prefix="bench-sidecar-") as tmp,
        _fresh_database(server, tmp, sqlite) as database_url,
    ):
        http_port, mllp_port, mpps_port = free_port(), free_port(), free_port()
        env = {
            **os.environ,
            "DATA_DIR": tmp,
            "DATABASE_URL": database_url,
            "JWT_SECRET": "bench-" + "x" * 40,
            "ADMIN_PASSWORD": ADMIN_PASSWORD,
            "SIDECAR_PORT": str(http_port),
            "ORTHANC_URL": "http://127.0.0.1:9",
            "RECONCILE_ENABLED": "false",
            "MLLP_PORT": str(mllp_port),
            "MPPS_PORT": str(mpps_port),
            "TIMEZONE": "Europe/Brussels",
            "LOG_LEVEL": "WARNING",
            **environment,
        }
        sidecar = subprocess.Popen([sys.executable, "-m", "sidecar"], env=env, cwd=REPO)
        try:
            wait_for(lambda: _up(http_port), timeout=60, what="sidecar")
            yield RunningSidecar(http_port, mllp_port, mpps_port, sidecar.pid, database_url)
        finally:
            sidecar.terminate()
            sidecar.wait(30)


def login(base_url: str, username: str, password: str) -> dict[str, str]:
    response = httpx.post(
        f"{base_url}/api/auth/login", json={"username": username, "password": password}, timeout=30
    )
    response.raise_for_status()
    return {"Authorization": f"Bearer {response.json()['accessToken']}"}
