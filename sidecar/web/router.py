"""What /app/ serves besides the pages: /app's redirect, the pages' static files, and a 404 page
for any other /app/ path (the viewer's catch-all never sees /app:
sidecar.viewer.router._NOT_VIEWER).

A page module (sidecar/web/<name>_page.py) has `router = APIRouter(include_in_schema=False)` with
its routes under /app/...; sidecar.main lists it in PAGE_ROUTERS (routers do not import routers),
and includes each with the CSRF check (sidecar.web.session.check_csrf), so no POST, PUT, PATCH
or DELETE of a page goes without, before this router, whose catch-all comes last.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from sidecar.core.errors import UnknownRecord
from sidecar.web.session import PageUser

STATIC_DIR = Path(__file__).parent / "static"
# Served by name from what the folder holds when the service starts: a name is looked up, never
# joined to a path, so no request reaches another file (../, %2e%2e, backslashes, symlinks).
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*(?:\.[A-Za-z0-9]+)+$")
_CONTENT_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".LICENSE": "text/plain; charset=utf-8",
}


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str


def _static_files(folder: Path) -> dict[str, StaticFile]:
    files = {}
    for path in sorted(folder.iterdir()):
        content_type = _CONTENT_TYPES.get(path.suffix)
        if content_type is None or not _NAME.match(path.name) or not path.is_file():
            continue
        body = path.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        files[path.name] = StaticFile(body, content_type, etag)
    return files


STATIC_FILES = _static_files(STATIC_DIR)

router = APIRouter(include_in_schema=False)


@router.get("/app")
def app_root() -> RedirectResponse:
    """/app is /app/, session or not (the page then asks for one)."""
    return RedirectResponse("/app/", status_code=307)


@router.api_route("/app/static/{name}", methods=["GET", "HEAD"])
def static_file(request: Request, name: str) -> Response:
    """The same files for everyone, no patient data: no session needed. Revalidated on every
    load (no-cache and an ETag): a new release applies at once, an unchanged file costs a 304."""
    found = STATIC_FILES.get(name)
    if found is None:
        raise UnknownRecord("no such file")
    headers = {"Cache-Control": "no-cache", "ETag": found.etag}
    if found.etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(found.body, media_type=found.content_type, headers=headers)


# Last: any other /app/ path, once the session holds (without one, the login page).
@router.api_route("/app/{rest:path}", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"])
def unknown_page(user: PageUser, rest: str) -> Response:
    del user, rest
    raise UnknownRecord("this page does not exist")
