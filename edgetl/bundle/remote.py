"""Bench on remote devices: ship the target's bundle (when the device lacks it), run ``edgetl bench``
there, and bring the ``edgetl.bench/1`` document back into the run next to the workstation's rows.

A fleet is a TOML list of devices benched in parallel; one failing device is reported in its row
and does not stop the others::

    [[device]]
    name = "kitchen-pi"                        # names the result file (default: the host)
    url = "ssh://pi@kitchen.local/~/models"
    target = "raspberry-pi-5"
    # optional: precision = "int8", edgetl = "/home/pi/venv/bin/edgetl",
    #           ssh_options = ["IdentityFile=~/.ssh/pi"], install = false
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgetl._io import write_json
from edgetl.bundle.ship import Remote, SshUrl, ship
from edgetl.bundle.signing import remote_flags
from edgetl.config import load_toml
from edgetl.errors import ConfigError, EdgetlError, RemoteError
from edgetl.rundir import RunDir

Step = Callable[[str], None]


@dataclass
class BenchSettings:
    """What the device's ``edgetl bench`` gets: the same options as a local bench."""

    batches: Sequence[int] = (1,)
    threads: int | None = None
    iterations: int = 200
    duration_s: float | None = None

    def argv(self) -> list[str]:
        argv = ["--batch", ",".join(map(str, self.batches))]
        argv += ["--duration", str(self.duration_s)] if self.duration_s is not None else ["--iterations", str(self.iterations)]
        return argv + (["--threads", str(self.threads)] if self.threads else [])


@dataclass
class Access:
    """How to reach and use a device: the ship options."""

    ssh_options: list[str] = field(default_factory=list)
    remote_edgetl: str = "edgetl"
    install: bool = False
    connect_timeout: int = 10


def default_target(run: RunDir) -> str:
    targets = sorted({e["target"] for e in (run.manifest.get("compiled") or {}).values()})
    if len(targets) != 1:
        raise ConfigError(f"choose the device's target with --target (compiled: {', '.join(targets) or 'none'})")
    return targets[0]


def bundle_for(run: RunDir, target: str, precision: str | None = None) -> Path:
    """The target's bundle, made now unless an up-to-date one exists."""
    from edgetl.bundle.create import create_bundle, up_to_date

    return up_to_date(run, target, precision) or create_bundle(run.path, target, precision)


def remote_bench(
    run_path: str | Path,
    url: str,
    target: str | None = None,
    *,
    precision: str | None = None,
    device_name: str | None = None,
    settings: BenchSettings | None = None,
    access: Access | None = None,
    bundle: Path | None = None,
    step: Step = lambda message: None,
) -> dict[str, Any]:
    """Ship (if needed) and bench the target's bundle on the device at ``url``; returns the result
    document, also written to ``runs/<name>/bench/<target>/<precision>@<device>.json``."""
    from edgetl.bench.system import device_slug

    run = RunDir.open(run_path, need="compiled")
    target = target or default_target(run)
    settings, access = settings or BenchSettings(), access or Access()
    parsed = SshUrl.parse(url)
    device = device_slug(device_name or parsed.host.strip("[]"))
    if bundle is None:
        step(f"bundling {target}")
        bundle = bundle_for(run, target, precision)
    shipment = ship(bundle, parsed, install=access.install, remote_edgetl=access.remote_edgetl,
                    ssh_options=access.ssh_options, connect_timeout=access.connect_timeout, step=step)
    remote = Remote(parsed, list(access.ssh_options), access.connect_timeout, access.remote_edgetl)
    remote.require_edgetl(shipment.runtime_extra)
    step("benching on the device")
    out = remote.run([access.remote_edgetl, "bench", shipment.current, "--json", "--device", device, *settings.argv(),
                      *remote_flags()],
                     f"benching on {parsed.host}", timeout=3600)
    doc = _parse_result(out, parsed.host)
    doc["remote"] = {"url": str(parsed), "release": shipment.release, "bundle_sha256": shipment.sha256}
    save_result(run, doc)
    return doc


def _parse_result(out: str, host: str) -> dict[str, Any]:
    from edgetl.bench.run import SCHEMA

    try:
        doc = json.loads(out)
    except json.JSONDecodeError:
        raise RemoteError(f"`edgetl bench --json` on {host} did not print a result document: upgrade edgetl there") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        got = doc.get("schema") if isinstance(doc, dict) else None
        raise RemoteError(f"{host} returned a bench result with schema {got!r}, not {SCHEMA!r}: install the same edgetl there")
    return doc


