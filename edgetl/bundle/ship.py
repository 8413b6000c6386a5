"""Ship a bundle to a device over the system OpenSSH client, safely and atomically.

``ssh`` itself does the work (never a Python SSH library), so ``~/.ssh/config``, agents, keys and
jump hosts work as they do in a terminal. Every remote command is built from an argument list with
``shlex.quote``; nothing the user typed reaches the remote shell unquoted.

Layout on the device, below the folder of the URL::

    <name>/releases/<id>/     one verified, extracted bundle per version (<id>: archive sha256[:16])
    <name>/current            symlink -> releases/<id>, switched atomically (rename over it)
    <name>/.incoming/         uploads in flight

A release is only moved into ``releases/`` after the copy's sha256 matched and ``edgetl verify``
passed on the device, and ``current`` only moves after that: whatever fails, the device keeps
running its previous bundle. The bundle is streamed over ``ssh ... 'cat > tmp'`` rather than scp:
one quoting rule for every path, and no dependency on the server's sftp subsystem.

Neither the bundle nor the device decides anything here: the bundle's name must be a safe slug
before it becomes a remote folder, the pip extra comes from the backend registry, files are
extracted without the archive's owners and modes, and every answer of the device is read up to a
fixed size.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from edgetl._io import sha256_file
from edgetl.backends import get_backend
from edgetl.bundle.format import inspect_archive, read_head
from edgetl.bundle.signing import remote_flags
from edgetl.errors import RemoteError

DEFAULT_FOLDER = "edgetl"  # below the remote home when the URL has no path
MAX_ANSWER_BYTES = 16 << 20  # the most a device may print in answer to one command
STALE_UPLOAD_MINUTES = 60  # older leftovers in .incoming (a ship cut off mid-way) are swept
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TERMINAL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0 and C1 controls: escape sequences, bells, carriage returns


def printable(text: str) -> str:
    """A device's text for a message: its control characters as '?', so it cannot drive the terminal."""
    return _TERMINAL.sub("?", text)


def shown(value, limit: int = 60) -> str:
    """``repr`` of untrusted text for a one-line message: escaped, and cut when long."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class SshUrl:
    host: str
    user: str | None = None
    port: int | None = None
    path: str = DEFAULT_FOLDER  # absolute, or relative to the remote home

    @classmethod
    def parse(cls, url: str) -> SshUrl:
        """``ssh://[user@]host[:port][/path]``: ``/path`` is absolute, ``/~/path`` is below the remote home
        (as in git's SSH URLs), no path is ``~/edgetl``."""
        if _CONTROL.search(url):  # urlsplit would silently drop tabs and newlines: refuse, never guess
            raise RemoteError(f"{shown(url)} holds a control character: type the URL again")
        parts = urlsplit(url)
        if parts.scheme != "ssh" or not parts.hostname:
            raise RemoteError(f"{url!r} is not an SSH URL: use ssh://[user@]host[:port][/path], e.g. ssh://pi@raspberrypi.local/opt/models")
        try:
            port = parts.port
        except ValueError:
            raise RemoteError(f"{url!r}: the port must be a number from 1 to 65535") from None
        if parts.password is not None:
            raise RemoteError(f"{url!r} holds a password: edgetl never stores passwords, use an SSH key (ssh-copy-id)")
        path = unquote(parts.path)
        user = unquote(parts.username) if parts.username else None
        if _CONTROL.search(path + (user or "")):
            raise RemoteError(f"{shown(url)}: the user or path holds a percent-encoded control character")
        if path in ("", "/"):
            path = DEFAULT_FOLDER if path == "" else "/"
        elif path.startswith("/~/") or path == "/~":
            path = path[3:] or "."
            if path.startswith("-"):  # every remote tool would read "-rf/..." as options
                path = f"./{path}"
        elif path.startswith("/~"):
            raise RemoteError(f"{shown(url)}: another user's home (~user) is not supported: log in as that user "
                              "(ssh://user@host/~/path) or give the absolute path (ssh://host/home/user/path)")
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        return cls(host=host, user=user, port=port, path=path)

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host.strip('[]')}" if self.user else self.host.strip("[]")

    def __str__(self) -> str:
        port = f":{self.port}" if self.port else ""
        user = f"{self.user}@" if self.user else ""
        path = self.path if self.path.startswith("/") else f"/~/{self.path}"
        return f"ssh://{user}{self.host}{port}{path}"


