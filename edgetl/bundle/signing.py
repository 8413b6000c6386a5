"""Ed25519 signatures over a bundle's exact manifest bytes, and the keys that make them trusted.

The manifest lists every file's sha256, so signing its bytes binds the whole bundle: the model, the
labels, the preprocessing, the release counter. The signature travels next to it as
``manifest.sig`` (a small JSON: format, key id, algorithm, base64 signature). A device trusts the
public keys in ``$EDGETL_TRUSTED_KEYS`` (folders or files, separated by ``os.pathsep``), else in
``$XDG_CONFIG_HOME/edgetl/trusted-keys/`` (``~/.config/...``). With trusted keys, only bundles
signed by one of them are used, unless unsigned ones are explicitly allowed (``--allow-unsigned``,
``EDGETL_ALLOW_UNSIGNED=1``); a bad signature is refused always. All cryptography is the
``cryptography`` library's.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgetl.bundle.manifest import SIGNATURE
from edgetl.errors import BundleError, ConfigError

SIG_FORMAT = "edgetl.sig/1"
ALGORITHM = "ed25519"
MAX_SIG_BYTES = 4096  # a signature file is ~200 bytes; anything larger is not one
_MAX_KEY_BYTES = 16384
_KEY_SUFFIXES = {".pub", ".pem"}  # what a trusted-keys folder is read for (a README there is fine)
_KEY_ID = re.compile(r"^[0-9a-f]{16}$")
_ALLOW_ENV = "EDGETL_ALLOW_UNSIGNED"
# The CLI's --allow-unsigned for the whole command: a plain module value, not a context variable,
# so the threads of a fleet bench see it too.
_allow_unsigned: bool | None = None


@dataclass(frozen=True)
class SignatureStatus:
    """How a bundle's manifest is vouched for: ``str()`` is what verify reports."""

    key_id: str | None  # None: unsigned
    checked: bool  # False: signed, but this machine trusts no key to check it with

    def __str__(self) -> str:
        if self.key_id is None:
            return "unsigned"
        return f"{ALGORITHM}:{self.key_id}" if self.checked else f"unchecked:{self.key_id}"


