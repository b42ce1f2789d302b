#!/usr/bin/env bash
# Installs the Debian packages named as arguments, as root or through sudo. Used by
# install-packages.sh (what the service runs on) and install-test-packages.sh (what only the
# tests and benchmarks need), which decide what is missing.
set -euo pipefail

echo "installing Debian packages: $*"
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "need root (or sudo) to install: $*" >&2; exit 1; }
    sudo="sudo"
fi
# Some packages (orthanc, nginx) try to (re)start their own service; there is none to start here
# and we run them ourselves, so a policy-rc.d refusal is expected and harmless.
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@"
