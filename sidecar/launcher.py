"""`make run`: Orthanc (with the plugin and DICOMweb) and the sidecar, in the foreground.

Ctrl-C stops the sidecar, then Orthanc, cleanly. SQLite is the default database.
"""

from __future__ import annotations

import logging
import secrets

import uvicorn

from sidecar.logging_setup import configure_logging
from sidecar.main import create_app
from sidecar.orthanc_process import OrthancLayout, OrthancProcess, parse_modalities
from sidecar.settings import Settings

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
    try:
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
    finally:
        log.info("stopping Orthanc")
        orthanc.stop()


if __name__ == "__main__":
    main()
