"""Running Orthanc from Debian's packages: its configuration, and the process itself.

Used by `make run` (sidecar.launcher.run) and by the integration tests, so both run the same setup.
The static part of the configuration is orthanc/orthanc.json; what depends on the environment
(ports, paths, plugins, credentials, registered modalities) is added here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal
from urllib.parse import urlsplit

import httpx

from sidecar.core.http import tls_context
from sidecar.core.modalities import RegisteredModality
from sidecar.launcher import processes as child_process

REPO_ROOT = Path(__file__).resolve().parents[2]
ORTHANC_DIR = REPO_ROOT / "orthanc"
PLUGIN_SCRIPT = REPO_ROOT / "plugin" / "sidecar_bridge.py"
INGRESS_FILTER = ORTHANC_DIR / "dicom_ingress.lua"
DEFAULT_BINARY = "/usr/sbin/Orthanc"
DEFAULT_PLUGINS_DIR = Path("/usr/share/orthanc/plugins")


# "python": the plugin's in-memory cache (plugin/worklist_cache.py); "modality-worklists": Orthanc's
# ModalityWorklists plugin re-reading every file per C-FIND (the benchmark's baseline).
WorklistMechanism = Literal["python", "modality-worklists"]


class OrthancStartError(RuntimeError):
    pass


@dataclass(frozen=True)
class OrthancLayout:
    """Everything about one Orthanc instance that differs between machines and tests."""

    work_dir: Path
    http_port: int
    dicom_port: int
    aet: str = "ORTHANC"
    stable_age: int = 60
    sidecar_url: str = ""
    plugin_token: str = ""
    with_plugin: bool = True
    remote_access: bool = False
    username: str = ""
    password: str = ""
    modalities: tuple[RegisteredModality, ...] = ()
    index_database_url: str = ""
    # Orthanc's DICOM files (ORTHANC_STORAGE_DIR), the folder every node of a cluster shares;
    # None: beside the index, in work_dir/storage.
    storage: Path | None = None
    # This server among those sharing the PostgreSQL index (NODE_NAME); unused without one.
    node_name: str = ""
    plugins_dir: Path = DEFAULT_PLUGINS_DIR
    # The directory sidecar.worklist.directory.WorklistDirectory writes; None: no worklist
    # C-FIND at all.
    worklist_dir: Path | None = None
    worklist_mechanism: WorklistMechanism = "python"
    # False: only the DicomModalities entries (AE title and host checked) may query the worklist.
    worklist_any_ae: bool = True
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def index_dir(self) -> Path:
        """The SQLite index's folder (unused with a PostgreSQL index): where it always was, so
        that moving the storage elsewhere keeps an existing install's index."""
        return self.work_dir / "storage"

    @property
    def storage_dir(self) -> Path:
        return self.storage if self.storage is not None else self.index_dir


def render_configuration(layout: OrthancLayout) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((ORTHANC_DIR / "orthanc.json").read_text())
    plugins = [str(layout.plugins_dir / "libOrthancDicomWeb.so")]
    if layout.with_plugin:
        plugins.append(str(layout.plugins_dir / "libOrthancPython.so"))
        config["PythonScript"] = str(PLUGIN_SCRIPT)
    config.update(
        StorageDirectory=str(layout.storage_dir),
        IndexDirectory=str(layout.index_dir),
        HttpPort=layout.http_port,
        DicomPort=layout.dicom_port,
        DicomAet=layout.aet,
        StableAge=layout.stable_age,
        Plugins=plugins,
        # Reads the registered modalities from DicomModalities (as in the compose container).
        LuaScripts=[str(INGRESS_FILTER)],
        DicomModalities={
            m.aet: {"AET": m.aet, "Host": m.host, "Port": m.port} for m in layout.modalities
        },
    )
    if layout.remote_access:
        if not (layout.username and layout.password):
            raise ValueError("remote access to Orthanc needs ORTHANC_USERNAME and ORTHANC_PASSWORD")
        config.update(RemoteAccessAllowed=True, AuthenticationEnabled=True)
    if layout.username and layout.password:
        config.update(
            AuthenticationEnabled=True, RegisteredUsers={layout.username: layout.password}
        )
    if layout.index_database_url:
        plugins.append(str(layout.plugins_dir / "libOrthancPostgreSQLIndex.so"))
        config["PostgreSQL"] = _postgresql_index(layout.index_database_url)
        _configure_shared_index(config, layout)
    if layout.worklist_dir is not None:
        _configure_worklist(config, plugins, layout)
    config.update(layout.extra)
    return config


