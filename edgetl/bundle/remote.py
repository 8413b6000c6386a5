"""Bench on remote devices: ship the target's bundle (when the device lacks it), run ``edgetl bench``
there, and bring the bench result document (``edgetl.bench.run.SCHEMA``) back into the run next to
the workstation's rows.

The device's answer is data, never a path: it is read up to a fixed size, validated, and stored
under a file name the workstation makes from its own target, precision and device name, proven to
lie inside the run's ``bench/`` folder before anything is written.

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

import json
import math
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from edgetl._io import write_json
from edgetl.bench.settings import BenchSettings
from edgetl.bundle.format import slug
from edgetl.bundle.manifest import MAX_CLASSES
from edgetl.bundle.ship import Remote, SshUrl, ship, shown
from edgetl.bundle.signing import remote_flags
from edgetl.config import load_toml
from edgetl.errors import ConfigError, EdgetlError, GatesFailed, RemoteError
from edgetl.rundir import RunDir
from edgetl.stages import StageResult

Step = Callable[[str], None]


@dataclass
class Access:
    """How to reach and use a device: the ship options."""

    ssh_options: list[str] = field(default_factory=list)
    remote_edgetl: str = "edgetl"
    install: bool = False
    connect_timeout: int = 10
    allow_rollback: bool = False
    sign: str | None = None  # Ed25519 private key for bundles made to be timed there (optimize --remote)


def default_target(run: RunDir) -> str:
    from edgetl.compiler import CompiledEntry

    targets = sorted({e.target for e in run.entries(CompiledEntry).values()})
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
    from edgetl.bench.run import DeviceBench
    from edgetl.bench.system import device_slug

    run = RunDir.open(run_path, need="compiled")
    run.entries(DeviceBench)  # the device's result is merged into them: a malformed one fails before shipping
    target = target or default_target(run)
    settings, access = settings or BenchSettings(), access or Access()
    parsed = SshUrl.parse(url)
    device = device_slug(device_name or parsed.host.strip("[]"))
    if bundle is None:
        step(f"bundling {target}")
        bundle = bundle_for(run, target, precision)
    shipment = ship(bundle, parsed, install=access.install, remote_edgetl=access.remote_edgetl,
                    ssh_options=access.ssh_options, connect_timeout=access.connect_timeout,
                    allow_rollback=access.allow_rollback, step=step)
    # The workstation's own names for the result file, checked before the device is even asked.
    key = f"{shipment.target}/{shipment.slot}"
    path = result_file(run, f"{slug(shipment.target)}/{slug(shipment.slot)}", device)
    remote = Remote(parsed, list(access.ssh_options), access.connect_timeout, access.remote_edgetl)
    remote.require_edgetl(shipment.runtime_extra)
    step("benching on the device")
    out = remote.run([access.remote_edgetl, "bench", shipment.current, "--json", "--device", device, *settings.argv(),
                      *remote_flags()],
                     f"benching on {parsed.host}", timeout=3600)
    doc = parse_result(out, parsed.host, key)
    doc["device"]["name"] = device
    doc["remote"] = {"url": str(parsed), "release": shipment.release, "bundle_sha256": shipment.sha256}
    save_result(run, doc, path)
    return doc


def result_file(run: RunDir, key: str, device: str) -> Path:
    """``bench/<target>/<precision>@<device>.json`` of the run, proven to lie inside its bench/ folder."""
    from edgetl.bench.run import result_path

    bench = (run.path / "bench").resolve()
    path = result_path(run, key, device).resolve()
    if not path.is_relative_to(bench) or path == bench:
        raise RemoteError(f"the result file for {shown(key)} on {shown(device)} would lie outside {run.path / 'bench'}: "
                          "refusing to write it")
    return path


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


_PRINTABLE = r"^[^\x00-\x1f\x7f-\x9f]*$"  # printed on the workstation's terminal: no escape sequences
_Text = Annotated[str, StringConstraints(max_length=256, pattern=_PRINTABLE)]
_Number = Annotated[float, AfterValidator(_finite)]


class _Open(BaseModel):
    # strict: "12.5" is not 12.5 (the document is stored as the device wrote it, then formatted as numbers)
    model_config = ConfigDict(extra="allow", strict=True)


class _Cpu(_Open):
    model: _Text | None = None
    flags: list[_Text] = Field(default_factory=list, max_length=256)
    physical_cores: int | None = None
    logical_cores: int | None = None


class _Gpu(_Open):
    name: _Text = ""


class _System(_Open):
    name: Annotated[str, StringConstraints(max_length=256)]  # replaced by the workstation's own name for it
    cpu: _Cpu
    board: _Text | None = None
    threads: int | None = None
    runtimes: dict[_Text, _Text | None] = Field(default_factory=dict)
    gpus: list[_Gpu] = Field(default_factory=list, max_length=64)


_Interval = Annotated[list[_Number], Field(min_length=2, max_length=2)]


class _Contention(_Open):
    busy: bool | None = None


class _Latency(_Open):
    batch: int
    p50_ms: _Number
    p90_ms: _Number
    p99_ms: _Number
    mean_ms: _Number
    throughput_ips: _Number
    samples_ms: list[_Number] = Field(default_factory=list)
    speedup_vs_reference: _Number | None = None
    busy: bool | None = None
    contention: _Contention | None = None


class _Check(_Open):
    status: _Text
    reason: Annotated[str, StringConstraints(max_length=2000, pattern=_PRINTABLE)]


class _Gates(_Open):
    status: _Text
    failed: list[_Text] = Field(default_factory=list)
    checks: list[_Check] = Field(default_factory=list, max_length=64)


class _ClassRow(_Open):
    class_: _Text = Field(alias="class")
    n: int
    top1: _Number | None
    top1_ci: _Interval | None


class _Changed(_Open):
    index: int
    top1: _Number


class _Skipped(_Open):
    reason: Annotated[str, StringConstraints(max_length=2000, pattern=_PRINTABLE)]


class _Accuracy(_Open):
    """What the summary, the report and the printed table read of a device's accuracy."""

    source: _Text
    n: int
    top1: _Number | None = None
    top1_ci: _Interval | None = None
    top5: _Number | None = None
    top5_ci: _Interval | None = None
    drop_pp: _Number | None = None
    drop_ci_pp: _Interval | None = None
    agreement: _Number | None = None
    per_class: list[_ClassRow] = Field(default_factory=list, max_length=MAX_CLASSES)
    per_class_changed: list[_Changed] = Field(default_factory=list, max_length=MAX_CLASSES)
    drop_against: _Text | None = None
    skipped: list[_Skipped] = Field(default_factory=list)
    evaluated_with: _Text | None = None
    estimated: bool | None = None

    @model_validator(mode="after")
    def _drop_with_interval(self) -> _Accuracy:
        if self.drop_pp is not None and self.drop_ci_pp is None:
            raise ValueError("drop_pp comes with drop_ci_pp")
        return self


