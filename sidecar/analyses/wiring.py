"""The analyses' services, built with the app's (sidecar.main): the analyzers this node knows
and the runner, and what a study's stable images set off (the auto analyzers)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import Engine
from sqlmodel import Session

from sidecar.analyses.analyzers import AnalyzerRegistry
from sidecar.analyses.onnx_models import model_catalog
from sidecar.analyses.quality import QualityAnalyzer
from sidecar.analyses.runner import AnalysisRunner
from sidecar.analyses.service import check_auto_analyzers, request_auto_analysis
from sidecar.core.dependencies import Services
from sidecar.core.settings import Settings
from sidecar.ingest.orthanc_client import OrthancClient
from sidecar.reading.overdue import ReadingOverdue
from sidecar.studies.models import Study

StableStudyHook = Callable[[Session, Study], object]


def analyzer_registry(settings: Settings) -> AnalyzerRegistry:
    """The built-in analyzers, the models of AI_MODELS_DIR (each checked against its manifest
    now, once: a refused one is refused by name when asked for), the external analyzers."""
    catalog = model_catalog(settings)
    return AnalyzerRegistry(
        built_in=[QualityAnalyzer()],
        models=catalog.analyzers,
        refused=catalog.refused,
        external=settings.external_analyzers(),
    )


def add_analyses(
    services: Services, settings: Settings, *, clock: Callable[[], datetime]
) -> StableStudyHook:
    """Adds the registry and the runner to `services`; returns what the Orthanc sync calls in
    the transaction registering a stable study: the auto analyzers asked for."""
    registry = services.add(analyzer_registry(settings))
    auto = settings.auto_analyzers()
    check_auto_analyzers(registry, auto)
    runner = services.add(
        AnalysisRunner(
            services.get(Engine),
            services.get(OrthancClient),
            registry,
            review_after=timedelta(minutes=settings.ai_review_minutes),
            clock=clock,
            # A critical finding's review deadline may come before anything the overdue
            # worker waits for.
            on_review_requested=lambda: services.get(ReadingOverdue).wake(),
        )
    )

    def stable(session: Session, study: Study) -> object:
        return request_auto_analysis(
            session,
            study,
            analyzers=auto,
            registry=registry,
            now=clock(),
            on_committed=runner.wake,
        )

    return stable
