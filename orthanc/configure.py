#!/usr/bin/env python3
"""Entry point of the docker-compose Orthanc (orthanc/Dockerfile): writes what `make run`'s
launcher (sidecar/launcher/orthanc.py) adds to Orthanc's configuration from the same variables,
then hands over to the orthancteam image's own entrypoint.

- DICOM_MODALITIES (`AET@host:port,...`, as for `make run`): DicomModalities, which the ingress
  filter dicom_ingress.lua reads (C-STORE from any host but this container's loopback only from
  a registered AE title and host), with DicomCheckModalityHost; and the worklist: with
  registered modalities only they may query it (DicomAlwaysAllowFindWorklist false), without,
  any AE title may.
- LuaScripts: the ingress filter, copied into the image beside this script.
- ORTHANC_USERNAME and ORTHANC_PASSWORD_FILE (a Docker secret): RegisteredUsers, the sidecar's
  REST user, from the same secret file the sidecar reads.
- With the index in PostgreSQL (ORTHANC__POSTGRESQL__ENABLE_INDEX), which several Orthancs may
  share: NODE_NAME as this server's DatabaseServerIdentifier, and SaveJobs off, as the launcher
  writes them for ORTHANC_INDEX_URL (sidecar.launcher.orthanc._configure_shared_index).

The image reads every /etc/orthanc/*.json before its ORTHANC__* variables (generateConfiguration.py
in orthanc-builder), so none of these keys may also be set as a variable in docker-compose.yml.

The image substitutes ${VARIABLES} in those files, so a password holding "$" is mangled:
generated ones (docker.env.example) never do. Stdlib only: it runs on the image's system
Python. A value that cannot be used stops the container with a message naming the variable,
never a secret's value.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

IMAGE_ENTRYPOINT = "/docker-entrypoint.sh"
CONFIG_DIR = Path("/etc/orthanc")
INGRESS_FILTER = Path(__file__).resolve().with_name("dicom_ingress.lua")


class ConfigurationError(ValueError):
    pass


def parse_modalities(text: str) -> dict[str, dict[str, Any]]:
    """DicomModalities from `AET@host:port,...`: the same rules, and the same entries, as
    sidecar.launcher.orthanc.parse_modalities and render_configuration."""
    modalities: dict[str, dict[str, Any]] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        try:
            aet, address = item.strip().split("@", 1)
            host, port = address.rsplit(":", 1)
            aet, host, number = aet.strip(), host.strip(), int(port)
        except ValueError:
            raise ConfigurationError(
                f"DICOM_MODALITIES: modality {item!r} is not AET@host:port"
            ) from None
        if not 1 <= len(aet) <= 16 or not host:
            raise ConfigurationError(
                f"DICOM_MODALITIES: modality {item!r}: AE title 1-16 characters and a host required"
            )
        modalities[aet] = {"AET": aet, "Host": host, "Port": number}
    return modalities


def read_secret(variable: str, environ: dict[str, str]) -> str:
    path = environ.get(variable, "")
    if not path:
        raise ConfigurationError(f"{variable} is not set")
    try:
        value = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError):
        raise ConfigurationError(f"{variable}: cannot read {path}") from None
    if not value.strip():
        raise ConfigurationError(f"{variable}: {path} is empty")
    return value


def configuration(environ: dict[str, str]) -> dict[str, Any]:
    modalities = parse_modalities(environ.get("DICOM_MODALITIES", ""))
    config: dict[str, Any] = {
        "LuaScripts": [str(INGRESS_FILTER)],
        "DicomModalities": modalities,
        "DicomCheckModalityHost": True,
        "DicomAlwaysAllowFindWorklist": not modalities,
        # The sidecar marks a study it re-files under another patient id with it; the ingress
        # filter reads it (as in orthanc/orthanc.json).
        "UserMetadata": {"PatientReassignment": 4400},
    }
    if environ.get("ORTHANC__POSTGRESQL__ENABLE_INDEX", "").lower() == "true":
        node = environ.get("NODE_NAME", "").strip()
        if node:
            config["DatabaseServerIdentifier"] = node
        config["SaveJobs"] = False
    if environ.get("ORTHANC_PASSWORD_FILE"):
        username = environ.get("ORTHANC_USERNAME", "") or "sidecar"
        password = read_secret("ORTHANC_PASSWORD_FILE", environ)
        config["RegisteredUsers"] = {username: password}
    return config


def main(argv: list[str]) -> None:
    environ = dict(os.environ)
    try:
        config = configuration(environ)
    except ConfigurationError as exc:
        raise SystemExit(f"orthanc/configure.py: {exc}") from None
    target = Path(environ.get("RADIOLOGY_ORTHANC_CONFIG", CONFIG_DIR / "radiology.json"))
    target.parent.mkdir(parents=True, exist_ok=True)
    # It may hold the REST password: readable by its owner (Orthanc runs as root here) only.
    descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        json.dump(config, file, indent=2)
    registered = ", ".join(sorted(config["DicomModalities"])) or "none"
    print(f"radiology: registered modalities: {registered}", file=sys.stderr)
    if argv:
        os.execv(IMAGE_ENTRYPOINT, [IMAGE_ENTRYPOINT, *argv])  # noqa: S606 (a fixed path)


if __name__ == "__main__":
    main(sys.argv[1:])
