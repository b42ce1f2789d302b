#!/usr/bin/env bash
# Installs the Debian packages the service runs on, when any is missing:
# Orthanc with its Python, DICOMweb and PostgreSQL-index plugins, requests for the plugin's
# embedded Python (Debian's python3, not the project's venv), and dcmtk's DICOM tools.
set -euo pipefail

need=()
[ -x /usr/sbin/Orthanc ] || need+=(orthanc)
[ -e /usr/share/orthanc/plugins/libOrthancPython.so ] || need+=(orthanc-python)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
[ -e /usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so ] || need+=(orthanc-postgresql)
[ -x /usr/bin/storescu ] && [ -x /usr/bin/findscu ] || need+=(dcmtk)
[ -d /usr/lib/python3/dist-packages/requests ] || need+=(python3-requests)

if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi

echo "installing Debian packages: ${need[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "need root (or sudo) to install: ${need[*]}" >&2; exit 1; }
    sudo="sudo"
fi
# The orthanc package tries to (re)start its own service; there is none to start here and we run
# Orthanc ourselves, so a policy-rc.d refusal is expected and harmless.
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
