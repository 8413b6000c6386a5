#!/usr/bin/env bash
# Install Debian's OpenSSH server (and client) when missing, so tests/bundle/test_ship.py can start a
# throwaway sshd on 127.0.0.1. The tests never use the system's sshd service or its config.
set -euo pipefail

if [ -x /usr/sbin/sshd ] && command -v ssh >/dev/null && command -v ssh-keygen >/dev/null; then
    exit 0
fi

if ! command -v apt-get >/dev/null; then
    echo "ensure-sshd: /usr/sbin/sshd is missing and apt-get is not available;" \
         "install an OpenSSH server by hand (the ship tests are skipped without it)" >&2
    exit 0
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null; then SUDO="sudo"; else
        echo "ensure-sshd: not root and no sudo: install openssh-server by hand" >&2; exit 0
    fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# --no-install-recommends keeps it small; the tests start their own sshd with their own config.
$SUDO apt-get install -y -qq --no-install-recommends openssh-server openssh-client >/dev/null
echo "ensure-sshd: installed $(/usr/sbin/sshd -V 2>&1 | head -1 || true)"
