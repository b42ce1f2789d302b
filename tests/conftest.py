"""Shared fixtures. `--database sqlite|postgresql` picks the sidecar's database for the run.

Every test gets a database of its own, copied from a template migrated once per run: a file copy
for SQLite, CREATE DATABASE ... TEMPLATE for PostgreSQL (both much faster than migrating each
time). Support code lives in tests/support (on the path), the tests in one folder per package.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher
from sqlalchemy import Engine

from sidecar.accounts import security
from sidecar.accounts.models import Role, User
from sidecar.accounts.security import hash_password
from sidecar.core.database import make_engine, migrate
from sidecar.core.logs import formatter_for, quiet_loggers_that_print_urls
from sidecar.core.settings import Settings
from sidecar.launcher.orthanc import OrthancLayout, OrthancProcess
from sidecar.main import create_app
from sidecar.tables import metadata

import json_log
import patient_data
from finding_helpers import FakeClock
from stack import Stack, free_port
from testapp import (
    ADMIN_PASSWORD,
    PHYSICIAN_PROVIDER_ID,
    USER_PASSWORD,
    app_settings,
    engine_of,
    fresh_database,
    login,
    template_database,
)
from webhook_receiver import WebhookReceiver


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.addoption(
        "--postgres-url",
        default=os.environ.get(
            "TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
        ),
        help="server-level URL; each test gets its own database on that server",
    )
    parser.addoption(
        "--every-test",
        action="store_true",
        help="on PostgreSQL, run the tests that do not depend on the database too",
    )


def pytest_report_header(config: pytest.Config) -> str:
    return f"sidecar database: {config.getoption('--database')}"


# A test that never asks for the sidecar's database checks the same thing whichever database the
# run is for (HL7 parsing, the plugin, the launcher's own SQLite, the fronts' path rules):
# `make test` runs it once, in the SQLite run. So does a test marked `one_database`.
DATABASE_FIXTURES = frozenset({"database_url", "database_template"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--database") == "sqlite" or config.getoption("--every-test"):
        return
    kept: list[pytest.Item] = []
    once: list[pytest.Item] = []
    for item in items:
        uses_database = DATABASE_FIXTURES & set(getattr(item, "fixturenames", ()))
        if uses_database and item.get_closest_marker("one_database") is None:
            kept.append(item)
        else:
            once.append(item)
    if once:
        config.hook.pytest_deselected(items=once)
        items[:] = kept


@pytest.fixture(scope="session", autouse=True)
def logs_hold_no_patient_data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every log record of the whole run, written as the service writes them (its formatters,
    INFO and up) in both LOG_FORMATs, then searched for the patient data the tests used: none
    may be there. Every JSON line must be one JSON object with the service's fields; its values
    are searched decoded (a name is escaped in the line itself).

    Orthanc's own logs are files of their own per test; tests/ingest/test_ingest_hostile.py reads
    them."""
    folder = tmp_path_factory.mktemp("logs")
    path, json_path = folder / "service.log", folder / "service.jsonl"
    quiet_loggers_that_print_urls()  # as the service does (sidecar.core.logs)
    root = logging.getLogger()
    level = root.level
    handlers: list[logging.FileHandler] = []
    for file, log_format in ((path, "text"), (json_path, "json")):
        handler = logging.FileHandler(file, encoding="utf-8")
        handler.setFormatter(formatter_for(log_format, node="test-node"))
        handler.setLevel(logging.INFO)
        root.addHandler(handler)
        handlers.append(handler)
    root.setLevel(min(level, logging.INFO))
    yield path
    for handler in handlers:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)
    leaked = patient_data.found_in(path.read_text(encoding="utf-8", errors="replace"))
    assert not leaked, "patient data in the service's log lines:\n" + "\n".join(leaked)
    json_lines = json_path.read_text(encoding="utf-8", errors="replace")
    leaked = patient_data.found_in(json_lines)
    leaked += patient_data.found_in("\n".join(json_log.decoded_lines(json_lines)))
    assert not leaked, "patient data in the service's JSON log lines:\n" + "\n".join(leaked)


