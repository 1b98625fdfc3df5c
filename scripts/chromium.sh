#!/usr/bin/env bash
# Debian's Chromium for the browser tests and the demo's screenshots, installed when absent
# (Playwright drives it; Playwright's own browser download is never used). A CJK font comes
# with it so that the Simplified Chinese pages render as text, not boxes.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
echo "chromium not found: installing Debian's package" >&2
sudo=""
[ "$(id -u)" != 0 ] && command -v sudo >/dev/null && sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
  chromium fonts-wqy-microhei fonts-dejavu-core >/dev/null
