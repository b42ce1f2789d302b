"""Typed settings, read from the environment once, in the app factory (never at import time)."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

# Values people paste from examples; refusing them in production beats a forged token later.
_PLACEHOLDER_SECRETS = {"", "changethis", "change-me", "changeme", "secret", "jwt-secret", "xxx"}
_MIN_SECRET_LENGTH = 32
# A comma-separated list of analyzer names (sidecar.analyses), each a lower-case token.
_ANALYZER_LIST = r"^\s*([a-z0-9][a-z0-9._-]{0,63}\s*(,\s*[a-z0-9][a-z0-9._-]{0,63}\s*)*)?$"

# Settings that may also be given as <NAME>_FILE: the path of a file holding the value (Docker
# secrets, /run/secrets/...), so that the value stays out of the container's environment.
SECRET_SETTINGS = (
    "jwt_secret",
    "admin_password",
    "sidecar_plugin_token",
    "orthanc_password",
    "notification_service_token",
    "metrics_token",
    "database_url",
    "orthanc_index_url",
)


class SecretFileError(ValueError):
    """A secret given as <NAME>_FILE that cannot be used. The message names the variable and
    the file, never the value."""


def read_secret_files(environ: Mapping[str, str]) -> dict[str, str]:
    """The secret settings given as <NAME>_FILE in `environ`, read from their files.

    The file's content is the value, without its trailing line break. Refused: both NAME and
    NAME_FILE set (which one would win is a guess), a file that cannot be read, an empty one."""
    # Variable names are case-insensitive, as for the settings themselves.
    env = {key.upper(): value for key, value in environ.items()}
    values: dict[str, str] = {}
    for name in SECRET_SETTINGS:
        variable = name.upper()
        path = env.get(f"{variable}_FILE", "")
        if not path:
            continue
        if env.get(variable):
            raise SecretFileError(
                f"{variable} and {variable}_FILE are both set: give {variable} one way only"
            )
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise SecretFileError(f"{variable}_FILE: cannot read {path} ({reason})") from None
        value = text.rstrip("\r\n")
        if not value.strip():
            raise SecretFileError(f"{variable}_FILE: {path} is empty")
        values[name] = value
    return values


class _SecretFilesSource(PydanticBaseSettingsSource):
    """<NAME>_FILE variables for the settings in SECRET_SETTINGS."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads every secret at once

    def __call__(self) -> dict[str, Any]:
        return dict(read_secret_files(os.environ))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # NAME and NAME_FILE together are refused, so the order of these two does not matter.
        return (
            init_settings,
            _SecretFilesSource(settings_cls),
            env_settings,
            dotenv_settings,
            file_secret_settings,
        )

    environment: Literal["development", "production"] = "development"
    data_dir: Path = Path("./var")
    database_url: str = ""
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"  # json: one object a line (sidecar.core.logs)

    sidecar_host: str = "127.0.0.1"
    sidecar_port: int = Field(default=3006, ge=1, le=65535)

    orthanc_url: str = ""
    orthanc_username: str = ""
    orthanc_password: str = ""
    orthanc_http_port: int = Field(default=8042, ge=1, le=65535)
    orthanc_dicom_port: int = Field(default=4242, ge=1, le=65535)
    orthanc_aet: str = Field(default="ORTHANC", min_length=1, max_length=16)
    orthanc_timeout: float = Field(default=10.0, gt=0)
    stable_age: int = Field(default=60, ge=1)
    # Local Orthanc only (sidecar.launcher.run): network exposure and an optional PostgreSQL index.
    orthanc_remote_access: bool = False
    dicom_modalities: str = ""  # "AET@host:port,AET@host:port"
    orthanc_index_url: str = ""  # postgresql://user:password@host:port/database
    # Orthanc's storage (its DICOM files): the one folder every node of a cluster shares (NFS,
    # or an object store plugin's). Default DATA_DIR/orthanc/storage.
    orthanc_storage_dir: Path | None = None

    # A cluster (sidecar.core.cluster): nodes sharing DATABASE_URL (PostgreSQL), ORTHANC_INDEX_URL
    # and ORTHANC_STORAGE_DIR. Each node has its own name; a background job held by a node
    # that stops answering is taken over by another within CLUSTER_LEASE_SECONDS.
    node_name: str = Field(default_factory=socket.gethostname, min_length=1, max_length=64)
    cluster_lease_seconds: float = Field(default=15.0, ge=3.0, le=300.0)

    admin_password: str = ""
    jwt_secret: str = ""
    # Access tokens are short; a client keeps its session with the refresh token (rotated on
    # each use, sidecar.accounts.refresh). The viewer's cookie session has its own lifetime.
    jwt_expire_minutes: int = Field(default=15, ge=1)
    refresh_token_days: int = Field(default=7, ge=1, le=365)
    viewer_session_minutes: int = Field(default=480, ge=1)
    # Live events (sidecar.events) are kept this long: a client reconnecting later gets a reset.
    events_retention_hours: float = Field(default=24.0, gt=0, le=24 * 90)
    # Login throttling (sidecar.accounts.throttle): this many failures for one user name within
    # the window lock it (429) until the window has passed or an administrator unlocks it; a
    # client address gets a higher limit of its own, counting failures only.
    login_max_failures: int = Field(default=5, ge=1)
    login_window_minutes: int = Field(default=15, ge=1)
    login_max_failures_per_address: int = Field(default=20, ge=1)
    # Administrators must use two-factor authentication (TOTP); unset: on in production only.
    require_admin_2fa: bool | None = None
    sidecar_plugin_token: str = ""

    # HL7 v2 over MLLP from the hospital information system (orders in).
    mllp_enabled: bool = True
    mllp_host: str = "127.0.0.1"
    mllp_port: int = Field(default=2575, ge=0, le=65535)
    # The department's time zone (IANA name) for HL7 times without an offset and DICOM local
    # dates and times; empty: this machine's zone.
    timezone: str = ""
    # Modality Performed Procedure Step (sidecar.mpps): the DICOM port modalities report the
    # start and end of an exam on. Port 0: any free port (tests); AE title default ORTHANC_AET.
    mpps_enabled: bool = True
    mpps_host: str = "127.0.0.1"
    mpps_port: int = Field(default=4243, ge=0, le=65535)
    mpps_aet: str = Field(default="", max_length=16)
    # The DICOM Modality Worklist, as files the Orthanc plugin serves (default DATA_DIR/worklist).
    worklist_enabled: bool = True
    worklist_dir: Path | None = None

    # Results (ORU^R01) to the hospital information system over MLLP; no host: not sent, and
    # an order completes when its report is signed.
    his_mllp_host: str = ""
    his_mllp_port: int = Field(default=2576, ge=1, le=65535)
    his_mllp_timeout: float = Field(default=10.0, gt=0)
    his_application: str = Field(default="", max_length=180)  # MSH-5; empty: the ORM's MSH-3
    his_facility: str = Field(default="", max_length=180)  # MSH-6; empty: the ORM's MSH-4
    hl7_application: str = Field(default="RADIOLOGY", min_length=1, max_length=180)  # MSH-3
    hl7_facility: str = Field(default="", max_length=180)  # MSH-4
    # Where an order from the HIS names its facility: MSH-4 (sending facility) or PV1-3
    # (the facility of the patient's assigned location, PV1-3.4).
    order_facility_field: Literal["MSH-4", "PV1-3"] = "MSH-4"
    # The facility each registered modality belongs to, by calling AE title: studies without an
    # order take it. "CT01=NORTH,MR01=SOUTH".
    modality_facilities: str = Field(default="", max_length=4000)
    # The assigning authority of a PatientID whose images name none (IssuerOfPatientID empty):
    # studies without an order are filed under (PatientID, DEFAULT_ISSUER). Empty: none.
    default_issuer: str = Field(default="", max_length=64)
    results_send_preliminary: bool = False
    # Order status updates (ORM^O01, ORC-1 SC: IP, CM, DC, CA) to the HIS through the same
    # outbox as results, whenever results are sent; false: results only.
    his_status_updates: bool = True
    # The ORU^R01 also carries the report as a PDF (an OBX of type ED, base64).
    results_embed_pdf: bool = False
    # The department's name, at the head of every PDF report (sidecar.reports.pdf).
    department_name: str = Field(default="Radiology", min_length=1, max_length=128)
    # Back-off between delivery attempts while the HIS is unreachable: doubling, capped.
    result_retry_max_delay: float = Field(default=60.0, gt=0)

    # Critical findings (sidecar.findings.service). Notifications go to a webhook (HTTP POST
    # JSON); unset: each is recorded as not configured and escalation still runs.
    notification_service_url: str = ""
    # Sent as `Authorization: Bearer <token>` so the service can tell our webhooks from forgeries.
    notification_service_token: str = ""
    notification_timeout: float = Field(default=5.0, gt=0)
    notification_retry_max_delay: float = Field(default=60.0, gt=0)
    # The sidecar's address as clinicians reach it, for links in notifications; empty:
    # http://SIDECAR_HOST:SIDECAR_PORT.
    public_url: str = ""
    # Minutes each severity has to be acknowledged before it escalates; 0: never escalates.
    critical_finding_ack_minutes_critical: int = Field(default=30, ge=0)
    critical_finding_ack_minutes_high: int = Field(default=120, ge=0)
    critical_finding_ack_minutes_moderate: int = Field(default=1440, ge=0)
    critical_finding_ack_minutes_low: int = Field(default=0, ge=0)
    # Who is notified after the ordering provider, in order (comma-separated recipient ids,
    # e.g. provider ids or on-call pager ids), and last of all the fail-safe recipient.
    critical_finding_escalation_contacts: str = Field(default="", max_length=2000)
    critical_finding_failsafe: str = Field(default="", max_length=64)
    # Break the glass (sidecar.access.emergency): how long a physician's emergency access to a
    # patient lasts, and who is told of each one (a recipient id of the notification service,
    # e.g. the privacy officer's; empty: each grant is recorded as not notified).
    emergency_access_minutes: int = Field(default=60, ge=1, le=1440)
    privacy_contact: str = Field(default="", max_length=64)
    # The OHIF viewer front (sidecar.viewer.bundle): the viewer at the root of this origin, with
    # /dicom-web and /wado proxied to Orthanc for users with a viewer session.
    viewer_enabled: bool = True
    viewer_dist: Path | None = None  # default: the npm install in sidecar/viewer
    # Where users open the viewer, for the viewerUrl of studies; default: this sidecar, when it
    # serves the viewer. Behind nginx (docker-compose) it is the front's public address.
    public_viewer_url: str = ""
    # `make run` only (sidecar.launcher.run): "nginx" serves the viewer and DICOMweb through
    # Debian's nginx on VIEWER_PORT, with the docker-compose front's configuration; "sidecar",
    # through the sidecar's own front on SIDECAR_PORT; "auto", nginx when it is installed.
    viewer_front: Literal["auto", "nginx", "sidecar"] = "auto"
    viewer_port: int = Field(default=8080, ge=1, le=65535)

    # Reading (sidecar.reading): the turnaround target per priority, minutes from images
    # complete to the final report. An overdue study's assignee is told at once (a study
    # nobody holds goes to the escalation contact); the escalation contact (a recipient id of
    # the notification service; empty: recorded as not notified) when the study is still
    # unread READING_ESCALATION_MINUTES later.
    reading_target_minutes_stat: int = Field(default=60, ge=1)
    reading_target_minutes_urgent: int = Field(default=240, ge=1)
    reading_target_minutes_routine: int = Field(default=1440, ge=1)
    reading_escalation_contact: str = Field(default="", max_length=64)
    reading_escalation_minutes: int = Field(default=30, ge=0)

    # AI analysis (sidecar.analyses): analyzers run on every stable study, and the analyzers
    # that are external programs (their tasks are UPS work items at /dicom-web/workitems), each
    # a comma-separated list of names; how long a claimed work item may go without a sign of its
    # performer before it is scheduled again; how soon a radiologist is asked to review a study
    # with a critical AI finding (it is overdue after that, and escalates like any other).
    ai_auto_analyzers: str = Field(default="", max_length=1024, pattern=_ANALYZER_LIST)
    ai_external_analyzers: str = Field(default="", max_length=1024, pattern=_ANALYZER_LIST)
    ai_claim_timeout_minutes: int = Field(default=30, ge=1)
    ai_review_minutes: int = Field(default=15, ge=1)

    # Images (sidecar.studies.image_access): how long a signed link to one image works without
    # a token, and the on-disk cache of rendered previews and thumbnails (DATA_DIR/thumbnails),
    # its oldest-used files removed past this size.
    image_url_minutes: int = Field(default=15, ge=1, le=60)
    thumbnail_cache_mb: int = Field(default=256, ge=1)
    # DICOM files uploaded through the API (POST /api/studies/{id}/images): a file larger than
    # this is refused and not kept (at most this much of one file is held, on disk past 1 MB).
    upload_max_mb: int = Field(default=512, ge=1, le=65536)

    # The /changes reconciler: how often it polls Orthanc when nothing wakes it sooner.
    reconcile_enabled: bool = True
    reconcile_interval: float = Field(default=5.0, gt=0)
    # Deletions made in Orthanc: how often Orthanc's list of studies is compared with the
    # sidecar's, to catch what a lost plugin notice missed (sidecar.ingest.deletion_watch).
    orthanc_reconcile_seconds: float = Field(default=300.0, gt=0)

    # Alarms in /health (sidecar.operations.alarms): 503 when the disk of ORTHANC_STORAGE_DIR or
    # of DATA_DIR has less free than this; 200 `degraded` when a queue's oldest item (a result
    # for the HIS, a notification, a registration...) has waited longer than this.
    disk_min_free_percent: float = Field(default=10.0, ge=0, le=100)
    backlog_warn_seconds: float = Field(default=300.0, gt=0)

    # GET /metrics (sidecar.operations.metrics_router), Prometheus' text format: open unless
    # METRICS_TOKEN is set (then a bearer token); METRICS_ENABLED false: 404, nothing measured.
    metrics_enabled: bool = True
    metrics_token: str = ""

    # Operator-supplied AI models (sidecar.analyses.onnx_models): a directory of ONNX files, each
    # with a JSON manifest; each model runs as an analyzer of its manifest's name. None: no model.
    ai_models_dir: Path | None = None

    @field_validator("ai_models_dir", mode="before")
    @classmethod
    def _unset_when_empty(cls, value: object) -> object:
        # AI_MODELS_DIR= (as compose files pass an unset variable) means no directory, not ".".
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _derive_and_check(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.data_dir / 'sidecar.db').resolve()}"
        if self.worklist_dir is None:
            self.worklist_dir = self.data_dir / "worklist"
        if self.orthanc_storage_dir is None:
            self.orthanc_storage_dir = self.data_dir / "orthanc" / "storage"
        self.node_name = self.node_name.strip()
        if not self.node_name or not self.node_name.isprintable():
            raise ValueError("NODE_NAME must be a printable name of 1 to 64 characters")
        if self.timezone:
            try:
                ZoneInfo(self.timezone)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise ValueError(f"TIMEZONE {self.timezone!r} is not an IANA time zone") from exc
        self.mpps_aet = self.mpps_aet or self.orthanc_aet
        if not self.orthanc_url:
            self.orthanc_url = f"http://127.0.0.1:{self.orthanc_http_port}"
        self.orthanc_url = self.orthanc_url.rstrip("/")
        if not self.public_url:
            self.public_url = f"http://{self.sidecar_host}:{self.sidecar_port}"
        self.public_url = self.public_url.rstrip("/")
        for contact in self.critical_finding_escalation_contacts.split(","):
            if len(contact.strip()) > 64:
                raise ValueError("CRITICAL_FINDING_ESCALATION_CONTACTS: ids are at most 64 long")
        self.modality_facility_map()  # refuses a malformed MODALITY_FACILITIES at start
        self.public_viewer_url = self.public_viewer_url.rstrip("/")
        if self.public_viewer_url and not self.public_viewer_url.startswith(
            ("http://", "https://")
        ):
            raise ValueError(f"PUBLIC_VIEWER_URL {self.public_viewer_url!r} is not an http(s) URL")
        if self.require_admin_2fa is None:
            self.require_admin_2fa = self.environment == "production"
        if self.environment == "production":
            _require_secret("JWT_SECRET", self.jwt_secret)
            _require_secret("SIDECAR_PLUGIN_TOKEN", self.sidecar_plugin_token)
        elif not self.jwt_secret:
            # Development only: tokens stop being valid when the process restarts.
            self.jwt_secret = secrets.token_urlsafe(48)
        return self

    def modality_facility_map(self) -> dict[str, str]:
        """MODALITY_FACILITIES as calling AE title -> facility."""
        facilities: dict[str, str] = {}
        for entry in filter(None, (e.strip() for e in self.modality_facilities.split(","))):
            aet, equals, facility = (part.strip() for part in entry.partition("="))
            if not equals or not 1 <= len(aet) <= 16 or not 1 <= len(facility) <= 64:
                raise ValueError(
                    f"MODALITY_FACILITIES: {entry!r} is not AET=FACILITY (an AE title of up to"
                    " 16 characters, a facility of up to 64)"
                )
            facilities[aet] = facility
        return facilities

    def auto_analyzers(self) -> tuple[str, ...]:
        """AI_AUTO_ANALYZERS as names, in the order given, each once."""
        return _names(self.ai_auto_analyzers)

    def external_analyzers(self) -> tuple[str, ...]:
        """AI_EXTERNAL_ANALYZERS as names, in the order given, each once."""
        return _names(self.ai_external_analyzers)


def _names(listed: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(filter(None, (name.strip() for name in listed.split(",")))))


def _require_secret(name: str, value: str) -> None:
    if value.strip().lower() in _PLACEHOLDER_SECRETS or len(value) < _MIN_SECRET_LENGTH:
        raise ValueError(
            f"{name} must be set to a random value of at least {_MIN_SECRET_LENGTH} characters "
            "in production (python3 -c 'import secrets; print(secrets.token_urlsafe(48))')"
        )
