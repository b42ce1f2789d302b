"""The viewer front in Debian's nginx (sidecar.launcher.nginx, as `make run` starts it) on a free
loopback port, in front of a test's Orthanc and sidecar: for the deployment tests and the viewer
benchmark. The sidecar also stands in for the viewer container: it serves the same dist/."""

from __future__ import annotations

from pathlib import Path

import httpx

from sidecar.launcher.nginx import NGINX_CONF, FrontLayout, NginxFront, nginx_binary

from stack import free_port, wait_for

__all__ = ["NGINX_CONF", "NginxFront", "start_nginx_front"]


def start_nginx_front(work_dir: Path, *, orthanc: str, sidecar: str) -> NginxFront:
    """`orthanc` and `sidecar` are host:port; both already answer."""
    if nginx_binary() is None:
        raise RuntimeError("nginx is not installed: run orthanc/install-packages.sh")
    front = NginxFront(
        FrontLayout(
            work_dir=work_dir,
            host="127.0.0.1",
            port=free_port(),
            orthanc=orthanc,
            sidecar=sidecar,
            viewer=sidecar,
        )
    )
    front.start()

    def login_page() -> bool:
        try:
            return httpx.get(f"{front.url}/login", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(login_page, timeout=20, what="the login page through nginx")
    return front