class _Elsewhere(_Open):
    """The bundle's workstation accuracy, as the device echoes it."""

    top1: _Number | None = None
    n: int | None = None
    fp32_top1: _Number | None = None
    drop_pp: _Number | None = None


class _Artifact(_Open):
    bundle: _Text
    runtime: _Text
    precision: _Text


class _Load(_Open):
    first_inference_ms: _Number | None = None


class _Memory(_Open):
    session_peak_mb: _Number | None = None


class _Golden(_Open):
    top1_agreement: _Number


class DeviceResult(_Open):
    """The parts of a device's bench result document that the workstation reads, typed."""

    schema_: _Text = Field(alias="schema")
    key: _Text
    status: _Text
    device: _System
    settings: dict[_Text, Any]
    artifact: _Artifact
    load: _Load
    memory: _Memory
    latency: list[_Latency] = Field(max_length=64)
    gates: _Gates
    golden: _Golden
    accuracy: _Accuracy | None = None
    workstation_accuracy: _Elsewhere | None = None


def parse_result(out: str, host: str, key: str) -> dict[str, Any]:
    """The device's answer as a result document for ``key``, or a RemoteError saying what is wrong with it."""
    from edgetl.bench.run import SCHEMA

    try:
        doc = json.loads(out)
    except (json.JSONDecodeError, RecursionError):
        raise RemoteError(f"`edgetl bench --json` on {host} did not print a result document: upgrade edgetl there") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        got = doc.get("schema") if isinstance(doc, dict) else None
        raise RemoteError(f"{host} returned a bench result with schema {shown(got)}, not {SCHEMA!r}: install the same "
                          "edgetl there")
    try:
        DeviceResult.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise RemoteError(f"{host} returned a malformed bench result (field '{_field(first['loc'])}': "
                          f"{first['msg']}): refusing to store it") from None
    if doc["key"] != key:
        raise RemoteError(f"{host} answered with a result for {shown(doc['key'])}, not {key!r}: refusing to store it")
    return doc


