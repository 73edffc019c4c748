#!/usr/bin/env bash
# Installs Debian's headless-capable Chromium and its WebDriver (chromedriver) for the
# dashboard's browser test. Idempotent and quiet when both are already there; no browser is
# ever downloaded from anywhere but Debian's own packages.
set -euo pipefail

# A font, or the screenshot the test takes shows boxes instead of text.
FONT=/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf

if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] && [ -e "$FONT" ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "chromium.sh: Chromium is missing and installing it needs root (apt-get)" >&2
    exit 1
fi

echo "chromium.sh: installing chromium, chromium-driver and a font from Debian's packages" >&2
export DEBIAN_FRONTEND=noninteractive
# A stale or missing package list is the usual cause of "Unable to locate package".
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core >/dev/null
[ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] && [ -e "$FONT" ]
