"""``RemoteTimer``: time optimize's candidates on the device itself, over SSH.

Each candidate is packed as a bundle (``bundle.create.candidate_bundle``: unsigned unless
``Access.sign`` names a key; the device's trusted keys and ``--allow-unsigned`` apply as for any bundle), shipped with
``ship`` into a folder of its own on the device (``<run>-optimize``, never the deployed bundle's
folder), and timed there with ``edgetl bench BUNDLE --json --threads T`` (``--duration S`` or
``--iterations``). The device's answer is parsed with the hardened ``DeviceResult`` model, then held
to what a latency is (positive, ordered percentiles, below an hour): a device that lies fails that
point with one line, and a failed point is never picked.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from edgetl.bundle.format import slug
from edgetl.bundle.remote import Access, parse_result
from edgetl.bundle.ship import Remote, Shipment, SshUrl, ship, shown
from edgetl.bundle.signing import remote_flags
from edgetl.compiler import OPTIMIZED
from edgetl.config import MAX_THREADS
from edgetl.errors import RemoteError
from edgetl.optimize.record import MAX_LATENCY_MS
from edgetl.rundir import RunDir

SCREEN_ITERATIONS = 50  # a screening timing without a duration: enough to rank points 3x apart
FINAL_ITERATIONS = 200  # DESIGN.md's policy (the device's bench warms up >= 50 runs and >= 0.2 s itself)
# The device's core count, read without a bundle: what `edgetl bench` there would use by default.
_CORES_PROBE = ("from edgetl.bench.system import cpu_record; c = cpu_record(); "
                "print(min(c['physical_cores'] or c['usable_cores'] or 1, c['usable_cores'] or 1))")


class RemoteTimer:
    """The device at ``url``: every candidate bundled here, shipped, and timed there."""

    def __init__(self, run: RunDir, url: str, access: Access | None = None, work_dir: Path | None = None, *,
                 device_name: str | None = None):
        from edgetl.bench.system import device_slug

        self.run, self.url, self.access = run, SshUrl.parse(url), access or Access()
        self.where = str(self.url)
        self.device = device_slug(device_name or self.url.host.strip("[]"))
        self.work_dir = Path(work_dir) if work_dir is not None else run.path / "optimize" / ".remote"
        self.remote = Remote(self.url, list(self.access.ssh_options), self.access.connect_timeout,
                             self.access.remote_edgetl)
        self.name = f"{slug(run.path.name)}-optimize"[:64].rstrip("-.")  # the candidates' own folder there
        self._cores: int | None = None
        self.system: dict[str, Any] | None = None  # the device's system record, from its first bench
        self._shipped: tuple[Path, Shipment] | None = None  # the bundle the device's `current` holds now

    def cores(self) -> int:
        """Physical cores of the device (from its bench results once there is one)."""
        if self._cores is None:
            self._cores = _core_count(self.remote.run([self.remote.python, "-c", _CORES_PROBE],
                                                      f"reading {self.url.host}'s core count"), self.url.host)
        return self._cores

    def time(self, run: RunDir, candidate_dir: Path, entry: dict, threads: int | None,
             duration_s: float | None, final: bool) -> dict:
        """Batch-1 latency of the candidate on the device: {"p50_ms", "p90_ms", "p99_ms", "mean_ms",
        "iterations", "busy"} (+ "memory_mb")."""
        shipment = self._ship(self._bundle(run, Path(candidate_dir), entry))
        timing = ["--duration", f"{duration_s:g}"] if duration_s is not None else \
            ["--iterations", str(FINAL_ITERATIONS if final else SCREEN_ITERATIONS)]
        out = self.remote.run([self.access.remote_edgetl, "bench", shipment.current, "--json", "--device", self.device,
                               "--batch", "1", *timing, *(["--threads", str(threads)] if threads else []),
                               *remote_flags()], f"timing {entry.get('variant') or entry['runtime']} on {self.url.host}",
                              timeout=3600)
        doc = parse_result(out, self.url.host, f"{shipment.target}/{shipment.slot}")
        latency = checked_latency(doc, self.url.host, threads)
        self.system = doc["device"]
        cores = (doc["device"].get("cpu") or {}).get("physical_cores")
        if isinstance(cores, int) and 1 <= cores <= MAX_THREADS:
            self._cores = cores
        return latency

    def _ship(self, bundle: Path) -> Shipment:
        """Ships ``bundle`` unless the device's candidates folder holds it now: the search times a
        candidate at each thread count in a row, and shipping (with verify there) costs seconds."""
        if self._shipped is not None and self._shipped[0] == bundle:
            return self._shipped[1]
        shipment = ship(bundle, self.url, install=self.access.install, remote_edgetl=self.access.remote_edgetl,
                        ssh_options=self.access.ssh_options, connect_timeout=self.access.connect_timeout,
                        allow_rollback=True)  # the candidates' folder: any candidate may follow any other
        self.remote.require_edgetl(shipment.runtime_extra)
        self._shipped = (bundle, shipment)
        return shipment

    def _bundle(self, run: RunDir, candidate_dir: Path, entry: dict) -> Path:
        """The candidate's bundle, made once per candidate (its files do not depend on the threads)."""
        from edgetl.bundle.create import candidate_bundle

        dest = self.work_dir / f"{candidate_dir.name}.tar.gz"
        if dest.is_file():
            return dest
        # optimize/<target>/<id>/: the candidate's target is its folder's parent (the search's layout)
        entry = {**entry, "target": entry.get("target") or candidate_dir.parent.name, "slot": OPTIMIZED}
        dest.parent.mkdir(parents=True, exist_ok=True)
        return candidate_bundle(run, entry, dest, hashes=_hashes(run, candidate_dir, entry), name=self.name,
                                sign=self.access.sign)


