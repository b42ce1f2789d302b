"""Fixtures of the page tests: users of each role logged in through the login form as a browser
is (the session cookie) on the real app; and a real stack behind either front, with the browser
session that drives them (tests/support/app_browser.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from sidecar.accounts.models import Role, User
from sidecar.accounts.security import hash_password

from app_browser import app_front, nginx_app_front, page_users, sidecar_front
from page_session import form_login
from testapp import ADMIN_PASSWORD, USER_PASSWORD, engine_of

__all__ = ["app_front", "logged_in", "nginx_app_front", "page_user", "page_users", "sidecar_front"]


@pytest.fixture
def page_user(app: FastAPI) -> Callable[[Role], str]:
    """Creates a user of the role (once) and returns its user name; the admin is `admin`."""

    def make(role: Role) -> str:
        if role is Role.ADMIN:
            return "admin"
        username = f"{role.value}-pages"
        with Session(engine_of(app)) as session:
            if session.exec(select(User).where(User.username == username)).first() is None:
                session.add(
                    User(username=username, password_hash=hash_password(USER_PASSWORD), role=role)
                )
                session.commit()
        return username

    return make


@pytest.fixture
def logged_in(client: TestClient, page_user: Callable[[Role], str]) -> Callable[[Role], TestClient]:
    """The client holding the session cookie of a user of the role."""

    def log_in(role: Role) -> TestClient:
        username = page_user(role)
        password = ADMIN_PASSWORD if role is Role.ADMIN else USER_PASSWORD
        answer = form_login(client, username, password, next="/app/")
        assert answer.status_code == 303, answer.text
        return client

    return log_in
