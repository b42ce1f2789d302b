"""The viewer front in Debian's nginx: the docker-compose front (viewer/nginx.conf) run on
this machine, in front of a local Orthanc and sidecar.

`make run` serves the viewer through it when nginx is installed (sidecar.launcher.run): the
sidecar's own Python front adds 3-5 ms to every DICOMweb request, nginx well under one
(bench/viewer.py). The tests and the viewer benchmark run the same configuration, so what is tested
is what ships.

The compose file's service names are pointed at loopback addresses; logs, the session cache and
nginx's temporary files go to a folder of the front's own (the cache holds Orthanc's credential,
so the folder is private to this user).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from sidecar.launcher import processes as child_process
from sidecar.viewer.bundle import VIEWER_PACKAGE_DIR, default_base_url

NGINX_CONF = VIEWER_PACKAGE_DIR / "nginx.conf"
DEFAULT_NGINX = "/usr/sbin/nginx"
# The compose file's upstreams, in viewer/nginx.conf: the first server of each (node 1's).
COMPOSE_UPSTREAMS = ("orthanc:8042", "sidecar:3006", "viewer:80")
# An upstream block of viewer/nginx.conf, whose servers are one per node of the cluster.
_UPSTREAM_BLOCK = re.compile(r"^upstream [a-z_]+ \{\n.*?^\}\n", re.MULTILINE | re.DOTALL)


class FrontStartError(RuntimeError):
    pass


def nginx_binary() -> str | None:
    """Debian's nginx, or the one on PATH; None when nginx is not installed."""
    if Path(DEFAULT_NGINX).is_file():
        return DEFAULT_NGINX
    return shutil.which("nginx")


@dataclass(frozen=True)
class FrontLayout:
    """Where the front listens and what it stands in front of, each as host:port."""

    work_dir: Path
    host: str
    port: int
    orthanc: str
    sidecar: str
    # Serves the viewer's files: the viewer container in compose, the sidecar itself here.
    viewer: str

    @property
    def url(self) -> str:
        return default_base_url(self.host, self.port)


def front_command(binary: str, work_dir: Path) -> list[str]:
    """The command NginxFront starts nginx with: everything in `work_dir`."""
    work = str(work_dir)
    # -e: errors met before the configuration is read go there too, not to /var/log/nginx.
    return [binary, "-p", work, "-e", f"{work}/error.log", "-c", f"{work}/nginx.conf"]


# What nginx makes of its master's command line once running: one string, the title and the
# arguments it was started with joined by spaces (ngx_master_process_cycle, ngx_setproctitle).
MASTER_TITLE = "nginx: master process "


def is_front_command(argv: Sequence[str], work_dir: Path) -> bool:
    """Whether a command line is the nginx master of the front in `work_dir` (as NginxFront
    starts it, whichever nginx binary): what proves a process is the front of one DATA_DIR,
    whatever pid files say. Its workers' name no folder, and end with their master.

    `argv` is the argument vector (/proc/<pid>/cmdline, NUL-separated), compared whole: folder
    names may hold spaces. The running master's title joins its arguments with spaces, so it is
    compared as one string with the arguments expected, whose length fixes `work_dir`'s."""
    arguments = front_command("nginx", work_dir)[1:]
    if len(argv) == len(arguments) + 1:
        binary = argv[0]
        matches = list(argv[1:]) == arguments
    elif len(argv) == 1:
        suffix = " " + " ".join(arguments)
        title = argv[0]
        binary = title.removeprefix(MASTER_TITLE).removesuffix(suffix)
        matches = title == MASTER_TITLE + binary + suffix
    else:
        return False
    return matches and bool(binary) and Path(binary).name.startswith("nginx")


def config_path(path: Path) -> str:
    """`path` as one argument of nginx's configuration, quoted: spaces, ";" and quotes in it
    stay in the path. "$" cannot: nginx reads variables in some paths (access_log), quoted or
    not."""
    if "$" in str(path):
        raise FrontStartError(f"nginx cannot take a folder whose path holds '$': {path}")
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _first_server_only(block: re.Match[str]) -> str:
    lines = block[0].splitlines(keepends=True)
    servers = [i for i, line in enumerate(lines) if line.lstrip().startswith("server ")]
    return "".join(line for i, line in enumerate(lines) if i not in servers[1:])


