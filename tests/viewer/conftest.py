"""Fixtures of the viewer tests that run against both fronts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from nginx_front import start_nginx_front
from stack import Stack


@pytest.fixture(params=["sidecar", "nginx"])
def viewer_front_url(request: pytest.FixtureRequest, stack: Stack, tmp_path: Path) -> Iterator[str]:
    """The base URL of one front or the other, before the stack's Orthanc and sidecar: the
    sidecar's own, and nginx running viewer/nginx.conf."""
    assert stack.sidecar is not None
    if request.param == "sidecar":
        yield stack.sidecar.url
        return
    nginx = start_nginx_front(
        tmp_path / "nginx",
        orthanc=f"127.0.0.1:{stack.layout.http_port}",
        sidecar=f"127.0.0.1:{stack.sidecar_port}",
    )
    yield nginx.url
    nginx.stop()