# A full disk as tar ("Cannot write: No space left on device"), cat ("write error"), python
# ("[Errno 28]") or a quota report it.
_DISK_FULL = re.compile(r"No space left on device|Errno 28\b|ENOSPC|Disk quota exceeded|\bwrite error\b")

# ssh's own messages (exit 255) -> what failed and what to do.
_SSH_FAILURES = [
    (r"Permission denied|Too many authentication failures|no mutual signature",
     "{dest} refused the SSH key: install your public key there (ssh-copy-id {dest}) or pick a key with "
     "--ssh-option IdentityFile=~/.ssh/<key>"),
    (r"Host key verification failed|REMOTE HOST IDENTIFICATION HAS CHANGED",
     "{host}'s host key is unknown or has changed: connect once with `ssh {dest}` to check and accept it"),
    (r"Could not resolve hostname|Name or service not known|nodename nor servname",
     "cannot resolve host name {host}: check the URL or your ~/.ssh/config"),
    (r"Connection refused|Connection timed out|timed out|No route to host|Network is unreachable|Connection reset|"
     r"Connection closed|kex_exchange_identification",
     "cannot reach {host}{port} over SSH ({reason}): check the device is on and sshd runs there"),
]


@dataclass
class Remote:
    """One device, reached with the system ``ssh`` client."""

    url: SshUrl
    ssh_options: list[str] = field(default_factory=list)  # -o values, e.g. "IdentityFile=~/.ssh/pi"
    connect_timeout: int = 10
    edgetl: str = "edgetl"  # the edgetl command on the device (a venv's bin/edgetl, for instance)

    def __post_init__(self):
        # Quoted arguments get no tilde expansion; remote commands start in the home folder.
        if self.edgetl.startswith("~/"):
            self.edgetl = "./" + self.edgetl[2:]

    def ssh_argv(self, remote: list[str]) -> list[str]:
        """``ssh`` argv running the argument list ``remote`` (each argument quoted for the remote shell).

        ssh keeps the first value given for an option: BatchMode comes first (never a password
        prompt), then the user's options, then our defaults, which the user's therefore override.
        Connections are multiplexed (one TCP + key exchange per device for a whole shipment).
        """
        argv = ["ssh", "-o", "BatchMode=yes"]
        for opt in self.ssh_options:
            argv += ["-o", opt]
        argv += ["-o", f"ConnectTimeout={self.connect_timeout}", "-o", "ControlMaster=auto",
                 "-o", f"ControlPath={_control_dir()}/%C", "-o", "ControlPersist=30"]
        if self.url.port:
            argv += ["-p", str(self.url.port)]
        return [*argv, "--", self.url.destination, shlex.join(remote)]

    def run(self, remote: list[str], what: str, *, stdin=None, input: bytes | None = None,
            timeout: float = 300) -> str:
        """Run a remote command; its stdout, or a RemoteError naming what failed and what to do."""
        try:
            rc, out, err = _run_bounded(self.ssh_argv(remote), stdin, input, timeout, MAX_ANSWER_BYTES)
        except FileNotFoundError:
            raise RemoteError("the OpenSSH client (ssh) is not installed here: apt-get install openssh-client") from None
        except subprocess.TimeoutExpired:
            raise RemoteError(f"{what} on {self.url.host} took longer than {timeout:.0f} s: check the device and the network") from None
        if out is None:
            raise RemoteError(f"{what}: {self.url.host} answered more than {MAX_ANSWER_BYTES >> 20} MiB: refusing the "
                              "answer (is the device's edgetl the real one?)")
        if rc != 0:
            raise RemoteError(self.explain(rc, err.decode(errors="replace"), what))
        return out.decode(errors="replace")

    def explain(self, rc: int, stderr: str, what: str) -> str:
        lines = [printable(ln.strip()) for ln in stderr.strip().splitlines()
                 if ln.strip() and not ln.startswith("Warning: Permanently")]
        last = lines[-1] if lines else f"exit code {rc}"
        if "externally-managed-environment" in stderr:
            return (f"{what} failed: {self.url.host}'s python3 is managed by the OS (PEP 668): create a venv there "
                    "(python3 -m venv ~/edgetl-venv) and pass --remote-edgetl ~/edgetl-venv/bin/edgetl")
        if _DISK_FULL.search(stderr):
            return (f"{self.url.host} ran out of disk space while {what} (in {self.url.path}): free some space there "
                    "or ship to another folder")
        if rc == 255:
            for pattern, message in _SSH_FAILURES:
                found = re.search(pattern, stderr)
                if found:
                    port = f":{self.url.port}" if self.url.port else ""
                    return message.format(dest=self.url.destination, host=self.url.host, port=port, reason=found.group(0))
        if rc == 127:
            return f"{what} failed: a command is missing on {self.url.host}: {last}"
        last = re.sub(r"^error:\s*", "", last)
        return f"{what} failed on {self.url.host}: {last}"

    def has_edgetl(self) -> bool:
        probe = ["sh", "-c", 'command -v "$1" >/dev/null 2>&1 && echo yes || echo no', "sh", self.edgetl]
        return self.run(probe, "looking for edgetl").strip() == "yes"

    def require_edgetl(self, extra: str) -> None:
        if not self.has_edgetl():
            raise RemoteError(
                f"`{self.edgetl}` is not found on {self.url.host}: pip install \"edgetl[{extra}]\" there (or pass "
                "--install), or point --remote-edgetl at it (e.g. /home/pi/venv/bin/edgetl)"
            )

    @property
    def python(self) -> str:
        """The python of the device's edgetl: its venv's, else python3."""
        return str(PurePosixPath(self.edgetl).parent / "python") if "/" in self.edgetl else "python3"

    def pip_install(self, extra: str) -> None:
        """Install ``edgetl[<extra>]`` next to the device's edgetl (its venv), else for python3."""
        python = self.python
        self.run([python, "-m", "pip", "install", "--quiet", f"edgetl[{extra}]"],
                 f'installing "edgetl[{extra}]" with {python}', timeout=1800)


