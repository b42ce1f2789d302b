#!/usr/bin/env bash
# Installs the Debian packages the service runs on, when any is missing:
# Orthanc with its Python, DICOMweb and PostgreSQL-index plugins, requests for the plugin's
# embedded Python (Debian's python3, not the project's venv), dcmtk's DICOM tools, and nginx for
# the viewer front (sidecar/launcher/nginx.py: the docker-compose front's configuration, locally).
set -euo pipefail

need=()
[ -x /usr/sbin/Orthanc ] || need+=(orthanc)
[ -e /usr/share/orthanc/plugins/libOrthancPython.so ] || need+=(orthanc-python)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
[ -e /usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so ] || need+=(orthanc-postgresql)
[ -x /usr/bin/storescu ] && [ -x /usr/bin/findscu ] || need+=(dcmtk)
[ -d /usr/lib/python3/dist-packages/requests ] || need+=(python3-requests)
[ -x /usr/sbin/nginx ] || need+=(nginx)

if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi

"$(dirname "$0")/apt-install.sh" "${need[@]}"
