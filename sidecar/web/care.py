"""The care scope of a page's user: the API's own (sidecar.access.care_scope.CareScope), read
from the page's session instead of the bearer token, so a page shows and refuses exactly what
the API route it stands for does (a physician's other patients: 404)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from sidecar.access.care_scope import CareScope
from sidecar.core.dependencies import ClockDep
from sidecar.web.session import PageUser


def page_scope(user: PageUser, clock: ClockDep) -> CareScope:
    return CareScope(user, clock())


PageScope = Annotated[CareScope, Depends(page_scope)]
