"""Fixtures of the core tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from sidecar.core.cluster import Cluster


@pytest.fixture
def nodes(engine: Engine, database_url: str) -> Iterator[list[Cluster]]:
    """The cluster nodes a test made (append them): each stopped at the end."""
    made: list[Cluster] = []
    yield made
    for node in made:
        node.stop()
