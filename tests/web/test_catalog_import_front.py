"""The procedure catalog import of /app/admin/procedures through the nginx front: nginx must
let through a file as large as the import accepts (sidecar.procedures.csv_file.MAX_BYTES, with
the multipart envelope), as the sidecar's own front does, and refuse what is larger."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from sidecar.procedures.csv_file import MAX_BYTES

from nginx_front import start_nginx_front


class _Upstream(BaseHTTPRequestHandler):
    """Stands for the sidecar (and Orthanc): answers 200 with the size of the body it got."""

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        received = self.rfile.read(length) if length else b""
        body = f"received {len(received)}".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        del format, args


@pytest.fixture
def front(tmp_path: Path) -> Iterator[str]:
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    thread = threading.Thread(target=upstream.serve_forever, daemon=True)
    thread.start()
    address = f"127.0.0.1:{upstream.server_address[1]}"
    nginx = start_nginx_front(tmp_path / "nginx", orthanc=address, sidecar=address)
    try:
        yield nginx.url
    finally:
        nginx.stop()
        upstream.shutdown()
        upstream.server_close()


@pytest.mark.one_database
def test_a_catalog_as_large_as_the_import_accepts_passes_the_nginx_front(front: str) -> None:
    catalog = b"code,description\n" + b"X" * (MAX_BYTES - 20) + b"\n"
    sent = httpx.post(
        f"{front}/app/admin/procedures/import",
        files={"file": ("catalog.csv", catalog, "text/csv")},
        data={"csrf_token": "0" * 64},
        timeout=30,
    )
    assert sent.status_code == 200, sent.text[:300]
    assert sent.text.startswith("received ")


@pytest.mark.one_database
def test_other_pages_keep_the_small_body_limit_on_the_nginx_front(front: str) -> None:
    sent = httpx.post(
        f"{front}/app/studies/1/report", data={"findings": "x" * (2 * 1024 * 1024)}, timeout=30
    )
    assert sent.status_code == 413
