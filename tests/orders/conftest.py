"""The orders tests' sidecar: the real service with its MLLP listener, Orthanc down."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.core.settings import Settings

from hospital import Hospital
from stack import LiveSidecar, free_port
from testapp import ADMIN_PASSWORD, CLOSED_ORTHANC_URL, TEST_JWT_SECRET, TEST_PLUGIN_TOKEN


@pytest.fixture
def hospital(tmp_path: Path, database_url: str) -> Iterator[Hospital]:
    settings = Settings(
        data_dir=tmp_path / "var",
        database_url=database_url,
        jwt_secret=TEST_JWT_SECRET,
        admin_password=ADMIN_PASSWORD,
        sidecar_plugin_token=TEST_PLUGIN_TOKEN,
        sidecar_port=free_port(),
        orthanc_url=CLOSED_ORTHANC_URL,
        reconcile_enabled=False,
        mllp_port=free_port(),
        timezone="Europe/Brussels",
    )
    sidecar = LiveSidecar(settings)
    sidecar.start()
    his = Hospital(sidecar)
    yield his
    his.mllp.close()
    sidecar.stop()