# The service hashes passwords with Argon2id at the recommended cost (64 MiB, 3 passes): a
# quarter of a second a hash here, paid by every user a test creates and every login. The run
# hashes with Argon2id at its lowest cost instead; what is checked is the same (the service's
# own parameters: tests/accounts/test_password_rules.py).
QUICK_PASSWORD_HASH = PasswordHash((Argon2Hasher(time_cost=1, memory_cost=1024, parallelism=1),))


@pytest.fixture(scope="session", autouse=True)
def service_password_hash() -> Iterator[PasswordHash]:
    """Yields the service's own password hasher, having put the quick one in its place."""
    service_hash = security._password_hash
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(security, "_password_hash", QUICK_PASSWORD_HASH)
        yield service_hash


@pytest.fixture(scope="session")
def database_template(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Migrated once per run; every test's database is a copy (testapp.fresh_database)."""
    with template_database(
        request.config.getoption("--database"),
        request.config.getoption("--postgres-url"),
        tmp_path_factory.mktemp("template"),
    ) as template:
        yield template


@pytest.fixture
def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, database_template: str
) -> Iterator[str]:
    with fresh_database(
        request.config.getoption("--database"),
        request.config.getoption("--postgres-url"),
        database_template,
        tmp_path,
    ) as url:
        yield url


@pytest.fixture(scope="module")
def module_database_url(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    database_template: str,
) -> Iterator[str]:
    """One database for a whole module, for a module whose tests share one app or stack (the
    cost of each test's own is most of their time): each test then works with data of its own
    (its own orders, UIDs, users) and looks at what it made, never at the database's totals."""
    with fresh_database(
        request.config.getoption("--database"),
        request.config.getoption("--postgres-url"),
        database_template,
        tmp_path_factory.mktemp("module-database"),
    ) as url:
        yield url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """The test's database, for tests that work below the API (a module may define its own,
    such as the engine of its app)."""
    engine = make_engine(database_url)
    migrate(engine, metadata)  # a copy of the migrated template: this only checks
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def plain_orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancProcess]:
    """One Orthanc for every test that needs Orthanc alone (no plugin, no sidecar beside it):
    the DICOM ingress filter on, StableAge 1 s. Shared by the whole run, so each test works
    with its own UIDs and patient ids, never with Orthanc's totals."""
    layout = OrthancLayout(
        work_dir=tmp_path_factory.mktemp("plain-orthanc"),
        http_port=free_port(),
        dicom_port=free_port(),
        stable_age=1,
        with_plugin=False,
    )
    process = OrthancProcess(layout)
    process.start()
    yield process
    process.stop()


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
    return app_settings(database_url, tmp_path)


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def admin_headers(client: TestClient) -> dict[str, str]:
    return login(client, "admin", ADMIN_PASSWORD)


@pytest.fixture
def headers_for(app: FastAPI, client: TestClient) -> Callable[[Role], dict[str, str]]:
    """Creates (once) a user with the role and returns its auth headers."""
    from sqlmodel import Session, select

    def make(role: Role) -> dict[str, str]:
        username = f"{role.value}-user"
        with Session(engine_of(app)) as session:
            if session.exec(select(User).where(User.username == username)).first() is None:
                # A physician is known by the provider id orders name (PHYSICIAN_PROVIDER_ID).
                provider_id = PHYSICIAN_PROVIDER_ID if role == Role.PHYSICIAN else None
                session.add(
                    User(
                        username=username,
                        password_hash=hash_password(USER_PASSWORD),
                        role=role,
                        provider_id=provider_id,
                    )
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


@pytest.fixture
def clock() -> FakeClock:
    """A clock the test moves by hand (give it to create_app); starts at finding_helpers.T0."""
    return FakeClock()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    """A notification service on loopback, running."""
    service = WebhookReceiver().start()
    yield service
    service.stop()