def render_server(layout: FrontLayout) -> str:
    """The compose front's server configuration, with this machine's addresses and paths.

    This machine runs one node: each upstream keeps its first server (the compose file's node
    1), pointed at the local service; the other nodes' servers are left out."""
    conf = _UPSTREAM_BLOCK.sub(_first_server_only, NGINX_CONF.read_text())
    for service, address in zip(
        COMPOSE_UPSTREAMS, (layout.orthanc, layout.sidecar, layout.viewer), strict=True
    ):
        if f"server {service};" not in conf:
            raise FrontStartError(f"{NGINX_CONF} has no upstream {service}")
        conf = conf.replace(f"server {service};", f"server {address};")
    replacements = {
        "listen 8080;": f"listen {layout.host}:{layout.port};",
        "/var/log/nginx/access.log": config_path(layout.work_dir / "access.log"),
        "/var/log/nginx/error.log": config_path(layout.work_dir / "error.log"),
        "/var/cache/nginx/viewer-sessions": config_path(layout.work_dir / "viewer-sessions"),
    }
    for compose, local in replacements.items():
        if compose not in conf:
            raise FrontStartError(f"{NGINX_CONF} no longer has {compose!r}")
        conf = conf.replace(compose, local)
    return conf


def render_main(layout: FrontLayout) -> str:
    """nginx's top-level configuration: one worker in the foreground, everything in work_dir."""
    work = layout.work_dir
    lines = []
    if os.geteuid() == 0:
        # Started as root, nginx would run its worker as `nobody`, which cannot enter work_dir.
        lines.append(f"user {pwd.getpwuid(os.geteuid()).pw_name};")
    lines += [
        "daemon off;",
        "worker_processes 1;",
        f"pid {config_path(work / 'nginx.pid')};",  # NginxFront.pid_path
        f"error_log {config_path(work / 'error.log')} warn;",
        "events {}",
        "http {",
        *(
            f"  {kind}_temp_path {config_path(work / kind)};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        ),
        f"  include {config_path(work / 'front.conf')};",
        "}",
    ]
    return "\n".join(lines) + "\n"


class NginxFront:
    """One nginx master process running the front; stopped with the service."""

    def __init__(self, layout: FrontLayout, *, binary: str | None = None) -> None:
        self.layout = layout
        self._binary = binary or nginx_binary() or DEFAULT_NGINX
        self._process: subprocess.Popen[bytes] | None = None
        self._output: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return self.layout.url

    @property
    def access_log(self) -> Path:
        return self.layout.work_dir / "access.log"

    @property
    def pid_path(self) -> Path:
        return self.layout.work_dir / "nginx.pid"

    @property
    def output_path(self) -> Path:
        return self.layout.work_dir / "nginx.out"

    def write_configuration(self) -> Path:
        work = self.layout.work_dir
        work.mkdir(parents=True, exist_ok=True)
        work.chmod(0o700)
        (work / "front.conf").write_text(render_server(self.layout))
        main = work / "nginx.conf"
        main.write_text(render_main(self.layout))
        return main

    def start(self, timeout: float = 20.0) -> None:
        if not Path(self._binary).is_file():
            raise FrontStartError(
                f"nginx not found at {self._binary}: run orthanc/install-packages.sh"
            )
        self.write_configuration()
        self._output = self.output_path.open("ab")
        self._process = subprocess.Popen(
            front_command(self._binary, self.layout.work_dir),
            stdout=self._output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # When its starter dies, even by kill -9, the master stops its workers and exits
            # (SIGTERM), freeing the port for the next start.
            preexec_fn=child_process.ending_with_parent(signal.SIGTERM),
            # Its logs and the session cache (Orthanc's credential) are this user's only.
            umask=0o077,
        )
        self.wait_listening(timeout)

    def wait_listening(self, timeout: float) -> None:
        """Until nginx listens on its port. What is behind it may still be starting.

        nginx writes its pid file once its sockets are bound and listening. A connection to the
        port would not do: with the port taken by another program, that program accepts it,
        while nginx retries the bind for a few seconds and then gives up."""
        assert self._process is not None
        pid = self._process.pid

        def listening() -> bool:
            try:
                return int(self.pid_path.read_text()) == pid
            except (OSError, ValueError):
                return False

        child_process.wait_until_ready(
            self._process,
            listening,
            timeout=timeout,
            what="nginx",
            log_tail=self.log_tail,
            error=FrontStartError,
        )

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self._process is None:
            return
        # SIGQUIT: finish the requests in flight, then exit.
        child_process.stop(self._process, signal.SIGQUIT, timeout)
        self._process = None
        if self._output is not None:
            self._output.close()
            self._output = None

    def log_tail(self, lines: int = 20) -> str:
        text = []
        for path in (self.output_path, self.layout.work_dir / "error.log"):
            with contextlib.suppress(OSError):
                text += path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(text) or "(no log)"
