"""Viewer benchmark: how long a viewer link takes to show its first image, and what the sidecar's
viewer front adds to DICOMweb latency compared with Orthanc itself.

One stack (Orthanc with the plugin and DICOMweb; the sidecar serving the OHIF viewer in a process
of its own, as `make run` and docker-compose run it, so the measuring client never shares its
interpreter), one load of studies. Then, in the same run:

- link to first image: a logged-in user opens a study's viewerUrl in headless Chromium (a fresh
  browser profile each time, so nothing is cached); the time runs from navigation to the first
  viewport screenshot with a drawn image (pixel spread and lit fraction, as in the browser test).
  Browser start-up and login are not timed.
- DICOMweb latency: QIDO-RS (the study list's query) and WADO-RS series metadata, each asked of
  Orthanc directly, through the nginx front (what `make run` and docker-compose serve:
  viewer/nginx.conf in Debian's nginx, sidecar.launcher.nginx, its auth_request answered
  by the same sidecar) and through the sidecar's own front (VIEWER_FRONT=sidecar, or no nginx),
  with a bearer token; strictly alternating, the order rotating each round, over one keep-alive
  connection per side.

    make bench            # or: .venv/bin/python bench/viewer.py --requests 300 --opens 5
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from figures import percentile  # bench/, beside this script

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "support"))

from dicom_factory import GeneratedStudy, make_study  # noqa: E402
from dicom_senders import storescu_dcmtk  # noqa: E402
from nginx_front import start_nginx_front  # noqa: E402
from stack import STACK_ADMIN_PASSWORD, STACK_JWT_SECRET, STACK_PLUGIN_TOKEN, Stack, wait_for  # noqa: E402
from viewer_browser import open_study  # noqa: E402

QIDO = "/dicom-web/studies?limit=101&offset=0&fuzzymatching=false&includefield=00081030,00080060"


def start_sidecar(stack: Stack, database_url: str, log: Path) -> subprocess.Popen[bytes]:
    """`python -m sidecar` on the port the stack's plugin notifies, with the stack's settings."""
    settings = stack.settings
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "DATA_DIR": str(settings.data_dir),
        "JWT_SECRET": STACK_JWT_SECRET,
        "ADMIN_PASSWORD": STACK_ADMIN_PASSWORD,
        "SIDECAR_PLUGIN_TOKEN": STACK_PLUGIN_TOKEN,
        "SIDECAR_PORT": str(stack.sidecar_port),
        "ORTHANC_URL": settings.orthanc_url,
        "MLLP_PORT": str(stack.mllp_port),
        "WORKLIST_DIR": str(settings.worklist_dir),
        "RECONCILE_INTERVAL": "1",
        "LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "sidecar"], env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{stack.sidecar_port}/health"

    def healthy() -> bool:
        if process.poll() is not None:
            raise SystemExit(f"the sidecar exited: see {log}")
        try:
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(healthy, timeout=60, what="the sidecar process")
    return process


def api_token(front: str) -> str:
    answer = httpx.post(
        f"{front}/api/auth/login", json={"username": "admin", "password": STACK_ADMIN_PASSWORD}
    )
    answer.raise_for_status()
    token: str = answer.json()["accessToken"]
    return token


def load(
    stack: Stack, front: str, directory: Path, studies: int
) -> tuple[list[GeneratedStudy], dict[str, str]]:
    """Stores the studies; returns them and each one's viewerUrl once the sidecar lists it."""
    generated = [
        make_study(
            directory / f"study{n}",
            series_count=2,
            instances_per_series=10,
            rows=256,
            columns=256,
        )
        for n in range(studies)
    ]
    for study in generated:
        result = storescu_dcmtk(study.files, *stack.dicom_address, timeout=300)
        if not result.all_success:
            raise SystemExit(f"C-STORE failed: {result.failed[:3]}")
    headers = {"Authorization": f"Bearer {api_token(front)}"}

    def all_listed() -> dict[str, str] | None:
        items = httpx.get(f"{front}/api/studies?limit=1000", headers=headers).json()["items"]
        complete = {
            s["studyInstanceUID"]: s["viewerUrl"] for s in items if s["instanceCount"] == 20
        }
        return complete if len(complete) == len(generated) else None

    links = wait_for(all_listed, timeout=180, interval=0.5, what="every study registered")
    return generated, links


