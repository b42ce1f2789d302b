"""What the tests share about the app under test: its secrets and passwords, a database of each
test's own (a copy of a template migrated once per run), and the services an app was built with."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from sidecar.core.database import make_engine, migrate
from sidecar.core.dependencies import services_of
from sidecar.core.settings import Settings
from sidecar.tables import metadata

from database_pool import DatabasePool

T = TypeVar("T")

TEST_JWT_SECRET = "test-jwt-secret-" + "x" * 40
TEST_PLUGIN_TOKEN = "test-plugin-token-" + "y" * 30
ADMIN_PASSWORD = "admin-password-for-tests"
USER_PASSWORD = "user-password-for-tests"
#: The provider id of the physician `headers_for(Role.PHYSICIAN)` logs in as: orders naming it
#: (providerId or referringProviderId) put their patient in that physician's care.
PHYSICIAN_PROVIDER_ID = "DR-PHYS-1"
# A port nothing listens on: an Orthanc that is down.
CLOSED_ORTHANC_URL = "http://127.0.0.1:9"


def app_settings(database_url: str, directory: Path, **changes: Any) -> Settings:
    """An app under test: Orthanc down (a closed port), no /changes polling, no MLLP listener nor
    MPPS SCP, the department in Brussels, STABLE_AGE 1 s as the test Orthancs have it;
    `changes` override any of it."""
    values: dict[str, Any] = {
        "environment": "development",
        "data_dir": directory / "var",
        "database_url": database_url,
        "jwt_secret": TEST_JWT_SECRET,
        "admin_password": ADMIN_PASSWORD,
        "sidecar_plugin_token": TEST_PLUGIN_TOKEN,
        "orthanc_url": CLOSED_ORTHANC_URL,
        "orthanc_timeout": 2.0,
        "reconcile_enabled": False,
        "mllp_enabled": False,
        "mpps_enabled": False,
        "timezone": "Europe/Brussels",
        "stable_age": 1,
    }
    return Settings(**{**values, **changes})


def login(client: TestClient, username: str, password: str) -> dict[str, str]:
    response = client.post("/api/auth/login", json={"username": username, "password": password})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['accessToken']}"}


def service_of(app: FastAPI, kind: type[T]) -> T:
    """The service of that type the app was built with (sidecar.main.build_services)."""
    return services_of(app).get(kind)


def flat_routes(app: FastAPI) -> list[Any]:
    """Every route with its full path: FastAPI >= 0.16x keeps included routers nested in
    app.routes and flattens them with fastapi.routing.iter_route_contexts; older versions list
    the routes flat. A check over "every route" that reads app.routes alone sees none."""
    try:
        from fastapi.routing import iter_route_contexts  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        return list(app.routes)
    return list(iter_route_contexts(app.routes))


def engine_of(app: FastAPI) -> Engine:
    return service_of(app, Engine)


def migrated(engine: Engine) -> Engine:
    migrate(engine, metadata)
    return engine


# --- databases --------------------------------------------------------------------------------


def with_database(url: str, name: str) -> str:
    return str(sa.engine.make_url(url).set(database=name))


def admin_execute(url: str, statement: str) -> None:
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(sa.text(statement))
    finally:
        engine.dispose()


# The pool of each PostgreSQL template alive (testapp.template_database), by server and name.
_POOLS: dict[tuple[str, str], DatabasePool] = {}


@contextmanager
def template_database(kind: str, server_url: str, directory: Path) -> Iterator[str]:
    """A database migrated once, that every test's database is copied from: a SQLite file
    (copied), or a PostgreSQL database (CREATE DATABASE ... TEMPLATE). Both are much faster
    than migrating per test."""
    if kind == "sqlite":
        path = directory / "template.db"
        engine = migrated(make_engine(f"sqlite:///{path}"))
        with engine.connect() as connection:  # one file, no -wal beside it, to copy
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        engine.dispose()
        yield str(path)
        return
    name = f"radtest_template_{uuid.uuid4().hex[:12]}"
    admin_execute(server_url, f'CREATE DATABASE "{name}"')
    engine = migrated(make_engine(with_database(server_url, name)))
    engine.dispose()
    pool = _POOLS[(server_url, name)] = DatabasePool(
        lambda statement: admin_execute(server_url, statement), name
    )
    try:
        yield name
    finally:
        del _POOLS[(server_url, name)]
        pool.close()
        admin_execute(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def fresh_database(kind: str, server_url: str, template: str, directory: Path) -> Iterator[str]:
    """A migrated database of its own: a copy of the template, dropped afterwards."""
    if kind == "sqlite":
        target = directory / "sidecar.db"
        shutil.copyfile(template, target)
        target.chmod(0o600)
        yield f"sqlite:///{target}"
        return
    pool = _POOLS[(server_url, template)]
    name = pool.take()
    try:
        yield with_database(server_url, name)
    finally:
        pool.release(name)
