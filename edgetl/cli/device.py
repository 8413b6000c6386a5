"""What runs on the device (no PyTorch): verify, predict, val, enroll, build, ship to it, and the signing keys."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import click
from rich.markup import escape

from edgetl.cli import cli, console
from edgetl.cli._options import (
    _remote_options,
    _trust_option,
)
from edgetl.cli.bench import _print_accuracy
from edgetl.config import MAX_THREADS


def _bounded_threads(ctx, param, value: int | None) -> int | None:
    """ONNX Runtime starts every thread it is asked for (thousands: a hang): one line, as bench says it."""
    from edgetl.errors import ConfigError

    if value is not None and not 1 <= value <= MAX_THREADS:
        raise ConfigError(f"--threads {value}: must be from 1 to {MAX_THREADS}")
    return value


_threads_option = click.option("--threads", type=int, callback=_bounded_threads,
                               help=f"Runtime threads, 1..{MAX_THREADS} (default: the target profile's).")


@cli.group()
def keys():
    """Ed25519 keys that sign bundles (workstation) and the keys a device trusts.

    \b
    Trusted public keys live in $EDGETL_TRUSTED_KEYS (folders or files, separated by ':'),
    else in ~/.config/edgetl/trusted-keys/ ($XDG_CONFIG_HOME honoured). Once one is there,
    verify, predict, bench and ship accept only bundles signed by a trusted key (unsigned
    ones with --allow-unsigned); with none, unsigned bundles work as before.

    \b
    Examples:
      edgetl keys new --name release                  # ~/.config/edgetl/keys/release.{key,pub}
      edgetl bundle runs/flowers -t raspberry-pi-5 --sign ~/.config/edgetl/keys/release.key
      edgetl keys trust release.pub                   # on the device (copy the .pub there first)
      edgetl keys list
    """


@keys.command("new")
@click.option("--out", type=click.Path(path_type=str), help="Folder for NAME.key (private, mode 0600) and NAME.pub. "
              "Default: ~/.config/edgetl/keys.")
@click.option("--name", default="edgetl", show_default=True, help="File name of the pair, without suffix.")
def keys_new(out, name):
    """Make an Ed25519 key pair for signing bundles; never overwrites a key."""
    from edgetl.bundle import signing
    from edgetl.errors import ConfigError

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
        raise ConfigError(f"--name {name!r}: use letters, digits, '.', '_' and '-' (a file name, no folders)")
    private, public = signing.new_key_pair(out or signing.default_key_dir(), name)
    kid = signing.key_id(signing.load_public_key(public))
    console.print(f"wrote [bold]{private}[/] (private: keep it secret) and [bold]{public}[/] (key id {kid})", highlight=False)
    console.print(f"next: edgetl bundle RUN --target T --sign {private}; on each device: edgetl keys trust {public.name}",
                  highlight=False)


@keys.command("trust")
@click.argument("public_key", metavar="PUB", type=click.Path(path_type=str))
def keys_trust(public_key):
    """Trust a public key (PEM or raw 32 bytes): copy it into the trusted keys folder."""
    from edgetl.bundle import signing

    kid, dest = signing.trust(public_key)
    console.print(f"trusted key {kid}: [bold]{dest}[/]", highlight=False)


@keys.command("list")
def keys_list():
    """List the trusted public keys and where they are read from."""
    from rich.table import Table

    from edgetl.bundle import signing

    places = ", ".join(str(p) for p in signing.trusted_key_paths())
    found = signing.trusted_keys()
    if not found:
        console.print(f"no trusted keys (read from {places}): unsigned bundles are accepted", highlight=False)
        return
    table = Table("key id", "file", title=f"trusted keys ({places})", title_justify="left")
    for kid, (_, path) in sorted(found.items()):
        table.add_row(kid, str(path))
    console.print(table)


@cli.command("ship")
@click.argument("bundle", type=click.Path(path_type=str))
@click.argument("url", metavar="ssh://[user@]host[:port][/path]")
@_remote_options
@_trust_option
def ship_cmd(bundle, url, remote_edgetl, ssh_options, install, connect_timeout, allow_rollback):
    """Copy a bundle to a device over SSH, check it there and make it current.

    \b
    Uses the system ssh client, so ~/.ssh/config, keys, agents and jump hosts work.
    Steps: copy to <path>/<name>/.incoming/, compare its sha256 on arrival, extract
    into <path>/<name>/releases/<id>/ (files 0644, folders 0755: the archive's owners
    and modes are not kept), run `edgetl verify` there (golden outputs on the device's
    runtime; file hashes only when edgetl is absent), then switch the
    <path>/<name>/current symlink atomically. If anything fails the device keeps its
    previous bundle and the upload is removed. A bundle whose release is lower than
    the installed one is refused unless --allow-rollback. A path without a leading
    /~/ is absolute; no path: ~/edgetl; ~user paths are refused.

    \b
    Examples:
      edgetl ship runs/flowers/bundles/raspberry-pi-5-int8.tar.gz ssh://pi@raspberrypi.local/~/models
      edgetl ship b.tar.gz ssh://nvidia@orin:2222/opt/models --install --remote-edgetl /opt/venv/bin/edgetl
    """
    from edgetl.bundle.ship import ship

    with console.status("shipping") as status:
        done = ship(bundle, url, install=install, remote_edgetl=remote_edgetl, ssh_options=ssh_options,
                    connect_timeout=connect_timeout, allow_rollback=allow_rollback, step=lambda m: status.update(m))
    how = "golden outputs verified on the device" if done.verified == "golden" else \
        "file hashes checked (no edgetl there: pass --install to verify its outputs)"
    copied = "copied" if done.copied else "already on the device"
    console.print(f"[green]shipped[/] {done.name} to {done.url} ({copied}); {how}", highlight=False)
    console.print(f"  {done.current} -> releases/{Path(done.release).name}", highlight=False)


@cli.command("verify")
@click.argument("bundle", type=click.Path(path_type=str))
@_threads_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@_trust_option
def verify_cmd(bundle, threads, as_json):
    """Check a bundle on this machine: signature, manifest, file hashes, then golden outputs.

    \b
    Exit 0 when the signature is by a trusted key (or the bundle is unsigned and no key is
    trusted here, or --allow-unsigned), every file matches its sha256 and the golden inputs
    give the workstation's outputs within edgetl's tolerance for the precision on this
    machine's runtime; exit 2 otherwise, naming what differs.

    \b
    Examples:
      edgetl verify model-bundle.tar.gz
      EDGETL_TRUSTED_KEYS=/etc/edgetl/keys edgetl verify model-bundle.tar.gz --json
    """
    from edgetl.bundle.runner import verify

    result = verify(bundle, threads)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    signature = "unsigned" if result["signature"] == "unsigned" else f"signature {result['signature']}"
    console.print(
        f"[green]OK[/] {result['bundle']} ({signature}): {result['files_checked']} files match their sha256; "
        f"{result['golden_samples']} golden samples reproduce the workstation's outputs on {result['runtime']} "
        f"(top-1 agreement {result['top1_agreement']:.0%}, worst difference {result['worst_diff_over_tolerance']:.0%} "
        "of the tolerance)", highlight=False)


@cli.command("predict")
@click.argument("bundle", type=click.Path(path_type=str))
@click.argument("images", nargs=-1, required=True, metavar="INPUTS...", type=click.Path(path_type=str))
@click.option("--top", default=3, show_default=True, help="How many labels per sample.")
@_threads_option
@click.option("--json", "as_json", is_flag=True, help="Print the predictions as JSON.")
@_trust_option
def predict_cmd(bundle, images, top, threads, as_json):
    """Classify images, or every image under a folder, with a bundle (the bundle comes first);
    a text bundle takes strings, text files (one sample per line) or - (stdin lines); a
    keyword-spotting bundle takes .wav files and folders of them.

    \b
    Examples:
      edgetl predict model-bundle.tar.gz photo.jpg --top 3
      edgetl predict model-bundle.tar.gz shots/*.jpg              # several images, in this order
      edgetl predict model-bundle.tar.gz ./photos --json > predictions.json
      edgetl predict reviews-bundle.tar.gz "the battery died after a week"
      cat reviews.txt | edgetl predict reviews-bundle.tar.gz -    # one text per line
      edgetl predict kws-bundle.tar.gz clip.wav ./more-clips --json   # WAVs (any rate, channels)

    \b
    A bundle trained with --task-head answers every task: one column per head
    (JSON: "heads": {name: top-k}). A prototype-head bundle answers with its enrolled classes.

    \b
    An image that cannot be read (corrupt, truncated, not an image, a FIFO or device
    named like one) gets an error in its row (JSON: "error") and the others go on; the
    command then exits 2 with a one-line count. FIFOs and devices are never opened.
    """
    from rich.table import Table

    from edgetl.bundle.runner import predict
    from edgetl.errors import DataError

    results = predict(bundle, images, top=top, threads=threads, stdin=sys.stdin)
    if not results:
        raise DataError("nothing to predict: the arguments hold no samples")
    key = "image" if "image" in results[0] else "sample"
    failed = [r for r in results if "error" in r]
    if as_json:
        click.echo(json.dumps(results, indent=2))
    else:
        k = max(len(r["top"]) for r in results)
        heads = sorted({h for r in results for h in r.get("heads", {})})  # --task-head bundles: one column each
        table = Table(key, *[f"#{i + 1}" for i in range(k)], *heads, *(["error"] if failed else []))
        folder = Path(images[0]) if len(images) == 1 and os.path.isdir(images[0]) else None  # a long text: no OSError
        for r in results:
            name = Path(r[key]).relative_to(folder).as_posix() if folder else r[key]
            cells = [f"{t['label']} ({t['score']:.1%})" for t in r["top"]] or [""] * k
            answers = [_answer(r.get("heads", {}).get(h)) for h in heads]
            table.add_row(escape(name), *cells, *answers, *([escape(r.get("error", ""))] if failed else []))
        console.print(table)
    if failed:
        raise DataError(f"{len(failed)} of {len(results)} {key}(s) could not be read, e.g. {failed[0]['error']}")


@cli.command("enroll")
@click.argument("bundle", type=click.Path(path_type=str))
@click.argument("images", nargs=-1, required=True, metavar="IMAGES...", type=click.Path(path_type=str))
@click.option("--label", required=True, help="The class the images show (1..200 characters, no control characters).")
@click.option("--replace", is_flag=True, help="Enrol LABEL again from these images (it must exist); "
              "without it, an existing label is refused.")
@click.option("--out", type=click.Path(path_type=str), help="The new bundle, a .tar.gz name in a folder that exists "
              "(default: <name>-r<release>.tar.gz next to BUNDLE). Never overwritten.")
@click.option("--sign", "sign_key", type=click.Path(path_type=str), metavar="KEY",
              help="Sign the new bundle with this Ed25519 private key (needed when BUNDLE is signed, unless "
              "--allow-unsigned).")
@_threads_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@_trust_option
def enroll_cmd(bundle, images, label, replace, out, sign_key, threads, as_json):
    """Add a class to a prototype-head bundle from a few images (or replace one), on the device.

    \b
    BUNDLE must be built with `edgetl bundle RUN --target T --head prototype`. It is
    verified first (signature, hashes, golden outputs); the images (files or folders,
    1 to 1000) go through its own preprocessing and runtime (no PyTorch), the class's
    prototype is the mean of their normalised embeddings, and a new bundle is written:
    release + 1, fresh sha256s, signed with --sign. The input bundle is left as it is.
    predict, verify, val, bench and ship then use the new bundle like any other.

    \b
    Examples:
      edgetl enroll model-bundle.tar.gz --label "new-part-77" ./five-photos/
      edgetl enroll model-bundle.tar.gz --label cat cat1.jpg cat2.jpg --out cats.tar.gz
      edgetl enroll model-bundle.tar.gz --label cat ./better-cats --replace --sign release.key
      edgetl predict flowers-host-cpu-r1764441601.tar.gz photo.jpg   # the file enroll wrote
    """
    from edgetl.bundle.enroll import enroll

    with console.status(f"enrolling {label!r}"):
        done = enroll(bundle, label, images, replace=replace, out=out, sign=sign_key, threads=threads)
    if as_json:
        click.echo(json.dumps({**done.__dict__, "path": str(done.path)}, indent=2))
        return
    how = "replaced" if done.replaced else "added"
    signed = f"signed by {done.signed_by}" if done.signed_by else "unsigned"
    console.print(f"[green]{how}[/] {escape(done.label)!r} from {done.images} image(s): wrote [bold]{escape(str(done.path))}[/] "
                  f"({done.classes} classes, release {done.release}, {signed})", highlight=False)
    console.print(f"next: edgetl verify {escape(str(done.path))}   then: edgetl ship {escape(str(done.path))} "
                  "ssh://user@device/path", highlight=False)


def _answer(top: list[dict] | None) -> str:
    """A task head's top answer in a table cell (an unreadable sample has none)."""
    return escape(f"{top[0]['label']} ({top[0]['score']:.1%})") if top else ""


@cli.command("build")
@click.argument("bundle", type=click.Path(path_type=str))
@click.option("--force", is_flag=True, help="Rebuild even when a cached engine exists.")
@click.option("--any-arch", is_flag=True, help="Build although the bundle was made for another GPU architecture.")
@_trust_option
def build_cmd(bundle, force, any_arch):
    """Finish a bundle's artifact on this device (a TensorRT engine), and cache it.

    \b
    Engines only run on the GPU and TensorRT version that built them, so TensorRT bundles
    carry the ONNX; the engine is cached by GPU name, compute capability and TensorRT
    version in engines/ under the cache root: $EDGETL_CACHE, else $XDG_CACHE_HOME/edgetl,
    else ~/.cache/edgetl. verify, predict and bench build it on first use too; run this
    once after shipping to take the wait out of the first run.

    \b
    Examples:
      edgetl build model-bundle.tar.gz
      EDGETL_CACHE=/data/edgetl edgetl build model-bundle.tar.gz --force
    """
    from edgetl.backends._trt_engine import engine_info
    from edgetl.bundle.runner import open_bundle, require_runtime
    from edgetl.errors import BundleError

    opened = open_bundle(bundle)
    backend = require_runtime(opened)
    if not backend.builds_on_device:
        raise BundleError(f"bundle {opened.name} runs on {opened.runtime}: there is no engine to build, it runs as it is")
    with console.status(f"building the {opened.runtime} engine (minutes on a Jetson)"):
        path = backend.prepare(opened, force=force, any_arch=any_arch)
    info = engine_info(path)
    console.print(f"engine [bold]{path}[/] ({info.get('gpu')}, {info.get('gpu_arch')}, {info.get('tensorrt')})", highlight=False)


@cli.command("val")
@click.argument("bundle", type=click.Path(path_type=str))
@click.argument("data", type=click.Path(path_type=str))
@_threads_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@_trust_option
def val_cmd(bundle, data, threads, as_json):
    """Accuracy of a bundle on this machine on labelled samples: top-1, top-5, per class, and the
    task's own metrics (text: macro-F1; keyword spotting: the false-accept rate of _background_).

    \b
    DATA is what the bundle's task trains on: a folder with one subfolder per label (named
    like the bundle's labels; a subset of them is fine) or a CSV (images: path,label;
    text: text,label). Samples go through the bundle's own preprocessing (a text bundle's
    tokenizer too); no PyTorch needed. Every number has its 95% interval for the number
    of samples (Wilson); the drop is against the workstation's FP32 top-1 from the bundle
    manifest, measured on other samples (unpaired interval), shown beside it.

    \b
    Examples:
      edgetl val model-bundle.tar.gz ./labelled
      edgetl val model-bundle.tar.gz labels.csv --json > accuracy.json
      edgetl val kws-bundle.tar.gz ./keywords/val           # <word>/*.wav, _background_/*.wav
      edgetl val reviews-bundle.tar.gz reviews.csv                # text,label rows
    """
    from edgetl.bench.labelled import bundle_accuracy

    with console.status("evaluating"):
        result = bundle_accuracy(bundle, data, threads)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    console.print(f"{escape(result['bundle'])} ({result['runtime']} {result['precision']})", highlight=False)
    _print_accuracy(result["accuracy"], result["workstation_accuracy"])


