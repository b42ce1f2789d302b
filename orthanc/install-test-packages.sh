#!/usr/bin/env bash
# Installs the Debian packages only the tests and benchmarks need, when any is missing:
# Chromium for the viewer's browser test and benchmark (nginx, which the tests also run, is one
# of the service's own packages: orthanc/install-packages.sh).
# Playwright's own browser download cannot work here (no route to its servers); playwright-core
# from npm drives Debian's Chromium at /usr/bin/chromium instead. Fails loudly: a browser test
# must never be skipped for want of a browser.
set -euo pipefail

need=()
[ -x /usr/bin/chromium ] || need+=(chromium)

if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi
"$(dirname "$0")/apt-install.sh" "${need[@]}"
[ -x /usr/bin/chromium ] || { echo "chromium did not install at /usr/bin/chromium" >&2; exit 1; }
