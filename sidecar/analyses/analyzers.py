"""Which analyzers this node knows: `quality` (built in), the operator's ONNX models
(AI_MODELS_DIR) and the external programs named in AI_EXTERNAL_ANALYZERS. An analysis may ask
for any of them by name; a name nobody registered, or a model refused at start-up (its checksum
does not match its manifest, say), is refused with the reason.

Built once per process (loading a model is slow) and kept as a service; a test registers an
analyzer of its own with `register`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends

from sidecar.analyses.findings import Analyzer
from sidecar.analyses.models import AnalyzerKind
from sidecar.core.dependencies import provide

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegisteredAnalyzer:
    """An analyzer by name: `analyzer` runs it inside the sidecar (None for an external one,
    whose tasks are UPS work items an external program performs)."""

    name: str
    kind: AnalyzerKind
    analyzer: Analyzer | None = None

    @property
    def version(self) -> str:
        return self.analyzer.version if self.analyzer is not None else ""


class UnknownAnalyzer(LookupError):
    """No analyzer may run under this name; the message says why (no patient data)."""


class AnalyzerRegistry:
    def __init__(
        self,
        *,
        built_in: Iterable[Analyzer] = (),
        models: Mapping[str, Analyzer] | None = None,
        refused: Mapping[str, str] | None = None,
        external: Iterable[str] = (),
    ) -> None:
        self._known: dict[str, RegisteredAnalyzer] = {}
        self._refused: dict[str, str] = dict(refused or {})
        for analyzer in built_in:
            self.register(analyzer)
        for analyzer in (models or {}).values():
            self.register(analyzer, kind=AnalyzerKind.ONNX)
        for name in external:
            if name in self._known:
                # The operator listed a name the sidecar runs itself: it keeps running it.
                log.error("analyzer %s runs inside the sidecar: not made external", name)
                continue
            self._known[name] = RegisteredAnalyzer(name, AnalyzerKind.EXTERNAL)
            self._refused.pop(name, None)

    def register(self, analyzer: Analyzer, kind: AnalyzerKind = AnalyzerKind.BUILT_IN) -> None:
        """Runs `analyzer` inside the sidecar under its name (replacing any of that name)."""
        self._known[analyzer.name] = RegisteredAnalyzer(analyzer.name, kind, analyzer)
        self._refused.pop(analyzer.name, None)

    def refuse(self, name: str, reason: str) -> None:
        """No analyzer runs under `name`, for `reason` (a model whose checksum does not match
        its manifest, say): asking for it is refused with the reason."""
        self._known.pop(name, None)
        self._refused[name] = reason

    def names(self) -> list[str]:
        return sorted(self._known)

    def find(self, name: str) -> RegisteredAnalyzer | None:
        return self._known.get(name)

    def get(self, name: str) -> RegisteredAnalyzer:
        """The analyzer called `name`; UnknownAnalyzer saying why there is none."""
        found = self._known.get(name)
        if found is not None:
            return found
        if name in self._refused:
            raise UnknownAnalyzer(f"analyzer {name} is refused: {self._refused[name]}")
        available = ", ".join(self.names()) or "none"
        raise UnknownAnalyzer(f"no analyzer is registered as {name} (available: {available})")


AnalyzerRegistryDep = Annotated[AnalyzerRegistry, Depends(provide(AnalyzerRegistry))]
