"""The viewer front as the app factory builds it: who may view (access), the DICOMweb proxy, the
installed OHIF bundle, and the links that open one study (`ViewerLinks`)."""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from fastapi import Depends
from sqlalchemy import Engine

from sidecar.core.dependencies import provide
from sidecar.core.models import utcnow
from sidecar.core.settings import Settings
from sidecar.viewer.access import ViewerAccess
from sidecar.viewer.bundle import INSTALL_HINT, ViewerBundle, ViewerNotInstalled, default_base_url
from sidecar.viewer.bundle import viewer_url as _viewer_url
from sidecar.viewer.proxy import DicomWebProxy
from sidecar.viewer.series_metadata import FullSeriesMetadata

log = logging.getLogger(__name__)


@dataclass
class ViewerFront:
    """What the viewer routes need."""

    access: ViewerAccess
    proxy: DicomWebProxy
    bundle: ViewerBundle | None  # None: not installed or disabled
    enabled: bool  # VIEWER_ENABLED: false turns off files and proxy, not /api/viewer/authorize
    unavailable_reason: str
    secure_cookie: bool
    orthanc_authorization: str | None  # for nginx's auth_request answer (docker-compose)
    session_minutes: int  # the viewer session's lifetime (VIEWER_SESSION_MINUTES)
    jwt_secret: str
    # A report's series metadata, answered whole (sidecar.viewer.series_metadata).
    series_metadata: FullSeriesMetadata


@dataclass(frozen=True)
class ViewerLinks:
    """Where `viewerUrl` links point: PUBLIC_VIEWER_URL, else this sidecar when it serves the
    viewer, else nowhere (None: no link is better than a link to an error page)."""

    base_url: str | None

    def study(self, study_instance_uid: str) -> str | None:
        return _viewer_url(self.base_url, study_instance_uid) if self.base_url else None


def build_viewer_front(
    settings: Settings, engine: Engine, *, clock: Callable[[], datetime] = utcnow
) -> ViewerFront:
    bundle: ViewerBundle | None = None
    error: Exception | None = None
    if settings.viewer_enabled:
        try:
            bundle = ViewerBundle.locate(settings.viewer_dist)
        except ViewerNotInstalled as exc:
            error = exc
            log.warning("viewer front: %s; the rest of the service runs without it", exc)
    credentials = (
        base64.b64encode(f"{settings.orthanc_username}:{settings.orthanc_password}".encode())
        if settings.orthanc_username
        else None
    )
    proxy = DicomWebProxy(
        settings.orthanc_url,
        username=settings.orthanc_username,
        password=settings.orthanc_password,
    )
    return ViewerFront(
        access=ViewerAccess(engine, settings.jwt_secret, now=clock),
        proxy=proxy,
        bundle=bundle,
        enabled=settings.viewer_enabled,
        unavailable_reason=unavailable_reason(settings, error),
        secure_cookie=settings.public_viewer_url.startswith("https://"),
        orthanc_authorization=f"Basic {credentials.decode()}" if credentials else None,
        session_minutes=settings.viewer_session_minutes,
        jwt_secret=settings.jwt_secret,
        series_metadata=FullSeriesMetadata(engine, proxy),
    )


def viewer_links(settings: Settings, front: ViewerFront) -> ViewerLinks:
    if settings.public_viewer_url:
        return ViewerLinks(settings.public_viewer_url)
    if front.bundle is not None:
        return ViewerLinks(default_base_url(settings.sidecar_host, settings.sidecar_port))
    return ViewerLinks(None)


def unavailable_reason(settings: Settings, error: Exception | None) -> str:
    if not settings.viewer_enabled:
        return "the viewer front is disabled on this server (VIEWER_ENABLED=false)"
    return str(error) if error else f"the OHIF viewer is not installed: {INSTALL_HINT}"


ViewerLinksDep = Annotated[ViewerLinks, Depends(provide(ViewerLinks))]
