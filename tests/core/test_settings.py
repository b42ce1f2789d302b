"""Secret settings given as files (<NAME>_FILE, as Docker secrets provide them): read, refused
when ambiguous, unreadable or empty, and never quoted in the refusal."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.core.settings import SECRET_SETTINGS, SecretFileError, Settings

REPO = Path(__file__).resolve().parents[2]
VALUE = "file-secret-value-" + "v" * 40
VARIABLES = [name.upper() for name in SECRET_SETTINGS]


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for variable in VARIABLES:
        monkeypatch.delenv(variable, raising=False)
        monkeypatch.delenv(f"{variable}_FILE", raising=False)
    monkeypatch.delenv("ENVIRONMENT", raising=False)
    return monkeypatch


def secret_file(tmp_path: Path, content: str, name: str = "secret") -> Path:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return path


def test_the_required_secrets_can_all_be_files() -> None:
    assert set(VARIABLES) >= {
        "JWT_SECRET",
        "ADMIN_PASSWORD",
        "SIDECAR_PLUGIN_TOKEN",
        "ORTHANC_PASSWORD",
        "NOTIFICATION_SERVICE_TOKEN",
        "DATABASE_URL",
        "ORTHANC_INDEX_URL",
    }


@pytest.mark.parametrize("variable", VARIABLES)
def test_a_secret_is_read_from_its_file_without_the_trailing_newline(
    clean_environment: pytest.MonkeyPatch, tmp_path: Path, variable: str
) -> None:
    value = "postgresql+psycopg://u:p@db:5432/x" if variable == "DATABASE_URL" else VALUE
    clean_environment.setenv(f"{variable}_FILE", str(secret_file(tmp_path, value + "\n")))
    assert getattr(Settings(), variable.lower()) == value


def test_only_the_trailing_line_break_is_removed(
    clean_environment: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_environment.setenv("ADMIN_PASSWORD_FILE", str(secret_file(tmp_path, " a b \r\n")))
    assert Settings().admin_password == " a b "


def test_production_accepts_its_secrets_from_files_only(
    clean_environment: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_environment.setenv("ENVIRONMENT", "production")
    clean_environment.setenv("JWT_SECRET_FILE", str(secret_file(tmp_path, VALUE, "jwt")))
    clean_environment.setenv(
        "SIDECAR_PLUGIN_TOKEN_FILE", str(secret_file(tmp_path, VALUE[::-1], "token"))
    )
    settings = Settings()
    assert (settings.jwt_secret, settings.sidecar_plugin_token) == (VALUE, VALUE[::-1])


@pytest.mark.parametrize("variable", VARIABLES)
def test_both_the_variable_and_its_file_are_refused(
    clean_environment: pytest.MonkeyPatch, tmp_path: Path, variable: str
) -> None:
    clean_environment.setenv(variable, "direct-" + VALUE)
    clean_environment.setenv(f"{variable}_FILE", str(secret_file(tmp_path, VALUE)))
    with pytest.raises(SecretFileError, match=f"{variable} and {variable}_FILE") as refused:
        Settings()
    assert VALUE not in str(refused.value)


def test_an_empty_file_is_refused_naming_the_variable(
    clean_environment: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_environment.setenv("JWT_SECRET_FILE", str(secret_file(tmp_path, "\n")))
    with pytest.raises(SecretFileError, match=r"JWT_SECRET_FILE: .* is empty"):
        Settings()


def test_a_missing_or_unreadable_file_is_refused_naming_the_variable(
    clean_environment: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_environment.setenv("ORTHANC_PASSWORD_FILE", str(tmp_path / "absent"))
    with pytest.raises(SecretFileError, match="ORTHANC_PASSWORD_FILE: cannot read"):
        Settings()
    clean_environment.setenv("ORTHANC_PASSWORD_FILE", str(tmp_path))  # a folder
    with pytest.raises(SecretFileError, match="ORTHANC_PASSWORD_FILE: cannot read"):
        Settings()


def test_a_file_that_is_not_text_is_refused_without_quoting_it(
    clean_environment: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "binary"
    path.write_bytes(b"\xffsecret-bytes")
    clean_environment.setenv("NOTIFICATION_SERVICE_TOKEN_FILE", str(path))
    with pytest.raises(SecretFileError, match="NOTIFICATION_SERVICE_TOKEN_FILE") as refused:
        Settings()
    assert "secret-bytes" not in str(refused.value)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_the_sidecar_refuses_to_start_with_a_message_and_no_value(tmp_path: Path) -> None:
    """`python -m sidecar` ends with the message, no traceback, the value nowhere."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key.upper().removesuffix("_FILE") not in VARIABLES
    }
    env.update(
        PYTHONPATH=str(REPO),
        DATA_DIR=str(tmp_path / "data"),
        SIDECAR_PORT=str(free_port()),
        MLLP_ENABLED="false",
        JWT_SECRET=VALUE,
        JWT_SECRET_FILE=str(secret_file(tmp_path, VALUE)),
    )
    started = subprocess.run(
        [sys.executable, "-m", "sidecar"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert started.returncode == 1
    assert "JWT_SECRET and JWT_SECRET_FILE are both set" in started.stderr
    assert "Traceback" not in started.stderr
    assert VALUE not in started.stdout + started.stderr
