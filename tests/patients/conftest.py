"""The patients tests' sidecar: the real service with its MLLP listener, Orthanc down."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hospital import Hospital, running_hospital


@pytest.fixture
def hospital(tmp_path: Path, database_url: str) -> Iterator[Hospital]:
    with running_hospital(tmp_path, database_url) as his:
        yield his