def time_link_to_image(link: str, opens: int) -> list[float]:
    seconds = []
    for _ in range(opens):
        report = open_study(
            {
                "viewerUrl": link,
                "username": "admin",
                "password": STACK_ADMIN_PASSWORD,
                "loginFirst": True,
                "timeoutMs": 60_000,
            }
        )
        if not report["ok"]:
            raise SystemExit(f"the viewer did not show the image: {report.get('error')}")
        seconds.append(report["timings"]["linkToImageMs"] / 1000)
    return seconds


def alternate(path: str, sides: dict[str, httpx.Client], requests: int) -> dict[str, list[float]]:
    """Latencies of `path` asked of every side in turn, the order rotating each round."""
    timed: dict[str, list[float]] = {name: [] for name in sides}
    names = list(sides)
    for _ in range(10):  # warm connections and caches; not counted
        for client in sides.values():
            client.get(path).read()
    for n in range(requests):
        for name in names[n % len(names) :] + names[: n % len(names)]:
            started = time.perf_counter()
            answer = sides[name].get(path)
            answer.read()
            timed[name].append(time.perf_counter() - started)
            if answer.status_code != 200:
                raise SystemExit(f"{name} {path} answered {answer.status_code}")
    return timed


def report(what: str, timed: dict[str, list[float]]) -> None:
    def ms(values: list[float], fraction: float) -> float:
        return percentile(values, fraction) * 1000

    direct = timed["direct"]
    print(f"{what}: Orthanc direct p50 {ms(direct, 0.5):6.2f} ms, p99 {ms(direct, 0.99):6.2f} ms")
    for name, values in timed.items():
        if name == "direct":
            continue
        print(
            f"  through {name:13} p50 {ms(values, 0.5):6.2f} ms, p99 {ms(values, 0.99):6.2f} ms"
            f"  ratio p50 {ms(values, 0.5) / ms(direct, 0.5):.2f},"
            f" p99 {ms(values, 0.99) / ms(direct, 0.99):.2f} (target <= 1.1)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=20, help="studies of 2x10 256x256 CT")
    parser.add_argument("--requests", type=int, default=300, help="requests per kind and side")
    parser.add_argument("--opens", type=int, default=5, help="viewer links opened")
    parser.add_argument("--database-url", default="", help="sidecar database (default SQLite)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-viewer-") as tmp:
        root = Path(tmp)
        database_url = args.database_url or f"sqlite:///{root / 'sidecar.db'}"
        stack = Stack(root / "stack", database_url)
        stack.start_orthanc()
        sidecar = start_sidecar(stack, database_url, root / "sidecar.log")
        front = f"http://127.0.0.1:{stack.sidecar_port}"
        nginx = start_nginx_front(
            root / "nginx",
            orthanc=f"127.0.0.1:{stack.layout.http_port}",
            sidecar=f"127.0.0.1:{stack.sidecar_port}",
        )
        try:
            studies, links = load(stack, front, root / "load", args.studies)
            print(
                f"load: {len(studies)} studies of 2 series x 10 instances, 256x256 CT; "
                f"{args.requests} requests per kind and side, alternating"
            )
            target = studies[0]
            # The link as `make run` gives it: on the nginx front.
            link = links[target.study_instance_uid].replace(front, nginx.url, 1)
            opened = time_link_to_image(link, args.opens)
            print(
                f"link -> first image (nginx front): p50 {percentile(opened, 0.5) * 1000:.0f} ms, "
                f"p99 {percentile(opened, 0.99) * 1000:.0f} ms over {len(opened)} opens "
                "(fresh Chromium profile each, logged in, headless, no GPU)"
            )
            series = target.series[0].series_instance_uid
            metadata = f"/dicom-web/studies/{target.study_instance_uid}/series/{series}/metadata"
            bearer = {"Authorization": f"Bearer {api_token(front)}"}
            sides = {
                "direct": httpx.Client(base_url=stack.orthanc.url, timeout=30),
                "nginx front": httpx.Client(base_url=nginx.url, headers=bearer, timeout=30),
                "sidecar front": httpx.Client(base_url=front, headers=bearer, timeout=30),
            }
            try:
                report("QIDO studies", alternate(QIDO, sides, args.requests))
                report("series metadata", alternate(metadata, sides, args.requests))
            finally:
                for client in sides.values():
                    client.close()
        finally:
            nginx.stop()
            sidecar.terminate()
            sidecar.wait(30)
            stack.close()


if __name__ == "__main__":
    main()
