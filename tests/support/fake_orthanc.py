"""A stand-in for the ``orthanc`` module, which exists only inside Orthanc's embedded Python.

Enum names and values match the Python plugin 4.0 on Orthanc 1.10.1 (read from the real module).
Each FakeOrthanc is a fresh module object, so tests never share registered callbacks or logs.
Importing this module also puts ``plugin/`` on ``sys.path``, as Orthanc does for its script.
"""

import enum
import importlib.util
import itertools
import os
import sys
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from unittest import mock

PLUGIN_DIR = Path(__file__).resolve().parents[2] / "plugin"
BRIDGE_SCRIPT = PLUGIN_DIR / "sidecar_bridge.py"

if str(PLUGIN_DIR) not in sys.path:
    sys.path.insert(0, str(PLUGIN_DIR))

ChangeCallback = Callable[[int, int, str], object]


class ChangeType(enum.IntEnum):
    COMPLETED_SERIES = 0
    DELETED = 1
    NEW_CHILD_INSTANCE = 2
    NEW_INSTANCE = 3
    NEW_PATIENT = 4
    NEW_SERIES = 5
    NEW_STUDY = 6
    STABLE_PATIENT = 7
    STABLE_SERIES = 8
    STABLE_STUDY = 9
    ORTHANC_STARTED = 10
    ORTHANC_STOPPED = 11
    UPDATED_ATTACHMENT = 12
    UPDATED_METADATA = 13
    UPDATED_PEERS = 14
    UPDATED_MODALITIES = 15
    JOB_SUBMITTED = 16
    JOB_SUCCESS = 17
    JOB_FAILURE = 18


class ResourceType(enum.IntEnum):
    PATIENT = 0
    STUDY = 1
    SERIES = 2
    INSTANCE = 3
    NONE = 4


class FakeOrthanc(types.ModuleType):
    ChangeType = ChangeType
    ResourceType = ResourceType

    def __init__(self) -> None:
        super().__init__("orthanc")
        self.change_callback: ChangeCallback | None = None
        self.logs: list[tuple[str, str]] = []  # (level, message) in call order

    def RegisterOnChangeCallback(self, callback: ChangeCallback) -> None:
        if self.change_callback is not None:
            # Same refusal (and message) as the real plugin 4.0.
            raise RuntimeError("Can only register one Python on-changes callback")
        self.change_callback = callback

    def LogError(self, message: str) -> None:
        self.logs.append(("error", message))

    def LogWarning(self, message: str) -> None:
        self.logs.append(("warning", message))

    def LogInfo(self, message: str) -> None:
        self.logs.append(("info", message))

    def messages(self, level: str) -> list[str]:
        return [message for logged_level, message in self.logs if logged_level == level]

    def on_change(self, change_type: int, level: int, resource_id: str) -> object:
        """Fire the registered callback the way the plugin does: plain ints, then the id."""
        if self.change_callback is None:
            raise RuntimeError("no on-change callback registered")
        return self.change_callback(int(change_type), int(level), resource_id)


_module_names = (f"sidecar_bridge_under_test_{n}" for n in itertools.count())


def load_bridge(fake: FakeOrthanc, environ: Mapping[str, str]) -> types.ModuleType:
    """Execute plugin/sidecar_bridge.py as Orthanc would, with ``fake`` as ``orthanc``.

    ``environ`` replaces the whole environment during the import, so a developer's own
    SIDECAR_* variables cannot leak in. A fresh module name per call re-runs the script.
    """
    spec = importlib.util.spec_from_file_location(next(_module_names), BRIDGE_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Only the "orthanc" entry is swapped back: restoring all of sys.modules would also drop
    # modules first imported by the script (requests, ...) and split their classes in two.
    previous = sys.modules.get("orthanc")
    sys.modules["orthanc"] = fake
    try:
        with mock.patch.dict(os.environ, environ, clear=True):
            spec.loader.exec_module(module)
    finally:
        if previous is None:
            del sys.modules["orthanc"]
        else:
            sys.modules["orthanc"] = previous
    return module
