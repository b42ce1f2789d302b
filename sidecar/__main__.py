"""`python -m sidecar`: the sidecar alone (Orthanc runs elsewhere, as in docker-compose)."""

from __future__ import annotations

import os

import uvicorn

from sidecar.core.logs import configure_logging
from sidecar.core.settings import SecretFileError, Settings
from sidecar.main import create_app


def main() -> None:
    # First: the database and the worklist files are this user's only.
    os.umask(0o077)
    try:
        settings = Settings()
    except SecretFileError as exc:
        raise SystemExit(f"sidecar: {exc}") from None
    configure_logging(settings.log_level, settings.log_format, settings.node_name)
    uvicorn.run(
        create_app(settings),
        host=settings.sidecar_host,
        port=settings.sidecar_port,
        access_log=False,
        log_config=None,
    )


if __name__ == "__main__":
    main()
