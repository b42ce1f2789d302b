"""The sidecar: orders, clinical context of studies, reports, users and audit beside Orthanc."""

__version__ = "0.1.0"  # as pyproject.toml's; written into each backup's manifest
