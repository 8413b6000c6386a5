#!/usr/bin/env bash
# Install the system tools the tests drive, when missing, with Debian's packages:
#   OpenSSH server + client  tests/bundle/test_ship.py starts a throwaway sshd on 127.0.0.1
#   Chromium                 tests/report/test_browser.py screenshots report.html headless
#   espeak-ng                tests/audio/ speak their keywords (a formant synthesiser: no voice data to download)
# The tests never use the system's sshd service or its config. Without apt-get or root, this says
# what to install by hand and exits 0: the tests then skip (outside CI) or fail (with CI set).
set -euo pipefail

missing=()
if ! { [ -x /usr/sbin/sshd ] && command -v ssh >/dev/null && command -v ssh-keygen >/dev/null; }; then
    missing+=(openssh-server openssh-client)
fi
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
    missing+=(chromium)
fi
if ! command -v espeak-ng >/dev/null; then
    missing+=(espeak-ng)
fi
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null; then
    echo "ensure-test-tools: apt-get is not available; install by hand: ${missing[*]}" >&2
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null; then SUDO="sudo"; else
        echo "ensure-test-tools: not root and no sudo; install by hand: ${missing[*]}" >&2; exit 0
    fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# --no-install-recommends: the tests need neither a desktop nor font extras.
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "ensure-test-tools: installed ${missing[*]}"
