from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from event_helpers import LiveApp, live_app
from testapp import ADMIN_PASSWORD


@pytest.fixture
def live(database_url: str, tmp_path: Path) -> Iterator[LiveApp]:
    """The sidecar on a real socket, on the test's database."""
    with live_app(database_url, tmp_path) as running:
        yield running


@pytest.fixture
def admin(live: LiveApp) -> dict[str, str]:
    return {"Authorization": f"Bearer {live.token('admin', ADMIN_PASSWORD)}"}
