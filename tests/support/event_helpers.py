"""The live event stream under test: the sidecar served on a real socket (a stream does not
end, so it cannot go through TestClient), users of each role, and the event table read below."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from sidecar.accounts.models import Role
from sidecar.events.models import LiveEvent

from reporting import add_user
from sse_reader import SseReader
from stack import LiveSidecar, free_port
from testapp import USER_PASSWORD, app_settings, engine_of


class LiveApp:
    def __init__(self, sidecar: LiveSidecar) -> None:
        self.sidecar = sidecar
        self.app = sidecar.app
        self.url = sidecar.url
        self.http = httpx.Client(base_url=sidecar.url, timeout=30)

    @property
    def engine(self) -> Engine:
        return engine_of(self.app)

    def token(self, username: str, password: str) -> str:
        credentials = {"username": username, "password": password}
        answer = self.http.post("/api/auth/login", json=credentials)
        assert answer.status_code == 200, answer.text
        token: str = answer.json()["accessToken"]
        return token

    def user(self, username: str, role: Role, *, provider_id: str | None = None) -> dict[str, str]:
        add_user(self.app, username, role, provider_id=provider_id)
        return {"Authorization": f"Bearer {self.token(username, USER_PASSWORD)}"}

    def stream(
        self, headers: dict[str, str], *, last_id: int | str | None = None, url: str | None = None
    ) -> SseReader:
        sent = dict(headers)
        if last_id is not None:
            sent["Last-Event-ID"] = str(last_id)
        reader = SseReader.open(f"{url or self.url}/api/events", sent)
        assert reader.status == 200, reader.body()
        return reader.wait_ready()


@contextmanager
def live_app(database_url: str, directory: Path, **changes: Any) -> Iterator[LiveApp]:
    settings = app_settings(database_url, directory, sidecar_port=free_port(), **changes)
    sidecar = LiveSidecar(settings)
    sidecar.start()
    live = LiveApp(sidecar)
    try:
        yield live
    finally:
        live.http.close()
        sidecar.stop()


def event_rows(engine: Engine, after: int = 0) -> list[LiveEvent]:
    with Session(engine) as session:
        rows = session.exec(
            select(LiveEvent).where(col(LiveEvent.id) > after).order_by(col(LiveEvent.id))
        ).all()
        session.expunge_all()
        return list(rows)


def newest_event_id(engine: Engine) -> int:
    rows = event_rows(engine)
    return rows[-1].id or 0 if rows else 0


def summary(rows: list[LiveEvent]) -> list[tuple[str, str, int]]:
    return [(row.kind, row.action, row.entity_id) for row in rows]
