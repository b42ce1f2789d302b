"""The sidecar: orders, clinical context of studies, reports, users and audit beside Orthanc."""