def save_result(run: RunDir, doc: dict[str, Any]) -> Path:
    """Write a device's result like the local bench does, and merge its summary into the manifest."""
    from edgetl.bench.run import result_path, summary_of

    device = doc["device"]["name"]
    path = result_path(run, doc["key"], device)
    write_json(path, doc)
    run.record(path)
    doc["file"] = run.rel(path)
    system = doc["device"]
    with run.editing() as manifest:
        section = manifest.setdefault("bench", {}).setdefault(device, {})
        section["system"] = {"cpu": system["cpu"].get("model"), "flags": system["cpu"].get("flags"),
                             "cores": system["cpu"].get("physical_cores"), "runtimes": system.get("runtimes"),
                             "board": system.get("board"), "remote": doc["remote"]["url"]}
        section["settings"] = doc["settings"]
        section["updated"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        section.setdefault("results", {})[doc["key"]] = summary_of(doc)
    return path


# -- fleets ---------------------------------------------------------------------------------------
class FleetDevice(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = None
    url: str
    target: str
    precision: str | None = None
    edgetl: str | None = Field(None, description="edgetl command on the device (default: --remote-edgetl)")
    ssh_options: list[str] = Field(default_factory=list)
    install: bool = False


def load_fleet(path: str | Path) -> list[FleetDevice]:
    data = load_toml(path)
    devices = data.get("device")
    if not isinstance(devices, list) or not devices:
        raise ConfigError(f"{path}: no [[device]] tables: list each device as [[device]] with url and target")
    unknown = set(data) - {"device"}
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {', '.join(sorted(unknown))}: only [[device]] tables")
    fleet = []
    for i, raw in enumerate(devices):
        try:
            device = FleetDevice.model_validate(raw)
            SshUrl.parse(device.url)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise ConfigError(f"{path}: device {i + 1}, field '{'.'.join(map(str, first['loc']))}': {first['msg']}") from None
        except RemoteError as exc:
            raise ConfigError(f"{path}: device {i + 1}: {exc}") from None
        fleet.append(device)
    names = [d.name or SshUrl.parse(d.url).host for d in fleet]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"{path}: device name(s) {', '.join(dupes)} appear twice: give each device its own name")
    return fleet


def bench_fleet(
    run_path: str | Path,
    fleet_path: str | Path,
    *,
    settings: BenchSettings | None = None,
    access: Access | None = None,
    workers: int = 8,
    step: Callable[[str, str], None] = lambda device, message: None,
) -> list[dict[str, Any]]:
    """Bench every device of the fleet in parallel; one row per device, failures included."""
    run = RunDir.open(run_path, need="compiled")
    fleet = load_fleet(fleet_path)
    access = access or Access()
    # Bundles first, one per (target, precision), so parallel devices never build the same one.
    bundles: dict[tuple[str, str | None], Path | EdgetlError] = {}
    for d in fleet:
        key = (d.target, d.precision)
        if key not in bundles:
            step(d.name or d.target, f"bundling {d.target}")
            try:
                bundles[key] = bundle_for(run, *key)
            except EdgetlError as exc:
                bundles[key] = exc

    def one(d: FleetDevice) -> dict[str, Any]:
        name = d.name or SshUrl.parse(d.url).host
        row = {"device": name, "target": d.target, "url": d.url}
        made = bundles[(d.target, d.precision)]
        if isinstance(made, EdgetlError):
            return {**row, "status": "error", "reason": str(made)}
        mine = Access([*access.ssh_options, *d.ssh_options], d.edgetl or access.remote_edgetl,
                      d.install or access.install, access.connect_timeout)
        try:
            doc = remote_bench(run.path, d.url, d.target, precision=d.precision, device_name=d.name, settings=settings,
                               access=mine, bundle=made, step=lambda m: step(name, m))
        except EdgetlError as exc:
            return {**row, "status": "error", "reason": str(exc)}
        lat = min(doc["latency"], key=lambda r: r["batch"]) if doc["latency"] else {}
        return {**row, "status": "ok", "file": doc["file"], "key": doc["key"], "batch": lat.get("batch"),
                "p50_ms": lat.get("p50_ms"), "p90_ms": lat.get("p90_ms"), "p99_ms": lat.get("p99_ms"),
                "gate": doc["gates"]["status"], "golden_agreement": (doc.get("golden") or {}).get("top1_agreement")}

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(fleet)))) as pool:
        return list(pool.map(one, fleet))
