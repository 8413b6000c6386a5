"""A throwaway OpenSSH server on 127.0.0.1 for the ship tests.

Its own host key, user key, authorized_keys, config and pid file live in a temporary folder; the
system's sshd configuration and service are never touched. Install the server with
``scripts/ensure-test-tools.sh`` (Debian's openssh-server).
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = "/usr/sbin/sshd"


@dataclass
class SshServer:
    port: int
    user: str
    folder: Path
    options: list[str]  # ssh -o values that reach this server with the throwaway key

    def url(self, path: str) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}{path}"


def sshd_missing() -> str | None:
    if not (Path(SSHD).is_file() and shutil.which("ssh") and shutil.which("ssh-keygen")):
        return "OpenSSH server not installed: run scripts/ensure-test-tools.sh"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgetl-test", "-f", str(path)], check=True)
    return path


def client_options(folder: Path, key: Path) -> list[str]:
    return [
        f"IdentityFile={key}",
        "IdentitiesOnly=yes",
        f"UserKnownHostsFile={folder / 'known_hosts'}",
        "StrictHostKeyChecking=accept-new",
        "LogLevel=ERROR",
    ]


def start_sshd(folder: Path) -> tuple[subprocess.Popen, SshServer]:
    host_key = keygen(folder / "host_key")
    user_key = keygen(folder / "user_key")
    authorized = folder / "authorized_keys"
    authorized.write_text((folder / "user_key.pub").read_text())
    authorized.chmod(0o600)
    port = free_port()
    config = folder / "sshd_config"
    config.write_text(
        "\n".join([
            "ListenAddress 127.0.0.1",
            f"Port {port}",
            f"HostKey {host_key}",
            f"AuthorizedKeysFile {authorized}",
            f"PidFile {folder / 'sshd.pid'}",
            "StrictModes no",
            "UsePAM no",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "PermitRootLogin prohibit-password",
            "LogLevel ERROR",
        ]) + "\n"
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation folder, needed as root
    log = open(folder / "sshd.log", "wb")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited: {(folder / 'sshd.log').read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        raise RuntimeError("sshd did not start listening within 10 s")
    return proc, SshServer(port, getpass.getuser(), folder, client_options(folder, user_key))
