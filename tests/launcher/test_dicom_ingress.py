"""The DICOM ingress policy, the same under `make run` and docker-compose: registered modalities
only from other hosts, and the worklist restricted to them once there are any.

orthanc/configure.py (the compose Orthanc's entry point) must give Orthanc what the launcher
gives it for the same DICOM_MODALITIES, and orthanc/dicom_ingress.lua, loaded by both, reads the
list from Orthanc's own DicomModalities. A real Orthanc running each configuration refuses a
C-STORE from another host whose AE title and host are not registered."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.core.modalities import parse_modalities
from sidecar.launcher.orthanc import (
    INGRESS_FILTER,
    ORTHANC_DIR,
    OrthancLayout,
    OrthancProcess,
    render_configuration,
)

from dicom_factory import make_study
from dicom_senders import storescu_dcmtk
from stack import free_port

CONFIGURE = ORTHANC_DIR / "configure.py"
REFUSED = 0xA700
SUCCESS = 0x0000
POLICY_KEYS = (
    "DicomModalities",
    "DicomCheckModalityHost",
    "DicomAlwaysAllowFindWorklist",
    "LuaScripts",
)


def compose_configuration(
    tmp_path: Path, env: dict[str, str]
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """Runs orthanc/configure.py as the container does, without handing over to the image."""
    target = tmp_path / "etc-orthanc" / "radiology.json"
    done = subprocess.run(
        [sys.executable, str(CONFIGURE)],
        env={"PATH": os.environ.get("PATH", ""), "RADIOLOGY_ORTHANC_CONFIG": str(target), **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    config = json.loads(target.read_text()) if done.returncode == 0 else {}
    return done, config


def make_run_configuration(tmp_path: Path, modalities: str) -> dict[str, Any]:
    """What `make run` gives Orthanc (sidecar.launcher.run.orthanc_layout) for DICOM_MODALITIES."""
    return render_configuration(
        OrthancLayout(
            work_dir=tmp_path / "orthanc",
            http_port=8042,
            dicom_port=4242,
            modalities=tuple(parse_modalities(modalities)),
            worklist_dir=tmp_path / "worklist",
            worklist_any_ae=not modalities,
        )
    )


@pytest.mark.parametrize(
    "modalities",
    ["", "CT01@10.0.0.5:104", " CT01@10.0.0.5:104 , MR01@10.0.0.6:11112,", "US01@fd00::7:104"],
)
def test_the_compose_orthanc_gets_the_policy_make_run_gives(
    tmp_path: Path, modalities: str
) -> None:
    done, compose = compose_configuration(tmp_path, {"DICOM_MODALITIES": modalities})
    assert done.returncode == 0, done.stderr
    local = make_run_configuration(tmp_path, modalities)
    assert {key: compose[key] for key in POLICY_KEYS} == {key: local[key] for key in POLICY_KEYS}
    # The same filter file: the image copies it beside configure.py (orthanc/Dockerfile).
    assert compose["LuaScripts"] == [str(INGRESS_FILTER)]
    assert compose["DicomAlwaysAllowFindWorklist"] is (not modalities)


SHARED_INDEX_KEYS = ("DatabaseServerIdentifier", "SaveJobs")


@pytest.mark.parametrize("node", ["node-2", "7"])
def test_on_a_shared_index_the_compose_orthanc_is_named_as_make_run_names_it(
    tmp_path: Path, node: str
) -> None:
    env = {"NODE_NAME": node, "ORTHANC__POSTGRESQL__ENABLE_INDEX": "true"}
    done, compose = compose_configuration(tmp_path, env)
    assert done.returncode == 0, done.stderr
    local = render_configuration(
        OrthancLayout(
            work_dir=tmp_path / "orthanc",
            http_port=8042,
            dicom_port=4242,
            index_database_url="postgresql://radiology:secret@postgres:5432/orthanc",
            node_name=node,
        )
    )
    expected = {"DatabaseServerIdentifier": node, "SaveJobs": False}  # a name, even all digits
    assert {key: compose[key] for key in SHARED_INDEX_KEYS} == expected
    assert {key: local[key] for key in SHARED_INDEX_KEYS} == expected


def test_without_a_postgresql_index_the_compose_orthanc_keeps_its_jobs(tmp_path: Path) -> None:
    done, compose = compose_configuration(tmp_path, {"NODE_NAME": "node-2"})
    assert done.returncode == 0, done.stderr
    assert not set(SHARED_INDEX_KEYS) & set(compose)
    # Unnamed on a PostgreSQL index, Orthanc derives its identifier itself (as make run's would
    # with an empty name); its jobs are still not saved.
    done, compose = compose_configuration(tmp_path, {"ORTHANC__POSTGRESQL__ENABLE_INDEX": "true"})
    assert done.returncode == 0, done.stderr
    assert compose["SaveJobs"] is False and "DatabaseServerIdentifier" not in compose


def test_the_image_carries_the_filter_and_starts_through_configure() -> None:
    dockerfile = (ORTHANC_DIR / "Dockerfile").read_text()
    copied = re.search(r"(?m)^COPY (.+) (/\S+/)$", dockerfile)
    assert copied is not None, "orthanc/Dockerfile copies no files"
    assert set(copied.group(1).split()) == {"configure.py", "dicom_ingress.lua"}
    folder = copied.group(2)
    assert f'ENTRYPOINT ["python3", "{folder}configure.py"]' in dockerfile
    # Setting ENTRYPOINT clears the base image's CMD: the configuration path must be set again.
    assert 'CMD ["/tmp/orthanc.json"]' in dockerfile


@pytest.mark.parametrize("bad", ["CT01", "CT01@host", "@10.0.0.5:104", "X" * 17 + "@h:104"])
def test_an_unusable_modality_list_stops_the_container_naming_the_variable(
    tmp_path: Path, bad: str
) -> None:
    done, _ = compose_configuration(tmp_path, {"DICOM_MODALITIES": bad})
    assert done.returncode != 0
    assert "DICOM_MODALITIES" in done.stderr
    with pytest.raises(ValueError):
        parse_modalities(bad)  # make run refuses the same lists


def test_the_rest_user_comes_from_the_secret_file_the_sidecar_reads(tmp_path: Path) -> None:
    secret = tmp_path / "orthanc_password"
    secret.write_text('pass"word-with-a-quote\n')
    env = {"ORTHANC_USERNAME": "sidecar", "ORTHANC_PASSWORD_FILE": str(secret)}
    done, config = compose_configuration(tmp_path, env)
    assert done.returncode == 0, done.stderr
    assert config["RegisteredUsers"] == {"sidecar": 'pass"word-with-a-quote'}
    written = tmp_path / "etc-orthanc" / "radiology.json"
    assert written.stat().st_mode & 0o077 == 0

    secret.write_text("\n")
    done, _ = compose_configuration(tmp_path, env)
    assert done.returncode != 0 and "ORTHANC_PASSWORD_FILE" in done.stderr
    done, _ = compose_configuration(tmp_path, {**env, "ORTHANC_PASSWORD_FILE": str(tmp_path)})
    assert done.returncode != 0 and "ORTHANC_PASSWORD_FILE: cannot read" in done.stderr
    secret.write_text("s3cret-value")
    done, _ = compose_configuration(tmp_path, {**env, "DICOM_MODALITIES": "bad"})
    assert done.returncode != 0
    assert "s3cret-value" not in done.stderr + done.stdout


# --- a real Orthanc ----------------------------------------------------------------------------


def other_host_address() -> str:
    """An address of this machine that is not loopback: a C-STORE sent to it arrives from it,
    as from another host."""
    found = subprocess.run(["hostname", "-I"], capture_output=True, text=True, check=False)
    for address in found.stdout.split():
        if "." in address and not address.startswith("127."):
            return address
    pytest.skip("this machine has no non-loopback IPv4 address to send from")


@pytest.fixture(params=["make run", "docker-compose"])
def orthanc(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[OrthancProcess, str]]:
    """Orthanc with CT01 registered at this machine's other address, configured by the
    launcher or by orthanc/configure.py."""
    address = other_host_address()
    modalities = f"CT01@{address}:104"
    layout = OrthancLayout(
        work_dir=tmp_path / "orthanc",
        http_port=free_port(),
        dicom_port=free_port(),
        with_plugin=False,
    )
    if request.param == "make run":
        layout = dataclasses.replace(layout, modalities=tuple(parse_modalities(modalities)))
    else:
        done, compose = compose_configuration(tmp_path, {"DICOM_MODALITIES": modalities})
        assert done.returncode == 0, done.stderr
        layout = dataclasses.replace(layout, extra=compose)
    process = OrthancProcess(layout)
    process.start()
    yield process, address
    process.stop()


@pytest.mark.orthanc
def test_only_a_registered_modality_may_store_from_another_host(
    orthanc: tuple[OrthancProcess, str], tmp_path: Path
) -> None:
    process, address = orthanc
    port, aet = process.layout.dicom_port, process.layout.aet

    def send(host: str, calling: str, name: str) -> list[int | None]:
        study = make_study(tmp_path / name, series_count=1, instances_per_series=1)
        return storescu_dcmtk(study.files, host, port, aet, calling, check=False).statuses

    assert send(address, "INTRUDER", "intruder") == [REFUSED]
    assert send(address, "CT01", "registered") == [SUCCESS]
    # This machine itself (loopback) may send under any AE title, as make run always allowed.
    assert send("127.0.0.1", "INTRUDER", "local") == [SUCCESS]
