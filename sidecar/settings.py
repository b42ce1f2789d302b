"""Typed settings, read from the environment once, in the app factory (never at import time)."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Values people paste from examples; refusing them in production beats a forged token later.
_PLACEHOLDER_SECRETS = {"", "changethis", "change-me", "changeme", "secret", "jwt-secret", "xxx"}
_MIN_SECRET_LENGTH = 32


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)

    environment: Literal["development", "production"] = "development"
    data_dir: Path = Path("./var")
    database_url: str = ""
    log_level: str = "INFO"

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
    # Local Orthanc only (sidecar.launcher): network exposure and an optional PostgreSQL index.
    orthanc_remote_access: bool = False
    dicom_modalities: str = ""  # "AET@host:port,AET@host:port"
    orthanc_index_url: str = ""  # postgresql://user:password@host:port/database

    admin_password: str = ""
    jwt_secret: str = ""
    jwt_expire_minutes: int = Field(default=480, ge=1)
    sidecar_plugin_token: str = ""

    # HL7 v2 over MLLP from the hospital information system (orders in).
    mllp_enabled: bool = True
    mllp_host: str = "127.0.0.1"
    mllp_port: int = Field(default=2575, ge=0, le=65535)
    # The department's time zone (IANA name) for HL7 times without an offset and DICOM local
    # dates and times; empty: this machine's zone.
    timezone: str = ""
    # The DICOM Modality Worklist, as files the Orthanc plugin serves (default DATA_DIR/worklist).
    worklist_enabled: bool = True
    worklist_dir: Path | None = None

    # The /changes reconciler: how often it polls Orthanc when nothing wakes it sooner.
    reconcile_enabled: bool = True
    reconcile_interval: float = Field(default=5.0, gt=0)

    @model_validator(mode="after")
    def _derive_and_check(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.data_dir / 'sidecar.db').resolve()}"
        if self.worklist_dir is None:
            self.worklist_dir = self.data_dir / "worklist"
        if self.timezone:
            try:
                ZoneInfo(self.timezone)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise ValueError(f"TIMEZONE {self.timezone!r} is not an IANA time zone") from exc
        if not self.orthanc_url:
            self.orthanc_url = f"http://127.0.0.1:{self.orthanc_http_port}"
        self.orthanc_url = self.orthanc_url.rstrip("/")
        if self.environment == "production":
            _require_secret("JWT_SECRET", self.jwt_secret)
            _require_secret("SIDECAR_PLUGIN_TOKEN", self.sidecar_plugin_token)
        elif not self.jwt_secret:
            # Development only: tokens stop being valid when the process restarts.
            self.jwt_secret = secrets.token_urlsafe(48)
        return self


def _require_secret(name: str, value: str) -> None:
    if value.strip().lower() in _PLACEHOLDER_SECRETS or len(value) < _MIN_SECRET_LENGTH:
        raise ValueError(
            f"{name} must be set to a random value of at least {_MIN_SECRET_LENGTH} characters "
            "in production (python3 -c 'import secrets; print(secrets.token_urlsafe(48))')"
        )