def _configure_shared_index(config: dict[str, Any], layout: OrthancLayout) -> None:
    """What each Orthanc of several sharing one PostgreSQL index (Lock false) needs.

    DatabaseServerIdentifier (Orthanc 1.9.2+) keys the server's private global properties in the
    shared database; unset, Orthanc derives it from the MAC addresses, AE title and ports, which
    change with a container or a port. SaveJobs off, as Orthanc's documentation of the option
    asks when several servers use one database: a server's jobs are its own (another server's
    /jobs never lists them), and the sidecar treats a job Orthanc no longer knows, after a
    restart, as over (sidecar.studies.deidentify_sweep)."""
    if layout.node_name:
        config["DatabaseServerIdentifier"] = layout.node_name
    config["SaveJobs"] = False


def _configure_worklist(config: dict[str, Any], plugins: list[str], layout: OrthancLayout) -> None:
    # Orthanc 1.10.1 refuses a worklist C-FIND from an AE title missing from DicomModalities
    # unless DicomAlwaysAllowFindWorklist is true. True means anyone who reaches the DICOM port,
    # from any host with any AE title, can read the name, id, birth date and sex of every
    # scheduled patient, with their procedures: the port must be firewalled to the modality
    # network. worklist_any_ae=False restricts it to the registered modalities.
    config["DicomAlwaysAllowFindWorklist"] = layout.worklist_any_ae
    if layout.worklist_mechanism == "modality-worklists":
        plugins.append(str(layout.plugins_dir / "libModalityWorklists.so"))
        config["Worklists"] = {"Enable": True, "Database": str(layout.worklist_dir)}
    elif not layout.with_plugin:
        raise ValueError("the python worklist mechanism needs the Python plugin (with_plugin)")


def plugin_environment(layout: OrthancLayout) -> dict[str, str]:
    """The variables plugin/sidecar_bridge.py reads.

    WORKLIST_DIR is always set, empty unless the Python plugin serves the worklist: a value
    inherited from the shell would register a second worklist handler next to the
    ModalityWorklists plugin (Orthanc allows one), or serve a stray directory.
    """
    serves_worklist = layout.worklist_dir is not None and layout.worklist_mechanism == "python"
    return {
        "SIDECAR_URL": layout.sidecar_url,
        "SIDECAR_PLUGIN_TOKEN": layout.plugin_token,
        "WORKLIST_DIR": str(layout.worklist_dir) if serves_worklist else "",
    }