# -- keys ----------------------------------------------------------------------------------------
def key_id(public: Ed25519PublicKey) -> str:
    """Short sha256 of the raw 32-byte public key: names a key in signatures and listings."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def new_key_pair(out: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """Write ``<out>/<name>.key`` (PEM PKCS#8, mode 0600) and ``<out>/<name>.pub`` (PEM); never overwrites."""
    out = Path(out)
    private_path, public_path = out / f"{name}.key", out / f"{name}.pub"
    for path in (private_path, public_path):
        if path.exists():
            raise ConfigError(f"{path} already exists: refusing to overwrite a key; choose another --name or --out")
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    with _writing(out):
        out.mkdir(parents=True, exist_ok=True)
        # O_EXCL: a file created meanwhile is not overwritten; 0600 from the first byte, not chmod after
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        public_path.write_bytes(_public_pem(private.public_key()))
    return private_path, public_path


@contextlib.contextmanager
def _writing(folder: Path):
    """A key that cannot be written (a file in the way, a read-only folder) is one line, not a traceback."""
    try:
        yield
    except OSError as exc:
        raise ConfigError(f"cannot write keys to {folder}: {exc.strerror or exc}; choose another folder") from None


def _public_pem(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _read_key_file(path: Path) -> bytes:
    path = path.expanduser()  # a TOML file or a notebook does not expand "~" the way a shell does
    try:
        if path.stat().st_size > _MAX_KEY_BYTES:
            raise ConfigError(f"{path} is too large to be an Ed25519 key")
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"key file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read key file {path}: {exc.strerror}") from None


def _load_key(path: str | os.PathLike, cls, from_raw, from_pem, what: str, hint: str):
    """A key of type ``cls`` from a PEM file or the raw 32 bytes; anything else is one ConfigError."""
    path = Path(path)
    data = _read_key_file(path)
    try:
        key = from_raw(data) if len(data) == 32 else from_pem(data)
    except (ValueError, TypeError):
        raise ConfigError(f"{path} is not {what} (PEM or raw 32 bytes): {hint}") from None
    if not isinstance(key, cls):
        raise ConfigError(f"{path} is a {type(key).__name__}, not {what}: {hint}")
    return key


def load_private_key(path: str | os.PathLike) -> Ed25519PrivateKey:
    """A private key as PEM (PKCS#8, unencrypted) or as the raw 32 bytes."""
    return _load_key(path, Ed25519PrivateKey, Ed25519PrivateKey.from_private_bytes,
                     lambda data: serialization.load_pem_private_key(data, password=None),
                     "an unencrypted Ed25519 private key", "make one with `edgetl keys new`")


def load_public_key(path: str | os.PathLike) -> Ed25519PublicKey:
    """A public key as PEM (SubjectPublicKeyInfo) or as the raw 32 bytes."""
    return _load_key(path, Ed25519PublicKey, Ed25519PublicKey.from_public_bytes, serialization.load_pem_public_key,
                     "an Ed25519 public key", "pass the .pub file of `edgetl keys new`")


def trusted_key_paths() -> list[Path]:
    """Where trusted public keys are read from: $EDGETL_TRUSTED_KEYS, else the user's config folder."""
    configured = os.environ.get("EDGETL_TRUSTED_KEYS")
    if configured:
        return [Path(p).expanduser() for p in configured.split(os.pathsep) if p]
    return [default_trust_dir()]


def _config_dir() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "edgetl"


def default_trust_dir() -> Path:
    return _config_dir() / "trusted-keys"


def default_key_dir() -> Path:
    """Where ``edgetl keys new`` writes a pair by default (apart from the trusted keys)."""
    return _config_dir() / "keys"


def trusted_keys() -> dict[str, tuple[Ed25519PublicKey, Path]]:
    """key id -> (key, file) for every trusted key; a broken key file is an error, not skipped."""
    keys: dict[str, tuple[Ed25519PublicKey, Path]] = {}
    explicit = bool(os.environ.get("EDGETL_TRUSTED_KEYS"))
    for place in trusted_key_paths():
        if explicit and not place.exists():  # a typo must not switch signature checks off
            raise ConfigError(f"EDGETL_TRUSTED_KEYS names {place}, which does not exist: fix the variable, or "
                              "create the folder with `edgetl keys trust PUB`")
        files = sorted(p for p in place.iterdir() if p.is_file() and p.suffix in _KEY_SUFFIXES) \
            if place.is_dir() else [place] if place.is_file() else []
        for file in files:
            key = load_public_key(file)
            keys.setdefault(key_id(key), (key, file))
    if explicit and not keys:  # set, yet no key: checks must not silently switch off (a .key copied by mistake)
        raise ConfigError(f"EDGETL_TRUSTED_KEYS names no public key (key files, or folders of "
                          f"{'/'.join(sorted(_KEY_SUFFIXES))} files): trust one with `edgetl keys trust PUB`, or unset the variable")
    return keys


def trust(public_path: str | os.PathLike) -> tuple[str, Path]:
    """Copy a public key into the first trusted-keys folder as ``<key id>.pub``; returns (id, file)."""
    key = load_public_key(public_path)
    kid = key_id(key)
    folder = next((p for p in trusted_key_paths() if not p.is_file()), None)
    if folder is None:
        raise ConfigError("EDGETL_TRUSTED_KEYS names only files: add a folder to it to trust more keys")
    dest = folder / f"{kid}.pub"
    with _writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(_public_pem(key))
    return kid, dest


# -- signing and checking --------------------------------------------------------------------------
def sign(private: Ed25519PrivateKey, manifest_bytes: bytes) -> bytes:
    """The ``manifest.sig`` bytes for these exact manifest bytes."""
    doc = {
        "format": SIG_FORMAT,
        "key_id": key_id(private.public_key()),
        "algorithm": ALGORITHM,
        "signature": base64.b64encode(private.sign(manifest_bytes)).decode("ascii"),
    }
    return (json.dumps(doc, indent=2) + "\n").encode("utf-8")


def _parse_signature(sig_bytes: bytes, where: str) -> tuple[str, bytes]:
    """(key id, raw signature) of a ``manifest.sig``; anything else is a bad signature file."""
    bad = f"{where}: {SIGNATURE} is not an edgetl signature"
    if len(sig_bytes) > MAX_SIG_BYTES:
        raise BundleError(f"{bad} (too large): refusing the bundle")
    try:
        doc = json.loads(sig_bytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise BundleError(f"{bad} (not JSON): refusing the bundle") from None
    if not isinstance(doc, dict) or doc.get("format") != SIG_FORMAT or doc.get("algorithm") != ALGORITHM:
        raise BundleError(f"{bad} (format {SIG_FORMAT}, algorithm {ALGORITHM} expected): refusing the bundle")
    kid, signature = doc.get("key_id"), doc.get("signature")
    if not isinstance(kid, str) or not _KEY_ID.match(kid) or not isinstance(signature, str):
        raise BundleError(f"{bad} (key_id must be 16 hex digits, signature a string): refusing the bundle")
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        raise BundleError(f"{bad} (signature is not base64): refusing the bundle") from None
    return kid, raw


def unsigned_allowed(explicit: bool | None = None) -> bool:
    """The opt-out: an explicit argument, else ``allowing_unsigned``'s, else $EDGETL_ALLOW_UNSIGNED."""
    if explicit is not None:
        return explicit
    if _allow_unsigned is not None:
        return _allow_unsigned
    return os.environ.get(_ALLOW_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


@contextlib.contextmanager
def allowing_unsigned(allow: bool) -> Iterator[None]:
    """Within the block, bundles are opened with this opt-out (the CLI's ``--allow-unsigned``)."""
    global _allow_unsigned
    before, _allow_unsigned = _allow_unsigned, allow
    try:
        yield
    finally:
        _allow_unsigned = before


def remote_flags() -> list[str]:
    """What a device's ``edgetl verify``/``bench`` needs to honour this machine's opt-out."""
    return ["--allow-unsigned"] if unsigned_allowed() else []


def check(manifest_bytes: bytes, sig_bytes: bytes | None, *, allow_unsigned: bool | None = None,
          where: str = "bundle") -> SignatureStatus:
    """Check ``sig_bytes`` over the exact ``manifest_bytes`` against the trusted keys.

    With trusted keys: unsigned is refused unless allowed; an unknown key or a bad signature is
    refused always. Without: unsigned is fine, and a signature cannot be checked (``unchecked``).
    """
    keys = trusted_keys()
    if sig_bytes is None:
        if keys and not unsigned_allowed(allow_unsigned):
            raise BundleError(
                f"{where} is not signed and this machine trusts signed bundles only ({len(keys)} trusted key(s)): "
                "sign it with `edgetl bundle --sign KEY` (an enrolled bundle: `edgetl enroll --sign KEY`), or pass "
                "--allow-unsigned (EDGETL_ALLOW_UNSIGNED=1)"
            )
        return SignatureStatus(None, checked=False)
    kid, signature = _parse_signature(sig_bytes, where)
    if not keys:
        return SignatureStatus(kid, checked=False)
    if kid not in keys:
        raise BundleError(
            f"{where} is signed by key {kid!r}, which this machine does not trust: "
            "add its public key with `edgetl keys trust PUB` (see `edgetl keys list`)"
        )
    try:
        keys[kid][0].verify(signature, manifest_bytes)
    except InvalidSignature:
        raise BundleError(
            f"{where}: the signature by key {kid} does not match manifest.json: the bundle was tampered with, refusing it"
        ) from None
    return SignatureStatus(kid, checked=True)