def _run_bounded(argv: list[str], stdin, input: bytes | None, timeout: float, limit: int):
    """Run ``argv``: (exit code, stdout or None when it printed more than ``limit`` bytes, stderr's
    first ``limit`` bytes). Reads as it goes, so a device cannot fill this machine's memory."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE if input is not None else (stdin or subprocess.DEVNULL),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err = bytearray()

    def drain_stderr():
        while chunk := proc.stderr.read1(1 << 16):
            err.extend(chunk[: max(0, limit - len(err))])

    def feed_stdin():
        try:
            proc.stdin.write(input)
            proc.stdin.close()
        except BrokenPipeError:
            pass  # the command exited without reading it all: its exit code says why

    helpers = [threading.Thread(target=drain_stderr, daemon=True)]
    if input is not None:
        helpers.append(threading.Thread(target=feed_stdin, daemon=True))
    timed_out = threading.Event()
    timer = threading.Timer(timeout, lambda: (timed_out.set(), proc.kill()))
    for t in (*helpers, timer):
        t.start()
    out = bytearray()
    try:
        while chunk := proc.stdout.read1(1 << 16):
            out.extend(chunk)
            if len(out) > limit:
                proc.kill()
                out = None
                break
        proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:  # interrupted here (Ctrl-C): take ssh down with us
            proc.kill()
            proc.wait()
        for t in helpers:
            t.join(timeout=5)
    if timed_out.is_set():
        raise subprocess.TimeoutExpired(argv, timeout)
    return proc.returncode, None if out is None else bytes(out), bytes(err)


def _control_dir() -> Path:
    """Private folder for ssh's multiplexing sockets (short path: sockets have a ~100 byte limit)."""
    folder = Path(tempfile.gettempdir()) / f"edgetl-ssh-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder


def _join(*parts: str) -> str:
    return str(PurePosixPath(*parts))


@dataclass
class Shipment:
    """Where a bundle went and how it was checked."""

    url: str
    name: str  # the bundle's name: its folder below the URL's path
    release: str  # remote folder of this version
    current: str  # remote symlink now pointing at it
    sha256: str
    copied: bool  # False when the device already had this exact bundle
    verified: str  # "golden" (edgetl verify ran there) or "hashes" (no edgetl on the device)
    runtime_extra: str  # the pip extra the bundle's runtime needs there
    target: str = ""  # the bundle's target and precision, as its manifest says
    precision: str = ""
    slot: str = ""  # its compiled key's slot: "optimized" or the precision


