#!/usr/bin/env bash
# Install Debian's Chromium when missing, so tests/report/test_browser.py can screenshot report.html in
# a real headless browser. The test is skipped without it outside CI and fails without it in CI.
set -euo pipefail

if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then
    exit 0
fi

if ! command -v apt-get >/dev/null; then
    echo "ensure-chromium: chromium is missing and apt-get is not available;" \
         "install Chromium by hand (the browser test of the report needs it)" >&2
    exit 0
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null; then SUDO="sudo"; else
        echo "ensure-chromium: not root and no sudo: install chromium by hand" >&2; exit 0
    fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# --no-install-recommends: the headless screenshot needs neither fonts extras nor a desktop.
$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
echo "ensure-chromium: installed $(chromium --version 2>/dev/null || true)"
