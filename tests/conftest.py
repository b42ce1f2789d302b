"""Shared fixtures. `--database sqlite|postgresql` picks the sidecar's database for the run.

SQLite: a fresh file per test. PostgreSQL: a fresh database per test, cloned from a template
migrated once per run (CREATE DATABASE ... TEMPLATE is much faster than migrating each time).
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient

from sidecar.database import make_engine, migrate
from sidecar.logging_setup import PatientSafeFormatter, quiet_loggers_that_print_urls
from sidecar.main import create_app
from sidecar.models.users import Role, User
from sidecar.security import hash_password
from sidecar.settings import Settings

import patient_data
from stack import Stack

TEST_JWT_SECRET = "test-jwt-secret-" + "x" * 40
TEST_PLUGIN_TOKEN = "test-plugin-token-" + "y" * 30
ADMIN_PASSWORD = "admin-password-for-tests"
USER_PASSWORD = "user-password-for-tests"
# A port nothing listens on: an Orthanc that is down.
CLOSED_ORTHANC_URL = "http://127.0.0.1:9"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.addoption(
        "--postgres-url",
        default=os.environ.get(
            "TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
        ),
        help="server-level URL; each test gets its own database on that server",
    )


def pytest_report_header(config: pytest.Config) -> str:
    return f"sidecar database: {config.getoption('--database')}"


@pytest.fixture(scope="session", autouse=True)
def logs_hold_no_patient_data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every log record of the whole run, written as the service writes them (its formatter,
    INFO and up), then searched for the patient data the tests used: none may be there.

    Orthanc's own logs are files of their own per test; tests/test_ingest_hostile.py reads
    them."""
    path = tmp_path_factory.mktemp("logs") / "service.log"
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(PatientSafeFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    quiet_loggers_that_print_urls()  # as the service does (sidecar.logging_setup)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(min(level, logging.INFO))
    yield path
    root.removeHandler(handler)
    root.setLevel(level)
    handler.close()
    leaked = patient_data.found_in(path.read_text(encoding="utf-8", errors="replace"))
    assert not leaked, "patient data in the service's log lines:\n" + "\n".join(leaked)


def _with_database(url: str, name: str) -> str:
    return str(sa.engine.make_url(url).set(database=name))


def _admin_execute(url: str, statement: str) -> None:
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(sa.text(statement))
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def postgres_template(request: pytest.FixtureRequest) -> Iterator[str | None]:
    if request.config.getoption("--database") != "postgresql":
        yield None
        return
    server = request.config.getoption("--postgres-url")
    name = f"radtest_template_{uuid.uuid4().hex[:12]}"
    _admin_execute(server, f'CREATE DATABASE "{name}"')
    engine = make_engine(_with_database(server, name))
    migrate(engine)
    engine.dispose()
    yield name
    _admin_execute(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def fresh_database(
    request: pytest.FixtureRequest, directory: Path, postgres_template: str | None
) -> Iterator[str]:
    """A database of its own: a SQLite file in `directory`, or a PostgreSQL clone of the
    migrated template, dropped afterwards."""
    if postgres_template is None:
        yield f"sqlite:///{directory / 'sidecar.db'}"
        return
    server = request.config.getoption("--postgres-url")
    name = f"radtest_{uuid.uuid4().hex[:16]}"
    _admin_execute(server, f'CREATE DATABASE "{name}" TEMPLATE "{postgres_template}"')
    yield _with_database(server, name)
    _admin_execute(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_template: str | None
) -> Iterator[str]:
    with fresh_database(request, tmp_path, postgres_template) as url:
        yield url


@pytest.fixture
def stack(tmp_path: Path, database_url: str) -> Iterator[Stack]:
    """Orthanc (with the plugin) and the sidecar, both running, on ephemeral ports."""
    running = Stack(tmp_path, database_url)
    running.start_orthanc()
    running.start_sidecar()
    yield running
    running.close()


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        environment="development",
        data_dir=tmp_path / "var",
        database_url=database_url,
        jwt_secret=TEST_JWT_SECRET,
        admin_password=ADMIN_PASSWORD,
        sidecar_plugin_token=TEST_PLUGIN_TOKEN,
        orthanc_url=CLOSED_ORTHANC_URL,
        orthanc_timeout=2.0,
        reconcile_enabled=False,
        mllp_enabled=False,
        timezone="Europe/Brussels",
    )


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


def login(client: TestClient, username: str, password: str) -> dict[str, str]:
    response = client.post("/api/auth/login", json={"username": username, "password": password})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['accessToken']}"}


@pytest.fixture
def admin_headers(client: TestClient) -> dict[str, str]:
    return login(client, "admin", ADMIN_PASSWORD)


@pytest.fixture
def headers_for(app: FastAPI, client: TestClient) -> Callable[[Role], dict[str, str]]:
    """Creates (once) a user with the role and returns its auth headers."""
    from sqlmodel import Session, select

    def make(role: Role) -> dict[str, str]:
        username = f"{role.value}-user"
        with Session(app.state.engine) as session:
            if session.exec(select(User).where(User.username == username)).first() is None:
                session.add(
                    User(username=username, password_hash=hash_password(USER_PASSWORD), role=role)
                )
                session.commit()
        return login(client, username, USER_PASSWORD)

    return make


@pytest.fixture
def radiologist(headers_for: Callable[[Role], dict[str, str]]) -> dict[str, str]:
    return headers_for(Role.RADIOLOGIST)


@pytest.fixture
def technologist(headers_for: Callable[[Role], dict[str, str]]) -> dict[str, str]:
    return headers_for(Role.TECHNOLOGIST)
