"""Ship and remote bench against a real sshd on 127.0.0.1 (see sshd.py), with a throwaway key.

The "device" is this machine through ssh: its edgetl is this venv's (``--remote-edgetl``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import sys
import tarfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgetl.bench.run import SCHEMA
from edgetl.bundle.create import create_bundle, up_to_date
from edgetl.bundle.format import check_folder, inspect_archive
from edgetl.bundle.remote import Access, BenchSettings, remote_bench
from edgetl.bundle.ship import Remote, Shipper, SshUrl, ship
from edgetl.cli import cli
from edgetl.errors import BundleError, RemoteError
from edgetl.rundir import RunDir
from tests.bundle.sshd import free_port, keygen

EDGETL = str(Path(sys.executable).with_name("edgetl"))  # this venv's, as on a device with a venv


@pytest.fixture(scope="session")
def fp32_bundle(bundle_run, tmp_path_factory) -> Path:
    """A second, different bundle with the same name (a new version of the same deployment)."""
    run = tmp_path_factory.mktemp("fp32") / "tiny"
    shutil.copytree(bundle_run.path, run)
    return create_bundle(run, "onnxruntime", "fp32")


def ship_to(sshd, bundle, dest: Path, **kw):
    return ship(bundle, sshd.url(str(dest)), remote_edgetl=kw.pop("remote_edgetl", EDGETL),
                ssh_options=sshd.options, **kw)


def current_of(dest: Path, bundle: Path) -> Path:
    return dest / inspect_archive(bundle)["name"] / "current"


@pytest.mark.parametrize(
    "url, host, user, port, path",
    [
        ("ssh://pi@raspberrypi.local/opt/models", "raspberrypi.local", "pi", None, "/opt/models"),
        ("ssh://nvidia@10.0.0.7:2222/~/models", "10.0.0.7", "nvidia", 2222, "models"),
        ("ssh://orin", "orin", None, None, "edgetl"),
        ("ssh://me@[::1]:22/srv/x%20y", "[::1]", "me", 22, "/srv/x y"),
        # below the home, a folder named like an option stays a path for mkdir, find, tar and edgetl
        ("ssh://pi@dev/~/-rf", "dev", "pi", None, "./-rf"),
        ("ssh://pi@dev/~/--help%20me", "dev", "pi", None, "./--help me"),
    ],
)
def test_parse_url(url, host, user, port, path):
    parsed = SshUrl.parse(url)
    assert (parsed.host, parsed.user, parsed.port, parsed.path) == (host, user, port, path)


@pytest.mark.parametrize("url, match", [("pi@host:/x", "not an SSH URL"), ("ssh://host:99999/x", "port"),
                                        ("ssh://pi:secret@host/x", "password")])
def test_parse_bad_url(url, match):
    with pytest.raises(RemoteError, match=match):
        SshUrl.parse(url)


def test_swapped_bundle_and_url_say_the_bundle_comes_first(tmp_path):
    bundle = tmp_path / "tiny-int8.tar.gz"
    bundle.write_bytes(b"not read: the order is checked first")
    url = f"ssh://127.0.0.1:{free_port()}{tmp_path}/device"
    result = CliRunner().invoke(cli, ["ship", url, str(bundle)])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [f"error: the bundle comes first, then the URL: edgetl ship {bundle} {url}"]
    assert not (tmp_path / "device").exists()


def test_remote_commands_are_quoted():
    remote = Remote(SshUrl.parse("ssh://pi@host:2200/x"), ["IdentityFile=/k"])
    argv = remote.ssh_argv(["mkdir", "-p", "/tmp/a b; rm -rf ~"])
    assert argv[:3] == ["ssh", "-o", "BatchMode=yes"]  # first: a user's option cannot turn on password prompts
    assert argv.index("IdentityFile=/k") < argv.index("ConnectTimeout=10")  # the user's options override ours
    assert argv[-3:] == ["--", "pi@host", "mkdir -p '/tmp/a b; rm -rf ~'"]
    assert ["-p", "2200"] == argv[argv.index("-p"):argv.index("-p") + 2]


def test_ship_verifies_and_switches_current(sshd, bundle_file, fp32_bundle, tmp_path):
    dest = tmp_path / "dev ice $(touch pwned)"  # the remote shell must see it as one plain name
    done = ship_to(sshd, bundle_file, dest)
    assert done.copied and done.verified == "golden"
    current = current_of(dest, bundle_file)
    assert current.is_symlink() and os.readlink(current) == f"releases/{done.sha256[:16]}"
    assert check_folder(current)["precision"] == "int8"  # every hash checked on the device's copy
    assert not list((current.parent / ".incoming").iterdir())
    assert not (Path.home() / "pwned").exists() and not (tmp_path / "pwned").exists()

    again = ship_to(sshd, bundle_file, dest)
    assert not again.copied and again.verified == "golden"  # already there: verified, not re-copied

    newer = ship_to(sshd, fp32_bundle, dest)
    assert check_folder(current)["precision"] == "fp32"
    # the previous release is kept for a rollback
    assert sorted(p.name for p in (current.parent / "releases").iterdir()) == sorted([done.sha256[:16], newer.sha256[:16]])


def test_tampered_bundle_is_refused_and_the_previous_one_keeps_working(sshd, bundle_file, fp32_bundle, tmp_path):
    dest = tmp_path / "device"
    ship_to(sshd, bundle_file, dest)
    current = current_of(dest, bundle_file)
    before = os.readlink(current)

    # 1. a bundle tampered with before shipping: refused here, nothing is sent
    import tarfile

    tampered = tmp_path / "tampered.tar.gz"
    with tarfile.open(fp32_bundle) as tin, tarfile.open(tampered, "w:gz") as tout:
        for m in tin.getmembers():
            data = tin.extractfile(m).read() if m.isfile() else None
            if m.name.endswith(".onnx"):
                data = data[:-4] + b"evil"
            tout.addfile(m, __import__("io").BytesIO(data) if data is not None else None)
    with pytest.raises(BundleError, match="does not match its sha256"):
        ship_to(sshd, tampered, dest)

    # 2. the copy changed on the way (or on the device's disk): refused there by its sha256
    shipper = Shipper(Remote(SshUrl.parse(sshd.url(str(dest))), sshd.options, edgetl=EDGETL), fp32_bundle)
    shipper.prepare()
    shipper.send()
    with open(shipper.upload, "r+b") as fh:
        fh.seek(100)
        fh.write(b"\0" * 16)
    with pytest.raises(RemoteError, match="corrupted or tampered with on the way; nothing was changed"):
        shipper.check_arrival()
    shipper.cleanup()

    # 3. a file of the extracted release changed before verification: `edgetl verify` there refuses it
    shipper.send()
    shipper.check_arrival()
    staged = Path(shipper.unpack())
    (staged / "golden" / "in.0.npy").write_bytes(b"tampered")
    with pytest.raises(RemoteError, match=r"golden/in.0.npy does not match its sha256.*keeps its previous bundle"):
        shipper.verify(str(staged), install=False)
    shipper.remote.edgetl = "/nonexistent/bin/edgetl"  # a device without edgetl: sha256sum -c refuses it too
    with pytest.raises(RemoteError, match=r"golden/in.0.npy does not match its sha256 on 127.0.0.1 \(golden/in.0.npy: FAILED"):
        shipper.verify(str(staged), install=False)
    shipper.cleanup()

    assert os.readlink(current) == before
    assert check_folder(current)["precision"] == "int8"
    result = CliRunner().invoke(cli, ["verify", str(current)])
    assert result.exit_code == 0, result.output


def test_missing_runtime_on_the_device(sshd, bundle_file, tmp_path):
    """The device's edgetl lacks onnxruntime: a clear message naming the extra and --install."""
    fake = tmp_path / "edgetl-without-ort"
    fake.write_text(f"#!{sys.executable}\nimport sys\nsys.modules['onnxruntime'] = None\n"
                    "from edgetl.cli import main\nmain()\n")
    fake.chmod(0o755)
    with pytest.raises(RemoteError, match=r'pip install "edgetl\[onnxruntime\]".*--install.*keeps its previous bundle'):
        ship_to(sshd, bundle_file, tmp_path / "device", remote_edgetl=str(fake))
    assert not current_of(tmp_path / "device", bundle_file).exists()
    assert not list((current_of(tmp_path / "device", bundle_file).parent / ".incoming").iterdir())  # upload removed