class Shipper:
    """The steps of one shipment, each a remote command; ``ship`` runs them in order."""

    def __init__(self, remote: Remote, bundle: str | Path):
        self.remote = remote
        self.bundle = Path(bundle)
        # Signature, then the manifest model (the name a safe slug and the archive's top folder, the
        # runtime and its extra from the registry, printable file names), then every hash: everything
        # below that becomes a remote path, a command or a requirement has been checked.
        self.manifest = inspect_archive(self.bundle)
        self.name = self.top = self.manifest["name"]
        self.extra = get_backend(self.manifest["runtime"]["name"]).extra  # the registry's, never the bundle's text
        self.release_number = self.manifest["release"]
        target = self.manifest.get("target")
        self.target = str((target.get("name") if isinstance(target, dict) else None) or self.manifest["runtime"]["name"])
        self.precision = str(self.manifest["precision"])
        self.slot = str(self.manifest.get("slot") or self.precision)  # "optimized" or the precision
        self.sha256 = sha256_file(self.bundle)
        self.release_id = self.sha256[:16]
        self.base = _join(remote.url.path, self.name)
        self.incoming = _join(self.base, ".incoming")
        self.releases = _join(self.base, "releases")
        self.release = _join(self.releases, self.release_id)
        self.current = _join(self.base, "current")
        token = f"{self.release_id}.{uuid.uuid4().hex[:8]}"
        self.upload = _join(self.incoming, f"{token}.tar.gz")
        self.staging = _join(self.incoming, f"{token}.d")

    def prepare(self) -> bool:
        """Check ship's own entries on the device, make the folders (not writable by others) and sweep
        uploads older than an hour left by ships that were cut off; True when this exact release is
        already on the device.

        ``<name>/``, ``.incoming``, ``releases/`` and this release are never symbolic links, and
        ``current`` is absent or ship's own link into ``releases/``: through a link, the upload, the
        extraction and the sweep of old releases would write and remove files where it points."""
        script = ('umask 022; i=0; for d in "$1" "$2" "$3" "$4"; do i=$((i+1)); '
                  'if [ -L "$d" ]; then echo "link $i"; exit 0; fi; done; '
                  'mkdir -p "$2" "$3" && '
                  'find "$2" -mindepth 1 -maxdepth 1 -mmin +"$6" -exec rm -rf -- {} + && '
                  'if [ -L "$5" ]; then echo "current $(readlink -- "$5")|"; elif [ -e "$5" ]; then echo "current |"; fi && '
                  'if [ -e "$4/manifest.json" ]; then echo present; fi')
        ours = [self.base, self.incoming, self.releases, self.release]
        out = self.remote.run(["sh", "-c", script, "sh", *ours, self.current, str(STALE_UPLOAD_MINUTES)],
                              f"creating {self.base}")
        lines = out.splitlines()
        self._refuse_links(ours, lines)
        present = "present" in lines
        if present:
            self._refuse_another_bundle()
        return present

    def _refuse_another_bundle(self) -> None:
        """A release folder named after this archive must hold its manifest, byte for byte: another
        (older, validly signed) bundle planted there would be verified and made current instead."""
        there = self.remote.run(["cat", "--", _join(self.release, "manifest.json")], "reading the release on the device")
        if there.encode() != read_head(self.bundle)[0]:
            raise RemoteError(f"{self.remote.url.host}: {self.release} holds another bundle than {self.bundle.name}: "
                              "refusing to make it current; remove that folder there and ship again")

    def _refuse_links(self, ours: list[str], lines: list[str]) -> None:
        host = self.remote.url.host
        linked = next((line.split()[1] for line in lines if re.fullmatch(r"link [1-4]", line)), None)
        if linked is not None:
            raise RemoteError(f"{host}: {ours[int(linked) - 1]} is a symbolic link: refusing to ship through it (files "
                              "would be written and removed where it points); remove the link there and ship again")
        current = next((line[len("current "):] for line in lines if line.startswith("current ")), None)
        # "|" ends readlink's answer: a link target holding a newline cannot pass for ship's own
        if current is not None and not re.fullmatch(r"releases/[0-9a-f]{16}\|", current):
            what = f"points at {shown(current.rstrip('|'))}" if current != "|" else "is not a symbolic link"
            raise RemoteError(f"{host}: {self.current} {what}, not into releases/: it is not ship's own link, refusing "
                              "to read or replace it; move it away there and ship again")

    def installed_release(self) -> int:
        """The ``release`` of the bundle ``current`` points at on the device (0 when none, or unreadable)."""
        out = self.remote.run(["sh", "-c", 'if [ -f "$1" ]; then cat -- "$1"; fi', "sh", _join(self.current, "manifest.json")],
                              "reading the installed release")
        try:
            installed = json.loads(out) if out.strip() else {}
            number = installed.get("release", 0) if installed.get("name") == self.name else 0
        except (ValueError, AttributeError, RecursionError):
            return 0  # a broken or foreign manifest: nothing to protect from a rollback
        return number if type(number) is int and number >= 0 else 0  # older bundles carry none: 0

    def refuse_rollback(self) -> None:
        installed = self.installed_release()
        if self.release_number < installed:
            raise RemoteError(
                f"{self.remote.url.host} runs release {installed} of {self.name}, {self.bundle.name} is release "
                f"{self.release_number}: refusing to roll back (pass --allow-rollback to install an older release on purpose)"
            )

    def send(self) -> None:
        with open(self.bundle, "rb") as fh:
            self.remote.run(["sh", "-c", 'umask 022; cat > "$1"', "sh", self.upload], f"copying {self.bundle.name}",
                            stdin=fh, timeout=3600)

    def check_arrival(self) -> None:
        """The copy's sha256 on the device must be the local one (sha256sum, or python3 where it lacks)."""
        script = 'if command -v sha256sum >/dev/null 2>&1; then sha256sum "$1"; else python3 -c "$2" "$1"; fi'
        py = "import hashlib,sys;print(hashlib.sha256(open(sys.argv[1],'rb').read()).hexdigest())"
        out = self.remote.run(["sh", "-c", script, "sh", self.upload, py], "checking the copy's sha256")
        got = printable((out.split() or [""])[0])
        if got != self.sha256:
            raise RemoteError(
                f"the copy on {self.remote.url.host} has sha256 {got[:12] or 'none'}…, the bundle {self.sha256[:12]}…: it "
                "was corrupted or tampered with on the way; nothing was changed on the device: ship again"
            )

    def unpack(self) -> str:
        """Extract into a staging folder and return the bundle's folder there. The archive passed
        ``inspect_archive`` here and its sha256 matched there, so plain ``tar`` is safe on it, but
        its owners and modes are not ours to keep: files become 0644, folders 0755."""
        # -m: files get the time of extraction, not the archive's fixed (reproducible) mtime.
        # Folders one by one (\;): find chmods a folder before it descends into it, so a folder
        # packed as 0000 cannot hide its files from the second find.
        script = ('umask 022; mkdir -p "$1" && tar -xmzf "$2" -C "$1" --no-same-owner --no-same-permissions && '
                  'find "$1" -type d -exec chmod 0755 {} \\; && find "$1" -type f -exec chmod 0644 {} +')
        self.remote.run(["sh", "-c", script, "sh", self.staging, self.upload], "extracting the bundle", timeout=1800)
        return _join(self.staging, self.top)

    def verify(self, folder: str, install: bool) -> str:
        """``edgetl verify`` on the device (golden outputs on its runtime), or file hashes without edgetl."""
        if install:
            self.remote.pip_install(self.extra)
        if not self.remote.has_edgetl():
            self.check_hashes(folder)
            return "hashes"
        try:
            self.remote.run([self.remote.edgetl, "verify", folder, *remote_flags()], f"verifying {self.name}", timeout=1800)
        except RemoteError as exc:
            hint = " (or pass --install to do it now)" if "pip install" in str(exc) and not install else ""
            raise RemoteError(f"{exc}{hint}; the device keeps its previous bundle") from None
        return "golden"

    def check_hashes(self, folder: str) -> None:
        """Without edgetl on the device: every listed file must be confirmed by its ``sha256sum -c``."""
        listing = "".join(f"{e['sha256']}  {rel}\n" for rel, e in sorted(self.manifest["files"].items()))
        out = self.remote.run(["sh", "-c", 'cd "$1" && { sha256sum -c - 2>&1 || true; }', "sh", folder],
                              "checking the extracted files' sha256", input=listing.encode())
        confirmed = {line[: -len(": OK")] for line in out.splitlines() if line.endswith(": OK")}
        missing = sorted(set(self.manifest["files"]) - confirmed)
        if missing:
            said = printable(next((line for line in out.splitlines() if not line.endswith(": OK")), "no output")[:200])
            raise RemoteError(f"{missing[0]} does not match its sha256 on {self.remote.url.host} ({said}); the device "
                              "keeps its previous bundle")

    def activate(self, staged: str | None) -> None:
        """Move the staged release into place (unless it is already there), switch ``current`` to it
        with a rename over the old link (atomic: there is no moment without a bundle), then remove
        releases older than the one it replaced (kept for a rollback). Removal only ever touches
        entries of ``<path>/<name>/releases/`` (``$6``), never where a link or a name points."""
        script = (
            'set -e; prev=$(readlink "$4" 2>/dev/null || true); prev=${prev##*/}; '
            'if [ -n "$1" ]; then if [ -e "$2" ]; then rm -rf -- "$1"; else mv -- "$1" "$2"; fi; fi; '
            'ln -sfn -- "releases/$3" "$5"; mv -Tf -- "$5" "$4"; '
            'for r in "$6"/*; do case "${r##*/}" in "$3"|"$prev") ;; *) rm -rf -- "$r" ;; esac; done'
        )
        link = _join(self.base, f".current.{self.release_id}.tmp")
        # relative link target: the whole tree can be moved
        self.remote.run(["sh", "-c", script, "sh", staged or "", self.release, self.release_id, self.current, link,
                         self.releases], "switching current")

    def cleanup(self) -> None:
        self.remote.run(["rm", "-rf", "--", self.upload, self.staging], "removing the upload")


