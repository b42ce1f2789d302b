"""A bounded schemathesis run against the API's own OpenAPI document, as every role.

Every operation gets requests generated from its schema (valid ones, and invalid ones), each sent
as every role, anonymously and as the Orthanc plugin. Whatever comes, the API must never answer
5xx, and every answer it documents must match the document. The run is derandomized (the same
cases each time), so it is a fixed, bounded corpus in CI; raise SCHEMA_RUN_EXAMPLES locally to dig
deeper.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, response_schema_conformance
from sqlmodel import Session, select

from sidecar.accounts.models import Role, User
from sidecar.accounts.security import create_access_token, hash_password
from sidecar.main import create_app

from testapp import TEST_JWT_SECRET, TEST_PLUGIN_TOKEN, app_settings, engine_of, fresh_database

# Examples per operation and generation mode. The PostgreSQL pass sends a smaller corpus: it
# is there for what only PostgreSQL refuses (integer ranges, NUL in text, encodings), which the
# first examples of each operation already reach; SQLite runs the wider one.
EXAMPLES = {"sqlite": 10, "postgresql": 4}
# /health answers 503 by design when Orthanc is down (it is, here): not a server error.
SKIPPED = ("/health",)


@pytest.fixture(scope="module")
def app(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    database_template: str,
) -> Iterator[FastAPI]:
    directory = tmp_path_factory.mktemp("schema-run")
    with fresh_database(
        request.config.getoption("--database"),
        request.config.getoption("--postgres-url"),
        database_template,
        directory,
    ) as url:
        application = create_app(
            app_settings(
                url,
                directory,
                orthanc_timeout=0.5,
                worklist_enabled=False,
                viewer_enabled=False,
            )
        )
        # Started once and stopped (the database set up, the administrator made), then served
        # with the lifespan schemathesis runs for the app: one running node on the database.
        with TestClient(application):
            pass
        yield application


class Principals:
    """Who calls: one account per role (their tokens made directly: no password hashing per
    request), nobody, and the plugin. Accounts are put back as they were before each case, so
    that a case that disables or demotes one does not leave the rest of the run anonymous."""

    def __init__(self, app: FastAPI) -> None:
        self.engine = engine_of(app)
        self.headers: dict[str, dict[str, str]] = {
            "anonymous": {},
            "plugin": {"Authorization": f"Bearer {TEST_PLUGIN_TOKEN}"},
        }
        with Session(self.engine) as session:
            for role in Role:
                user = User(
                    username=f"schema-{role.value}",
                    password_hash=hash_password("schema-run-password"),
                    role=role,
                    provider_id="PROV-1" if role == Role.PHYSICIAN else None,
                )
                session.add(user)
                session.flush()
                assert user.id is not None
                token, _ = create_access_token(
                    user_id=user.id,
                    username=user.username,
                    role=role,
                    secret=TEST_JWT_SECRET,
                    lifetime=timedelta(hours=1),
                )
                self.headers[role.value] = {"Authorization": f"Bearer {token}"}
            session.commit()

    def restore(self) -> None:
        with Session(self.engine) as session:
            for user in session.exec(select(User).where(User.username.startswith("schema-"))):
                user.role = Role(user.username.removeprefix("schema-"))
                user.is_active = True
                user.credentials_changed_at = None
                session.add(user)
            session.commit()


def test_no_answer_is_a_server_error_or_differs_from_the_document(
    app: FastAPI, request: pytest.FixtureRequest
) -> None:
    corpus = int(
        os.environ.get("SCHEMA_RUN_EXAMPLES", EXAMPLES[request.config.getoption("--database")])
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    principals = Principals(app)
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]  # an invalid schema raises here
        if operation.path.startswith(SKIPPED):
            continue
        operations += 1
        for mode, examples in (
            (GenerationMode.POSITIVE, corpus),
            (GenerationMode.NEGATIVE, max(1, corpus // 2)),
        ):
            failures += _run(operation, mode, examples, principals)
    assert operations > 40, "the document lists fewer operations than the API has"
    assert not failures, "\n".join(failures[:20])


def _run(operation: Any, mode: GenerationMode, examples: int, principals: Principals) -> list[str]:
    failures: list[str] = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def each(case: Any) -> None:
        principals.restore()
        for who, headers in principals.headers.items():
            try:
                case.call_and_validate(
                    headers=headers, checks=[not_a_server_error, response_schema_conformance]
                )
            except Exception as failure:  # a failed check: recorded, the run goes on
                failures.append(f"{operation.label} as {who} ({mode.value}): {failure}"[:2000])

    each()
    return failures


def test_the_document_describes_errors_as_the_api_sends_them(app: FastAPI) -> None:
    document = app.openapi()
    error = document["components"]["schemas"]["HTTPValidationError"]
    assert set(error["properties"]) == {"error"}
    answer = TestClient(app).post("/api/auth/login", json={})
    assert answer.status_code == 422
    assert set(answer.json()) == {"error"}
    assert {"code", "message", "details"} <= set(answer.json()["error"])