def test_device_without_edgetl_gets_hash_checks(sshd, bundle_file, tmp_path):
    done = ship_to(sshd, bundle_file, tmp_path / "device", remote_edgetl="/nonexistent/bin/edgetl")
    assert done.verified == "hashes"
    assert check_folder(current_of(tmp_path / "device", bundle_file))


def test_unreachable_host_and_refused_key(sshd, bundle_file, tmp_path):
    port = free_port()  # nothing listens there
    with pytest.raises(RemoteError, match=rf"cannot reach 127.0.0.1:{port} over SSH \(Connection refused\)"):
        ship(bundle_file, f"ssh://{sshd.user}@127.0.0.1:{port}/x", ssh_options=sshd.options)
    stranger = keygen(tmp_path / "stranger")
    # ControlPath=none: a fresh connection, not the multiplexed one the right key opened (user options win)
    options = [o for o in sshd.options if not o.startswith("IdentityFile")] + [f"IdentityFile={stranger}", "ControlPath=none"]
    with pytest.raises(RemoteError, match="refused the SSH key: install your public key there"):
        ship(bundle_file, sshd.url(str(tmp_path / "x")), ssh_options=options)


def test_full_disk(sshd, bundle_file, tmp_path):
    """Writing to /dev/full fails exactly like a full disk (ENOSPC)."""
    shipper = Shipper(Remote(SshUrl.parse(sshd.url(str(tmp_path / "device"))), sshd.options), bundle_file)
    shipper.upload = "/dev/full"
    with pytest.raises(RemoteError, match="ran out of disk space while copying"):
        shipper.send()