def _field(loc: tuple) -> str:
    """Where a device's document is malformed: its own keys (``device.runtimes.<key>``) are the device's
    text, so they are escaped and cut like any other (no newline or escape sequence reaches the terminal)."""
    return ".".join(p if isinstance(p, str) and re.fullmatch(r"[A-Za-z0-9_./\[\]-]{1,64}", p) else
                    str(p) if isinstance(p, int) else shown(p) for p in loc)


def save_result(run: RunDir, doc: dict[str, Any], path: Path) -> Path:
    """Write a device's result (validated, to a ``result_file`` path) like the local bench does, and
    merge its summary into the manifest."""
    from edgetl.bench.run import merge_summary, system_summary

    write_json(path, doc)
    run.record(path)
    doc["file"] = run.rel(path)
    system = {**system_summary(doc["device"]), "remote": doc["remote"]["url"]}
    merge_summary(run, doc, system, settings=doc["settings"])
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
    _refuse_shared_result_files(path, names)
    return fleet


def _refuse_shared_result_files(path: str | Path, names: list[str]) -> None:
    """Names that differ but make the same result file ("kitchen pi", "Kitchen-Pi") would overwrite
    each other's results in parallel."""
    from edgetl.bench.system import device_slug

    by_file: dict[str, list[str]] = {}
    for name in names:
        by_file.setdefault(device_slug(name), []).append(name)
    shared = next((group for group in by_file.values() if len(group) > 1), None)
    if shared:
        raise ConfigError(f"{path}: devices {', '.join(map(shown, shared))} share the result file name "
                          f"{device_slug(shared[0])!r}: give each device a name of its own")


def bench_fleet(
    run_path: str | Path,
    fleet_path: str | Path,
    *,
    settings: BenchSettings | None = None,
    access: Access | None = None,
    workers: int = 8,
    step: Callable[[str, str], None] = lambda device, message: None,
) -> FleetResults:
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
                      d.install or access.install, access.connect_timeout, access.allow_rollback)
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
        return FleetResults(pool.map(one, fleet))


class FleetResults(list, StageResult):
    """One row per device; a device that could not be benched is an error (exit 2), a FAILed gate on
    a device a failed gate (exit 1)."""

    error_class: ClassVar[type[EdgetlError]] = RemoteError

    def errors(self) -> list[str]:
        return [r["device"] for r in self if r["status"] != "ok"]

    def errors_message(self, errors: list[str]) -> str:
        return f"{len(errors)} of {len(self)} devices could not be benched ({', '.join(errors)}): see their rows"

    def failed_gates(self) -> list[str]:
        return [r["device"] for r in self if r.get("gate") == "FAIL"]

    def raise_for_gates(self) -> None:
        if failed := self.failed_gates():
            raise GatesFailed(f"budget failed on {', '.join(failed)}")
