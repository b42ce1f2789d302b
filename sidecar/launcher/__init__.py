"""Process management for `make run` only: Orthanc from Debian's packages, the nginx viewer
front, and the sidecar, started, watched and stopped together. The application never imports
this package (docker-compose runs each part in a container of its own)."""
