from collections.abc import Iterator

import pytest

from sidecar_stub import SidecarStub, running_stub


@pytest.fixture
def sidecar() -> Iterator[SidecarStub]:
    with running_stub() as stub:
        yield stub
