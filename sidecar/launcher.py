"""`make run`: Orthanc (with the plugin and DICOMweb), the sidecar and the viewer front, in the
foreground.

The viewer front is Debian's nginx running the docker-compose front's configuration
(sidecar.nginx_front) when nginx is installed, else the sidecar's own (VIEWER_FRONT chooses).
Ctrl-C stops the sidecar, then the front, then Orthanc, cleanly. SQLite is the default database.
"""

from __future__ import annotations

import logging
import secrets

import uvicorn

from sidecar.logging_setup import configure_logging
from sidecar.main import create_app
from sidecar.nginx_front import FrontLayout, NginxFront, nginx_binary
from sidecar.orthanc_process import OrthancLayout, OrthancProcess, parse_modalities
from sidecar.settings import Settings
from sidecar.viewer_front import ViewerBundle, ViewerNotInstalled

log = logging.getLogger("sidecar.launcher")


def orthanc_layout(settings: Settings) -> OrthancLayout:
    return OrthancLayout(
        work_dir=(settings.data_dir / "orthanc").resolve(),
        http_port=settings.orthanc_http_port,
        dicom_port=settings.orthanc_dicom_port,
        aet=settings.orthanc_aet,
        stable_age=settings.stable_age,
        sidecar_url=f"http://127.0.0.1:{settings.sidecar_port}",
        plugin_token=settings.sidecar_plugin_token,
        remote_access=settings.orthanc_remote_access,
        username=settings.orthanc_username,
        password=settings.orthanc_password,
        modalities=tuple(parse_modalities(settings.dicom_modalities)),
        index_database_url=settings.orthanc_index_url,
        worklist_dir=settings.worklist_dir.resolve() if settings.worklist_dir else None,
        # With registered modalities, only they may query the worklist (AE title and host).
        worklist_any_ae=not settings.dicom_modalities,
    )


def viewer_front(settings: Settings) -> NginxFront | None:
    """The nginx front to start, or None when the sidecar serves the viewer itself."""
    if not settings.viewer_enabled or settings.viewer_front == "sidecar":
        return None
    try:
        ViewerBundle.locate(settings.viewer_dist)
    except ViewerNotInstalled:
        return None  # no viewer to put behind it: the sidecar says why, and how to install it
    binary = nginx_binary()
    if binary is None:
        if settings.viewer_front == "nginx":
            raise SystemExit("VIEWER_FRONT=nginx, but nginx is not installed")
        log.info("nginx not installed: the sidecar serves the viewer on its own port")
        return None
    sidecar = f"127.0.0.1:{settings.sidecar_port}"
    layout = FrontLayout(
        work_dir=(settings.data_dir / "front").resolve(),
        host=settings.sidecar_host,
        port=settings.viewer_port,
        orthanc=f"127.0.0.1:{settings.orthanc_http_port}",
        sidecar=sidecar,
        viewer=sidecar,  # the sidecar serves the viewer's files, as the ohif/app image does
    )
    return NginxFront(layout, binary=binary)


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level)
    if not settings.sidecar_plugin_token:
        # Both ends are started here, so a per-run secret is enough in development.
        settings = settings.model_copy(update={"sidecar_plugin_token": secrets.token_urlsafe(32)})
    orthanc = OrthancProcess(orthanc_layout(settings))
    log.info(
        "starting Orthanc: HTTP %d, DICOM %d (AE title %s)",
        settings.orthanc_http_port,
        settings.orthanc_dicom_port,
        settings.orthanc_aet,
    )
    orthanc.start()
    front: NginxFront | None = None
    try:
        front = viewer_front(settings)
        if front is not None:
            front.start()
            log.info("viewer front (nginx) on %s", front.url)
            if not settings.public_viewer_url:
                settings = settings.model_copy(update={"public_viewer_url": front.url})
        app = create_app(settings)
        log.info(
            "sidecar on http://%s:%d (API docs at /docs)",
            settings.sidecar_host,
            settings.sidecar_port,
        )
        uvicorn.Server(
            uvicorn.Config(
                app,
                host=settings.sidecar_host,
                port=settings.sidecar_port,
                access_log=False,
                log_config=None,
            )
        ).run()
    except KeyboardInterrupt:
        pass  # Ctrl-C: uvicorn has shut the sidecar down cleanly and re-raises it
    finally:
        if front is not None:
            log.info("stopping the viewer front")
            front.stop()
        log.info("stopping Orthanc")
        orthanc.stop()


if __name__ == "__main__":
    main()