def test_cli_ship_and_errors(sshd, bundle_file, tmp_path):
    dest = tmp_path / "device"
    args = ["ship", str(bundle_file), sshd.url(str(dest)), "--remote-edgetl", EDGETL]
    for opt in sshd.options:
        args += ["-o", opt]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "golden outputs verified on the device" in result.output
    result = CliRunner().invoke(cli, ["ship", str(bundle_file), f"ssh://127.0.0.1:{free_port()}/x"])
    assert result.exit_code == 2 and "cannot reach" in result.output


def test_remote_bench_brings_the_result_home(sshd, bundle_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(bundle_run.path, run)
    doc = remote_bench(run, sshd.url(str(tmp_path / "device")), "onnxruntime", precision="int8", device_name="loop-pi",
                       settings=BenchSettings(iterations=10), access=Access(sshd.options, EDGETL))
    assert doc["schema"] == SCHEMA and doc["device"]["name"] == "loop-pi"
    saved = run / "bench" / "onnxruntime" / "int8@loop-pi.json"
    assert saved.is_file() and doc["file"] == "bench/onnxruntime/int8@loop-pi.json"
    # the device's own result does not make the bundle stale: the next remote bench ships nothing new
    assert up_to_date(RunDir.open(run), "onnxruntime", "int8") is not None
    section = RunDir.open(run).manifest["bench"]["loop-pi"]
    assert section["results"]["onnxruntime/int8"]["status"] == "ok"
    assert section["system"]["remote"].startswith(f"ssh://{sshd.user}@127.0.0.1:{sshd.port}/")


def test_fleet_reports_a_failing_device_in_its_row(sshd, bundle_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(bundle_run.path, run)
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(
        f'[[device]]\nname = "good"\nurl = "{sshd.url(str(tmp_path / "good"))}"\ntarget = "onnxruntime"\nprecision = "int8"\n\n'
        f'[[device]]\nname = "gone"\nurl = "ssh://127.0.0.1:{free_port()}/x"\ntarget = "onnxruntime"\nprecision = "int8"\n'
    )
    args = ["bench", str(run), "--fleet", str(fleet), "--iterations", "10", "--remote-edgetl", EDGETL]
    for opt in sshd.options:
        args += ["-o", opt]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert "1 of 2 devices could not be benched (gone)" in result.output
    assert (run / "bench" / "onnxruntime" / "int8@good.json").is_file()
    assert not (run / "bench" / "onnxruntime" / "int8@gone.json").exists()


def test_install_uses_the_python_next_to_the_remote_edgetl(sshd, bundle_file, tmp_path):
    """--install runs `<venv>/bin/python -m pip install "edgetl[<runtime>]"` on the device (pip faked here)."""
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "edgetl").symlink_to(EDGETL)
    log = tmp_path / "pip-args"
    (venv / "python").write_text(f'#!/bin/sh\necho "$@" > {log}\n')
    (venv / "python").chmod(0o755)
    done = ship_to(sshd, bundle_file, tmp_path / "device", remote_edgetl=str(venv / "edgetl"), install=True)
    assert log.read_text().split() == ["-m", "pip", "install", "--quiet", "edgetl[onnxruntime]"]
    assert done.verified == "golden"


# -- hostile bundles, URLs and devices -----------------------------------------------------------------
def rebuilt(bundle: Path, dest: Path, *, manifest: dict | None = None, mode=None, valid: bool = True) -> Path:
    """``bundle`` re-packed by hand with manifest fields changed and/or member modes set (``mode(member)``);
    the listed files and their hashes stay intact, so only what was changed differs. ``valid``: the
    result still passes every check here (False for a manifest the model must refuse)."""
    with tarfile.open(bundle) as tin, tarfile.open(dest, "w:gz") as tout:
        for m in tin.getmembers():
            data = tin.extractfile(m).read() if m.isfile() else None
            if manifest and m.name.count("/") == 1 and m.name.endswith("/manifest.json"):
                data = json.dumps({**json.loads(data), **manifest}).encode()
                m.size = len(data)
            if mode:
                m.mode = mode(m)
            tout.addfile(m, io.BytesIO(data) if data is not None else None)
    if valid:
        inspect_archive(dest)  # still a bundle that passes every check
    else:
        with pytest.raises(BundleError):
            inspect_archive(dest)
    return dest


def cli_ship(sshd, bundle: Path, dest: Path, *extra: str):
    args = ["ship", str(bundle), sshd.url(str(dest)), "--remote-edgetl", EDGETL, *extra]
    for opt in sshd.options:
        args += ["-o", opt]
    return CliRunner().invoke(cli, args)


def one_error_line(result) -> str:
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


@pytest.mark.parametrize("runtime, message", [
    ({"name": "onnxruntime", "extra": 'onnxruntime] ; touch pwned; echo "['}, "is not onnxruntime's pip extra 'onnxruntime'"),
    ({"name": "onnxruntime", "extra": "openvino"}, "extra 'openvino' is not onnxruntime's pip extra 'onnxruntime'"),
    ({"name": "../../bin/sh", "extra": "onnxruntime"}, "runtime '../../bin/sh' is not one of onnxruntime, openvino, tensorrt"),
])
def test_bundle_text_never_becomes_a_requirement(sshd, bundle_file, tmp_path, runtime, message):
    """`ship --install` pip-installs the registry's extra for the runtime; a bundle naming anything else is
    refused before a single command runs on the device."""
    evil = rebuilt(bundle_file, tmp_path / "evil.tar.gz", valid=False,
                   manifest={"runtime": {**inspect_archive(bundle_file)["runtime"], **runtime}})
    line = one_error_line(cli_ship(sshd, evil, tmp_path / "device", "--install"))
    assert message in line
    assert not (tmp_path / "device").exists() and not (Path.home() / "pwned").exists()


@pytest.mark.parametrize("name", ["../../escape", "..", ".", "a/b", "-rf", ".hidden", "x" * 65, "", "a\nb", 7])
def test_bundle_name_must_be_a_safe_slug(sshd, bundle_file, tmp_path, name):
    evil = rebuilt(bundle_file, tmp_path / "evil.tar.gz", manifest={"name": name}, valid=False)
    line = one_error_line(cli_ship(sshd, evil, tmp_path / "root" / "device"))
    assert "manifest.json is malformed: field name" in line
    assert not (tmp_path / "root").exists() and not list(tmp_path.rglob("escape"))


def test_modes_from_the_archive_do_not_survive(sshd, bundle_file, tmp_path):
    """setuid, setgid, sticky and world-writable modes in the archive: 0644 files, 0755 folders on the device."""
    def hostile(member):
        return 0o1777 if member.isdir() else 0o6777

    evil = rebuilt(bundle_file, tmp_path / "modes.tar.gz", mode=hostile)
    with tarfile.open(evil) as tar:
        assert {m.mode for m in tar.getmembers()} == {0o1777, 0o6777}
    dest = tmp_path / "device"
    done = ship_to(sshd, evil, dest)
    release = Path(dest / done.name / "releases" / done.sha256[:16])
    assert stat.S_IMODE(release.stat().st_mode) == 0o755
    for p in [release, *release.rglob("*")]:
        assert stat.S_IMODE(p.stat().st_mode) == (0o755 if p.is_dir() else 0o644), p
    for folder in (dest / done.name, dest / done.name / "releases"):
        assert not folder.stat().st_mode & stat.S_IWOTH


def test_rollback_needs_allow_rollback(sshd, bundle_file, tmp_path):
    dest = tmp_path / "device"
    base = inspect_archive(bundle_file)["release"]
    newer = rebuilt(bundle_file, tmp_path / "newer.tar.gz", manifest={"release": base + 2})
    older = rebuilt(bundle_file, tmp_path / "older.tar.gz", manifest={"release": base + 1})
    done = ship_to(sshd, newer, dest)
    current = dest / done.name / "current"
    line = one_error_line(cli_ship(sshd, older, dest))
    assert f"runs release {base + 2} of {done.name}, {older.name} is release {base + 1}: refusing to roll back" in line
    assert "--allow-rollback" in line
    assert os.readlink(current) == f"releases/{done.sha256[:16]}"
    assert not list((dest / done.name / ".incoming").iterdir())  # refused before anything was sent
    result = cli_ship(sshd, older, dest, "--allow-rollback")
    assert result.exit_code == 0, result.output
    assert json.loads((current / "manifest.json").read_text())["release"] == base + 1
    assert ship_to(sshd, newer, dest).sha256 == done.sha256  # forward again: no flag needed


@pytest.mark.parametrize("bad", ["not-a-number", -1, 2.5, True, None])
def test_release_must_be_a_whole_number(bundle_file, tmp_path, bad):
    evil = rebuilt(bundle_file, tmp_path / "evil.tar.gz", manifest={"release": bad}, valid=False)
    with pytest.raises(BundleError, match="field release"):
        Shipper(Remote(SshUrl.parse("ssh://host/x")), evil)


@pytest.mark.parametrize("url", ["ssh://host/opt/a\nb", "ssh://host/opt/a\tb", "ssh://ho\nst/x", "ssh://host/x\x7f",
                                 "ssh://host/opt/a%0Ab", "ssh://host/opt/a%09b", "ssh://host/a%00b", "ssh://pi%0A@host/x",
                                 "ssh://host/a%7Fb"])
def test_control_characters_in_the_url_are_refused(url):
    with pytest.raises(RemoteError, match="control character"):
        SshUrl.parse(url)


def test_other_users_home_is_refused_not_made_absolute(bundle_file, tmp_path):
    with pytest.raises(RemoteError, match=r"another user's home \(~user\) is not supported.*ssh://user@host/~/path"):
        SshUrl.parse("ssh://host/~pi/models")
    result = CliRunner().invoke(cli, ["ship", str(bundle_file), "ssh://host/~pi/models"])
    assert "~user" in one_error_line(result)
    assert SshUrl.parse("ssh://host/~/models").path == "models"


@pytest.mark.parametrize("stderr", [
    "tar: tiny/model/model.onnx: Cannot write: No space left on device\ntar: Exiting with failure status",
    "cat: write error",
    "OSError: [Errno 28] No space left on device: '/data/x'",
    "sha256sum: standard output: Disk quota exceeded",
])
def test_a_full_disk_is_named_whatever_tool_reported_it(stderr):
    message = Remote(SshUrl.parse("ssh://pi@dev/opt/m")).explain(1, stderr, "extracting the bundle")
    assert message.startswith("dev ran out of disk space while extracting the bundle (in /opt/m)")


def test_stale_uploads_are_swept(sshd, bundle_file, tmp_path):
    dest = tmp_path / "device"
    incoming = dest / inspect_archive(bundle_file)["name"] / ".incoming"
    incoming.mkdir(parents=True)
    stale, fresh = incoming / "0123.cut-off.tar.gz", incoming / "4567.in-flight.tar.gz"
    (incoming / "89ab.cut-off.d" / "tiny").mkdir(parents=True)
    for f in (stale, fresh):
        f.write_bytes(b"partial")
    two_hours_ago = time.time() - 7200
    for p in (stale, incoming / "89ab.cut-off.d"):
        os.utime(p, (two_hours_ago, two_hours_ago))
    ship_to(sshd, bundle_file, dest)
    assert sorted(p.name for p in incoming.iterdir()) == [fresh.name]


def test_file_names_with_control_characters_are_refused(sshd, bundle_file, tmp_path):
    """A listed file whose name holds a newline would add lines to `sha256sum -c` on the device."""
    evil = tmp_path / "evil.tar.gz"
    data = b"0123"
    name = "golden/x\n0000  /etc/passwd"
    with tarfile.open(bundle_file) as tin, tarfile.open(evil, "w:gz") as tout:
        for m in tin.getmembers():
            content = tin.extractfile(m).read() if m.isfile() else None
            if m.name.count("/") == 1 and m.name.endswith("/manifest.json"):
                manifest = json.loads(content)
                manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
                content = json.dumps(manifest).encode()
                m.size = len(content)
            tout.addfile(m, io.BytesIO(content) if content is not None else None)
        extra = tarfile.TarInfo(f"{inspect_archive(bundle_file)['name']}/{name}")
        extra.size = len(data)
        tout.addfile(extra, io.BytesIO(data))
    line = one_error_line(cli_ship(sshd, evil, tmp_path / "device"))
    assert "manifest.json is malformed: field files" in line and "\n" not in line
    assert not (tmp_path / "device").exists()


def test_top_folder_must_be_the_bundle_name(sshd, bundle_file, tmp_path):
    """The archive's top folder becomes a folder on the device: it must be the (checked) bundle name."""
    evil = tmp_path / "evil.tar.gz"
    top = inspect_archive(bundle_file)["name"]
    with tarfile.open(bundle_file) as tin, tarfile.open(evil, "w:gz") as tout:
        for m in tin.getmembers():
            content = tin.extractfile(m).read() if m.isfile() else None
            m.name = "-rf" + m.name[len(top):]
            tout.addfile(m, io.BytesIO(content) if content is not None else None)
    line = one_error_line(cli_ship(sshd, evil, tmp_path / "device"))
    assert f"the archive's top folder '-rf' is not the bundle's name '{top}'" in line
    assert not (tmp_path / "device").exists()


# -- a device whose edgetl folders were tampered with before the ship ----------------------------------
def _precious(tmp_path: Path) -> Path:
    """A folder outside the shipment's place, with a file ship must neither remove nor add to."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious").write_text("keep me")
    return elsewhere


@pytest.mark.parametrize("link", ["releases", ".incoming", "bundle folder"])
def test_a_linked_folder_on_the_device_is_refused(sshd, bundle_file, tmp_path, link):
    """`releases/`, `.incoming` or `<name>/` itself a symbolic link: ship would move, extract and sweep
    where the link points, outside its place (the sweep of old releases removes what is there)."""
    dest, name = tmp_path / "device", inspect_archive(bundle_file)["name"]
    elsewhere = _precious(tmp_path)
    linked = dest / name if link == "bundle folder" else dest / name / link
    linked.parent.mkdir(parents=True, exist_ok=True)
    linked.symlink_to(elsewhere)
    line = one_error_line(cli_ship(sshd, bundle_file, dest))
    assert f"{linked.name} is a symbolic link" in line and "refusing to ship" in line
    assert sorted(p.name for p in elsewhere.iterdir()) == ["precious"]
    assert linked.is_symlink() and not (dest / name / "current").exists()


def test_current_pointing_elsewhere_is_refused(sshd, bundle_file, fp32_bundle, tmp_path):
    """`current` must be ship's own link into releases/: one pointing elsewhere is not read for the
    installed release, and not replaced; the device keeps it until someone looks."""
    dest = tmp_path / "device"
    done = ship_to(sshd, bundle_file, dest)
    elsewhere = _precious(tmp_path)
    (elsewhere / "manifest.json").write_text(json.dumps({"name": done.name, "release": 2**62}))
    current = Path(done.current)
    current.unlink()
    current.symlink_to(elsewhere)
    line = one_error_line(cli_ship(sshd, fp32_bundle, dest))
    assert "current points at" in line and "not into releases/" in line
    assert os.readlink(current) == str(elsewhere)
    assert sorted(p.name for p in elsewhere.iterdir()) == ["manifest.json", "precious"]
    assert not list((dest / done.name / ".incoming").iterdir())



def test_an_unreadable_installed_manifest_is_no_release(sshd, bundle_file, fp32_bundle, tmp_path):
    """The installed manifest is the device's text: nested too deep to parse, it protects nothing."""
    dest = tmp_path / "device"
    done = ship_to(sshd, bundle_file, dest)
    installed = Path(dest / done.name / "releases" / done.sha256[:16] / "manifest.json")
    installed.chmod(0o644)
    installed.write_text("[" * 100_000)
    result = cli_ship(sshd, fp32_bundle, dest)
    assert result.exit_code == 0, result.output
    assert check_folder(Path(done.current))["precision"] == "fp32"


def test_a_planted_release_folder_is_not_taken_for_the_bundle(sshd, bundle_file, tmp_path):
    """releases/<id> already there but holding another (older, validly signed) bundle: ship must not
    skip the copy and switch current to it, which would roll back while reporting the new release."""
    dest = tmp_path / "device"
    base = inspect_archive(bundle_file)["release"]
    newer = rebuilt(bundle_file, tmp_path / "newer.tar.gz", manifest={"release": base + 1})
    done = ship_to(sshd, bundle_file, dest)
    releases = dest / done.name / "releases"
    planted = releases / hashlib.sha256(newer.read_bytes()).hexdigest()[:16]
    shutil.copytree(releases / done.sha256[:16], planted)
    line = one_error_line(cli_ship(sshd, newer, dest))
    assert f"{planted.name} holds another bundle" in line
    assert os.readlink(dest / done.name / "current") == f"releases/{done.sha256[:16]}"


@pytest.mark.parametrize("names", [("kitchen pi", "kitchen-pi"), ("Kitchen", "kitchen"), ("a/b", "a.b")])
def test_fleet_names_that_share_a_result_file_are_refused(bundle_run, tmp_path, names):
    """Two devices whose names make the same result file would overwrite each other's results."""
    run = tmp_path / "run"
    shutil.copytree(bundle_run.path, run)
    fleet = tmp_path / "fleet.toml"
    fleet.write_text("".join(f'[[device]]\nname = "{n}"\nurl = "ssh://127.0.0.1:{free_port()}/x"\ntarget = "onnxruntime"\n\n'
                             for n in names))
    before = sorted(p.relative_to(run).as_posix() for p in run.rglob("*"))
    line = one_error_line(CliRunner().invoke(cli, ["bench", str(run), "--fleet", str(fleet)]))
    assert "share the result file name" in line
    assert sorted(p.relative_to(run).as_posix() for p in run.rglob("*")) == before
