"""`make run`: Orthanc (with the plugin and DICOMweb), the sidecar and the viewer front, in the
foreground.

The viewer front is Debian's nginx running the docker-compose front's configuration
(sidecar.launcher.nginx) when nginx is installed, else the sidecar's own (VIEWER_FRONT chooses).
Ctrl-C stops the sidecar, then the front, then Orthanc, cleanly. SQLite is the default database.

One launcher per DATA_DIR: it holds a lock on DATA_DIR/launcher.lock while it runs. Killed
outright (kill -9), it stops nothing itself: Orthanc, nginx and the worklist writer end on their
own (sidecar.launcher.processes), and the next launcher stops any of them still running before it
starts its own. Everything it writes is this user's only (umask 077).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import secrets
import signal
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import uvicorn

from sidecar.core.cluster_admission import refusal_before_start
from sidecar.core.logs import configure_logging
from sidecar.core.modalities import parse_modalities
from sidecar.core.settings import SecretFileError, Settings
from sidecar.events.serving import Server
from sidecar.launcher import processes as child_process
from sidecar.launcher.nginx import FrontLayout, NginxFront, is_front_command, nginx_binary
from sidecar.launcher.orthanc import (
    OrthancLayout,
    OrthancProcess,
    is_orthanc_command,
)
from sidecar.main import create_app
from sidecar.viewer.bundle import ViewerBundle, ViewerNotInstalled

log = logging.getLogger("sidecar.launcher.run")

LOCK_NAME = "launcher.lock"
# How long a leftover gets to stop cleanly (SIGTERM) before it is killed.
ORTHANC_STOP_TIMEOUT = 30.0
FRONT_STOP_TIMEOUT = 10.0


def orthanc_layout(settings: Settings) -> OrthancLayout:
    """The local Orthanc of this node. Its index stays in DATA_DIR/orthanc/storage (SQLite) or
    goes to ORTHANC_INDEX_URL (PostgreSQL, shared by the nodes of a cluster, each known to it by
    NODE_NAME); its files go to ORTHANC_STORAGE_DIR, by default that same folder."""
    storage = settings.orthanc_storage_dir
    return OrthancLayout(
        work_dir=(settings.data_dir / "orthanc").resolve(),
        storage=storage.resolve() if storage is not None else None,
        node_name=settings.node_name,
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
        work_dir=front_dir(settings),
        host=settings.sidecar_host,
        port=settings.viewer_port,
        orthanc=f"127.0.0.1:{settings.orthanc_http_port}",
        sidecar=sidecar,
        viewer=sidecar,  # the sidecar serves the viewer's files, as the ohif/app image does
    )
    return NginxFront(layout, binary=binary)


def front_dir(settings: Settings) -> Path:
    return (settings.data_dir / "front").resolve()


@contextlib.contextmanager
def claim_data_dir(data_dir: Path) -> Iterator[None]:
    """Holds DATA_DIR for as long as this launcher runs: a second launcher on the same DATA_DIR
    exits with a message instead of starting a second Orthanc on the same storage.

    The lock (flock) ends with the process however it ends, kill -9 included; whatever that
    process had started is then the next launcher's to stop (stop_leftovers)."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(data_dir / LOCK_NAME, "a+") as lock:  # a+: the holder's pid stays readable
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            raise SystemExit(
                f"another launcher (pid {holder}) is running on DATA_DIR {data_dir}: "
                "stop it first (Ctrl-C in its terminal)"
            ) from None
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        yield


def stop_leftovers(settings: Settings) -> list[int]:
    """Stops the Orthanc and the nginx front of this DATA_DIR that a launcher now gone left
    running: they would hold the ports, and a second Orthanc on the same index crashes. Returns
    their pids. Only processes whose command line names this DATA_DIR's Orthanc configuration
    or front folder are touched; the caller holds DATA_DIR (claim_data_dir), so no running
    launcher owns them."""
    orthanc_config = OrthancProcess(orthanc_layout(settings)).config_path
    return [
        *child_process.stop_leftovers(
            functools.partial(is_orthanc_command, config_path=orthanc_config),
            what="Orthanc",
            signal_number=signal.SIGTERM,
            timeout=ORTHANC_STOP_TIMEOUT,
        ),
        *child_process.stop_leftovers(
            functools.partial(is_front_command, work_dir=front_dir(settings)),
            what="the viewer front (nginx)",
            signal_number=signal.SIGTERM,
            timeout=FRONT_STOP_TIMEOUT,
        ),
    ]


def main() -> None:
    # First: the database, Orthanc's storage, the worklist and every log are this user's only;
    # Orthanc and nginx inherit it.
    os.umask(0o077)
    try:
        settings = Settings()
    except SecretFileError as exc:
        raise SystemExit(f"make run: {exc}") from None
    configure_logging(settings.log_level, settings.log_format, settings.node_name)
    with claim_data_dir(settings.data_dir):  # first: a second launcher here is told so
        refusal = refusal_before_start(
            settings.database_url,
            settings.jwt_secret,
            settings.node_name,
            # Live as the node's own join counts them: a heartbeat within the lease.
            within=timedelta(seconds=settings.cluster_lease_seconds * 2 / 3),
        )
        if refusal is not None:
            raise SystemExit(f"make run: this node cannot start: {refusal}")
        stop_leftovers(settings)
        run(settings)


def run(settings: Settings) -> None:
    """Starts Orthanc, the front and the sidecar, from this (the main) thread: the children's
    parent-death signal is tied to the thread that starts them (child_process)."""
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
        Server(  # uvicorn's, ending the open event streams first at shutdown
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