def _hashes(run: RunDir, candidate_dir: Path, entry: dict) -> dict[str, str]:
    """The sha256 the candidate's files were built with (``candidate.json``), else their sha256 now."""
    from edgetl._io import sha256_file

    try:
        recorded = json.loads((candidate_dir / "candidate.json").read_text(encoding="utf-8")).get("files")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if isinstance(recorded, dict) and all(isinstance(v, str) for v in recorded.values()):
        return recorded
    return {rel: sha256_file(run.inside(rel)) for rel in entry["files"]}


def _core_count(out: str, host: str) -> int:
    text = out.strip()
    if not text.isdigit() or not 1 <= int(text) <= MAX_THREADS:
        raise RemoteError(f"{host} answered {shown(text[:40])} for its core count, not a number from 1 to "
                          f"{MAX_THREADS}: is edgetl installed there (--remote-edgetl)?")
    return int(text)


def checked_latency(doc: dict[str, Any], host: str, threads: int | None) -> dict[str, Any]:
    """The batch-1 row of a device's (already schema-checked) result, held to what a latency is; a
    ``RemoteError`` line for a device whose numbers cannot be true."""
    rows = [r for r in doc["latency"] if r["batch"] == 1]
    if not rows:
        raise RemoteError(f"{host} returned no batch-1 latency: refusing its timing")
    row = rows[0]
    p50, p90, p99, mean = (float(row[k]) for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms"))
    iterations = row.get("iterations")
    if not all(0 < v <= MAX_LATENCY_MS for v in (p50, p90, p99, mean)) or not p50 <= p90 <= p99:
        raise RemoteError(f"{host} returned latencies that cannot be measured ones (p50 {p50:g}, p90 {p90:g}, p99 "
                          f"{p99:g}, mean {mean:g} ms): refusing its timing")
    if type(iterations) is not int or iterations < 1:
        raise RemoteError(f"{host} returned {shown(iterations)} timed runs, not a positive count: refusing its timing")
    if threads and doc["settings"].get("threads") != threads:
        raise RemoteError(f"{host} timed at {shown(doc['settings'].get('threads'))} threads, not {threads}: "
                          "refusing its timing")
    out = {"p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "mean_ms": mean, "iterations": iterations,
           "busy": bool(row.get("busy") or (row.get("contention") or {}).get("busy"))}
    memory = (doc.get("memory") or {}).get("session_peak_mb")
    if isinstance(memory, (int, float)) and math.isfinite(memory) and 0 <= memory <= 1e7:
        out["memory_mb"] = round(float(memory), 2)
    return out