def _postgresql_index(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    return {
        "EnableIndex": True,
        "EnableStorage": False,
        "Host": parts.hostname or "127.0.0.1",
        "Port": parts.port or 5432,
        "Database": parts.path.lstrip("/"),
        "Username": parts.username or "postgres",
        # The plugin insists on a password login over TCP; trust-auth servers ignore it.
        "Password": parts.password or "postgres",
        "Lock": False,
        "IndexConnectionsCount": 5,
    }


def is_orthanc_command(argv: Sequence[str], config_path: Path) -> bool:
    """Whether a command line is an Orthanc started on `config_path`, as OrthancProcess starts
    it: what proves a process is the Orthanc of one DATA_DIR, whatever pid files say."""
    return len(argv) == 2 and Path(argv[0]).name == "Orthanc" and argv[1] == str(config_path)


# Orthanc's own messages quote patient attributes. A refused C-STORE's error names the instance's
# PatientID, then its UIDs (DicomMap::LogMissingTagsForStore), as one line:
#   E1130 11:40:27.938541 DicomMap.cpp:1015] Store has failed because required tags
#   (StudyInstanceUID) are missing for the following instance: PatientID=<value>,
#   SeriesInstanceUID=<uid>, SOPInstanceUID=<uid>
# The value is written as the file holds it, unquoted: a PatientID may hold ", ", "=", ";" and
# spaces (a malformed one anything, line breaks too), so nothing after "PatientID=" can be told
# apart from it. The rest of the line is withheld, and the lines continuing it (those not
# starting as Orthanc's lines do: severity, date, time). Higher verbosities print tags as JSON,
# where a value is quoted and withheld alone.
_PATIENT_ATTRIBUTES = (
    rb"(?:PatientID|PatientName|PatientBirthDate|PatientBirthTime|PatientSex|OtherPatientIDs"
    rb"|OtherPatientNames|IssuerOfPatientID|PatientAddress|AccessionNumber"
    rb"|ReferringPhysicianName)"
)
# Left to right: a JSON value is withheld and the search goes on after it; the first unquoted
# value takes the rest of the line.
_PATIENT_VALUE = re.compile(
    rb'(?P<json>"' + _PATIENT_ATTRIBUTES + rb'"\s*:\s*)"(?:[^"\\]|\\.)*"'
    rb"|(?P<unquoted>" + _PATIENT_ATTRIBUTES + rb"=).*",
    re.DOTALL,
)
_ORTHANC_LINE = re.compile(rb"[EWIT?][0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6} ")
WITHHELD = b"(withheld)"


class PatientDataRedactor:
    """Orthanc's output, line by line, with the values of patient attributes withheld."""

    def __init__(self) -> None:
        # An unquoted value ran to the end of the last line: it may go on in the next ones.
        self._value_open = False

    def __call__(self, line: bytes) -> bytes:
        body = line.rstrip(b"\r\n")
        ending = line[len(body) :]
        if self._value_open and not _ORTHANC_LINE.match(body):
            return WITHHELD + ending
        self._value_open = False
        return _PATIENT_VALUE.sub(self._withhold, body) + ending

    def _withhold(self, match: re.Match[bytes]) -> bytes:
        if match["json"] is not None:
            return match["json"] + b'"' + WITHHELD + b'"'
        self._value_open = True
        return match["unquoted"] + WITHHELD


def redact_patient_data(line: bytes) -> bytes:
    """One line of Orthanc's output with the values of patient attributes withheld."""
    return PatientDataRedactor()(line)


def copy_redacted(source: IO[bytes], sink: IO[bytes]) -> None:
    """Copies Orthanc's output to its log, line by line, through a PatientDataRedactor, until
    Orthanc closes it (it ends)."""
    redact = PatientDataRedactor()
    for line in iter(source.readline, b""):
        sink.write(redact(line))
        sink.flush()
    source.close()


class OrthancProcess:
    """One Orthanc server process, started with TCP_NODELAY=1.

    Debian's DCMTK leaves Nagle's algorithm on unless TCP_NODELAY=1 is in the environment:
    C-STORE ingest measured about 10 instances/s without it against 70-140/s with it.
    """

    def __init__(self, layout: OrthancLayout, *, binary: str | None = None) -> None:
        self.layout = layout
        self._binary = binary or shutil.which("Orthanc") or DEFAULT_BINARY
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._copier: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.layout.http_port}"

    @property
    def log_path(self) -> Path:
        return self.layout.work_dir / "orthanc.log"

    @property
    def config_path(self) -> Path:
        return self.layout.work_dir / "orthanc.json"

    def write_configuration(self) -> None:
        # Orthanc's folder holds every image it stores, and its index: this user's only.
        work = self.layout.work_dir
        work.mkdir(mode=0o700, parents=True, exist_ok=True)
        work.chmod(0o700)
        self.layout.index_dir.mkdir(mode=0o700, exist_ok=True)
        storage = self.layout.storage_dir
        storage.mkdir(mode=0o700, parents=True, exist_ok=True)
        if storage.stat().st_uid == os.geteuid():
            # Outside work_dir no private parent protects it. A share owned by another user
            # (an NFS export's root) keeps the permissions its owner gave it.
            storage.chmod(0o700)
        if self.layout.worklist_dir is not None:
            # ModalityWorklists fails every C-FIND on a missing folder; an empty one answers.
            self.layout.worklist_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(render_configuration(self.layout), indent=2))
        self.config_path.chmod(0o600)  # it may hold credentials

    def start(self, timeout: float = 60.0) -> None:
        if not Path(self._binary).exists():
            raise OrthancStartError(
                f"Orthanc not found at {self._binary}: run orthanc/install-packages.sh"
            )
        self.write_configuration()
        env = {**os.environ, "TCP_NODELAY": "1", **plugin_environment(self.layout)}
        self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            [self._binary, str(self.config_path)],
            env=env,
            # Through copy_redacted on its way to the log, patient data withheld.
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # Stopped cleanly (SIGTERM, as `stop` does) when its starter dies, even by kill -9:
            # otherwise it keeps its ports and its index, and the next start fails on them.
            preexec_fn=child_process.ending_with_parent(signal.SIGTERM),
            # Whatever the caller's umask: the images Orthanc stores are this user's only.
            umask=0o077,
        )
        assert self._process.stdout is not None
        self._copier = threading.Thread(
            target=copy_redacted,
            args=(self._process.stdout, self._log),
            name="orthanc-log",
            daemon=True,
        )
        self._copier.start()
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        assert self._process is not None
        auth = (self.layout.username, self.layout.password) if self.layout.username else None

        def answers() -> bool:
            try:
                return (
                    httpx.get(
                        f"{self.url}/system", auth=auth, timeout=1.0, verify=tls_context()
                    ).status_code
                    == 200
                )
            except httpx.HTTPError:
                return False

        child_process.wait_until_ready(
            self._process,
            answers,
            timeout=timeout,
            what="Orthanc",
            log_tail=self.log_tail,
            error=OrthancStartError,
        )

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        if self._process is None:
            return
        child_process.stop(self._process, signal.SIGTERM, timeout)
        self._process = None
        if self._copier is not None:
            self._copier.join(5)  # its last lines, up to the end of the output
            self._copier = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        """Ends Orthanc abruptly, as a crash or power loss would."""
        if self._process is not None:
            self._process.kill()
            self._process.wait(10)
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