def ship(
    bundle: str | Path,
    url: str | SshUrl,
    *,
    install: bool = False,
    remote_edgetl: str = "edgetl",
    ssh_options: list[str] | tuple[str, ...] = (),
    connect_timeout: int = 10,
    allow_rollback: bool = False,
    step=lambda message: None,
) -> Shipment:
    """Copy, check, extract, verify and activate ``bundle`` on the device at ``url``.

    A bundle whose ``release`` is lower than the one installed there is refused unless
    ``allow_rollback``. ``step(message)`` is called before each stage (for a progress display).
    Whatever fails, the device's ``current`` bundle is left as it was and the upload is removed.
    """
    if isinstance(url, str) and str(bundle).startswith("ssh://") and not url.startswith("ssh://"):
        raise RemoteError(f"the bundle comes first, then the URL: edgetl ship {url} {bundle}")
    url = SshUrl.parse(url) if isinstance(url, str) else url
    remote = Remote(url, list(ssh_options), connect_timeout, remote_edgetl)
    shipper = Shipper(remote, bundle)
    step(f"connecting to {url.destination}")
    present = shipper.prepare()
    if not allow_rollback:
        shipper.refuse_rollback()
    staged = None
    sent = False
    try:
        if not present:
            step(f"copying {shipper.bundle.name} ({shipper.bundle.stat().st_size / 1e6:.1f} MB)")
            sent = True
            shipper.send()
            step("checking sha256 on arrival")
            shipper.check_arrival()
            staged = shipper.unpack()
        step("verifying on the device")
        verified = shipper.verify(staged or shipper.release, install)
        step("switching current")
        shipper.activate(staged)
    finally:
        if sent:
            try:
                shipper.cleanup()
            except RemoteError:
                pass  # the host went away: the original error matters; the next ship sweeps .incoming
    return Shipment(str(url), shipper.name, shipper.release, shipper.current, shipper.sha256, copied=not present,
                    verified=verified, runtime_extra=shipper.extra, target=shipper.target, precision=shipper.precision,
                    slot=shipper.slot)
