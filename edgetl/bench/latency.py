"""The latency harness: one loop for every runtime and for the PyTorch reference.

numpy and the standard library only, so the same code measures a bundle on the device.

Method (the policy docs/architecture.md "Bench" states):

- fixed input: one real preprocessed batch of feeds (every tensor contiguous, in its own dtype),
  reused every iteration (as the vendors' tools do), so the loop times the runtime and not the data path;
- warm-up until *both* ``warmup_iters`` iterations and ``warmup_s`` seconds have passed: lazy
  kernel selection, allocator growth and CPU frequency ramp-up settle before timing starts;
- then ``iterations`` timed calls, or as many as fit in ``duration_s``; each call is timed alone
  with ``time.perf_counter_ns`` around the runtime call only (the feeds checked once before), and the garbage collector is paused
  (as ``timeit`` does) so a collection triggered by Python objects does not land in one sample;
- percentiles by linear interpolation (numpy's default, the same as OpenVINO's benchmark_app);
- the median's 95% confidence interval from order statistics (distribution-free: the ranks
  n/2 -+ 1.96 sqrt(n)/2 of the sorted samples), so a ratio of two medians can say how sure it is;
- a slow model (the PyTorch reference) may stop on a stated precision instead: ``max_s`` ends the
  run once that much time is spent *and* the median's interval is within ``median_precision`` of
  it (e.g. +-5%), or at twice ``max_s`` whatever the interval; ``warmup_max_s`` caps its warm-up
  the same way. ``stop`` in the result says which rule ended the run.

Contention (``Contention``): other processes that want the CPU while we time are the first suspect of
a wrong number. On Linux the harness reads the machine's busy CPU time from ``/proc/stat`` (all
CPUs, including steal time: another virtual machine on the host) before and after the timed loop
and subtracts the CPU time this process got (``getrusage``); what is left is the CPU the *others*
used, in cores. The run is ``busy`` when the others used more than the cores our threads left free
(plus a quarter core for the kernel's housekeeping). Without ``/proc/stat`` (macOS) the 1-minute
load average before and after the loop stands in, compared with the cores (it counts our own
threads too, and lags by a minute: a cruder signal, and ``method`` says so).

Peak memory (``MemoryProbe``): the runtime's allocations happen inside C++ libraries, so the only
honest number is the process's resident set. On Linux the high-water mark ``VmHWM`` is reset to the
current RSS by writing ``5`` to ``/proc/self/clear_refs`` just before the session is loaded, and read
after the last run; the session's peak is that high-water mark minus the RSS before loading.
Limits: the number is process-wide (any other allocation in the same window counts), freed memory
that the allocator keeps mapped is not returned, and runtimes keep global state (thread pools,
plugin caches) after a session closes. That is why the bench stage measures every artifact in a
fresh process (see ``edgetl.bench.measure``). Elsewhere (macOS, old kernels) ``ru_maxrss`` is used: it
cannot be reset, so the peak includes everything before the load, and ``method`` says so.
"""

from __future__ import annotations

import functools
import gc
import math
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgetl.backends.base import SessionBase
from edgetl.tensors import Feeds, batch_size, take

Progress = Callable[[float, float], None]  # (done, total): iterations, or seconds in duration mode

_PROGRESS_EVERY_NS = 100_000_000  # report at most 10 times a second: the callback is not free
MIN_ITERATIONS = 10  # in duration mode, so that p90/p99 exist even for a slow model
MIN_WARMUP_ITERATIONS = 5  # even a capped warm-up (warmup_max_s) runs this many
_BUSY_MARGIN_CORES = 0.25  # kernel threads and the parent's progress display use a little CPU
_PROC_STAT = Path("/proc/stat")


def median_interval(ms: np.ndarray, z: float = 1.959963984540054) -> tuple[float, float]:
    """Distribution-free 95% interval of the median: order statistics at ranks n/2 -+ z sqrt(n)/2."""
    x = np.sort(np.asarray(ms, dtype=np.float64))
    n = x.size
    if n == 0:
        return math.nan, math.nan
    half = z * math.sqrt(n) / 2
    lo, hi = max(int(math.floor(n / 2 - half)), 0), min(int(math.ceil(n / 2 + half)), n - 1)
    return float(x[lo]), float(x[hi])


def _median_within(samples_ns: list[int], precision: float) -> bool:
    lo, hi = median_interval(np.asarray(samples_ns, np.float64))
    median = float(np.median(samples_ns))
    return lo >= median * (1 - precision) and hi <= median * (1 + precision)


def _busy_cpu_seconds() -> tuple[float, int] | None:
    """(machine-wide busy CPU seconds, number of CPUs) from /proc/stat; None where it is missing."""
    try:
        lines = _PROC_STAT.read_text().splitlines()
    except OSError:
        return None
    fields = [int(v) for v in lines[0].split()[1:]]
    # user nice system idle iowait irq softirq steal: everything but idle and iowait is busy
    busy = sum(fields[:3]) + sum(fields[5:8])
    cpus = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
    return busy / os.sysconf("SC_CLK_TCK"), cpus


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Contention:
    """How much CPU other processes used between ``start()`` and ``stop()`` (see the module doc)."""

    def __init__(self, threads: int | None):
        self.threads = threads or 1

    def start(self) -> None:
        self.wall, self.own, self.machine = time.perf_counter(), _own_cpu_seconds(), _busy_cpu_seconds()
        self.load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None

    def stop(self) -> dict:
        wall = max(time.perf_counter() - self.wall, 1e-9)
        after = _busy_cpu_seconds()
        if self.machine is not None and after is not None:
            cpus = after[1]
            others = max(after[0] - self.machine[0] - (_own_cpu_seconds() - self.own), 0.0) / wall
            free = max(cpus - self.threads, 0)
            return {"method": "CPU time of other processes from /proc/stat (busy incl. steal) minus this "
                              "process's getrusage, over the timed loop",
                    "others_cores": round(others, 3), "cpus": cpus, "threads": self.threads,
                    "busy": others > free + _BUSY_MARGIN_CORES}
        if self.load is None:
            return {"method": "unavailable", "busy": None}
        load = max(self.load, os.getloadavg()[0])
        cpus = os.cpu_count() or 1
        return {"method": "1-minute load average before/after the timed loop vs CPUs (includes this process)",
                "load_average": round(load, 2), "cpus": cpus, "threads": self.threads, "busy": load > cpus}


@dataclass
class LatencyStats:
    """Latency of one batch size; times in milliseconds, throughput in images per second."""

    batch: int
    iterations: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    throughput_ips: float
    warmup_iterations: int
    warmup_ms: float
    p50_ci_ms: list[float] | None = None  # 95% interval of the median (order statistics)
    stop: str = "iterations"  # what ended the timed run: iterations, duration, precision, time cap
    contention: dict | None = None  # other processes' CPU use while timing; "busy" flags a noisy row
    samples_ms: list[float] | None = field(default=None, repr=False)

    @property
    def busy(self) -> bool:
        return bool((self.contention or {}).get("busy"))

    @classmethod
    def from_samples(cls, batch: int, samples_ns: np.ndarray, warmup_iterations: int, warmup_ns: int,
                     keep_samples: bool = True, stop: str = "iterations", contention: dict | None = None) -> LatencyStats:
        ms = samples_ns.astype(np.float64) / 1e6
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        return cls(
            batch=batch,
            iterations=int(ms.size),
            p50_ms=float(p50),
            p90_ms=float(p90),
            p99_ms=float(p99),
            mean_ms=float(ms.mean()),
            std_ms=float(ms.std(ddof=1)) if ms.size > 1 else 0.0,
            min_ms=float(ms.min()),
            max_ms=float(ms.max()),
            # Serial single-stream runs: images over the summed time of the timed calls.
            throughput_ips=float(batch * ms.size / (ms.sum() / 1e3)),
            warmup_iterations=warmup_iterations,
            warmup_ms=warmup_ns / 1e6,
            p50_ci_ms=list(median_interval(ms)),
            stop=stop,
            contention=contention,
            samples_ms=[round(float(v), 4) for v in ms] if keep_samples else None,
        )

    def to_dict(self, samples: bool = True) -> dict:
        d = asdict(self)
        if not samples or self.samples_ms is None:
            d.pop("samples_ms")
        return d


def _timed_call(session, feeds):
    """What is timed: the runtime's own call. The feeds are checked once here (``session.run``, the
    first warm-up call); a session built on ``SessionBase`` is then timed without its per-call feed
    check (a few µs that are edgetl's, not the runtime's); any other session through ``run``."""
    session.run(feeds)
    if isinstance(session, SessionBase):
        return functools.partial(session._run, feeds)
    return functools.partial(session.run, feeds)


def measure_latency(
    session,
    feeds: Feeds,
    *,
    warmup_iters: int = 50,
    warmup_s: float = 0.2,
    iterations: int = 200,
    duration_s: float | None = None,
    max_s: float | None = None,
    median_precision: float | None = None,
    warmup_max_s: float | None = None,
    threads: int | None = None,
    progress: Progress | None = None,
    keep_samples: bool = True,
) -> LatencyStats:
    """Time ``session.run(feeds)`` (one batch of every input): warm-up, then ``iterations`` calls or ``duration_s`` seconds.

    ``max_s`` stops an iteration-count run early once that many seconds are spent (for a slow
    baseline whose median is all that is needed); with ``median_precision`` only once the median's
    95% interval is also within that fraction of it (or at ``2 * max_s``). Whenever time ends a
    run, at least ``MIN_ITERATIONS`` calls are timed, so that the percentiles exist.
    ``warmup_max_s`` caps the warm-up (at least ``MIN_WARMUP_ITERATIONS`` calls). ``threads`` is
    what the session was opened with: the contention check needs it.
    """
    if iterations < 1 and duration_s is None:
        raise ValueError("iterations must be >= 1")
    clock = time.perf_counter_ns

    start = clock()
    run = _timed_call(session, feeds)  # the first warm-up call
    warm = 1
    warm_until = start + int(warmup_s * 1e9)
    warm_cap = start + int(warmup_max_s * 1e9) if warmup_max_s is not None else None
    while warm < warmup_iters or clock() < warm_until:
        if warm_cap is not None and warm >= MIN_WARMUP_ITERATIONS and clock() >= warm_cap:
            break
        run()
        warm += 1
    warm_ns = clock() - start

    samples: list[int] = []
    count = iterations if duration_s is None else None  # duration mode: time alone ends the run
    seconds = duration_s if duration_s is not None else max_s
    time_limit_ns = int(seconds * 1e9) if seconds is not None else None
    total = float(count) if count is not None else duration_s
    contention = Contention(threads)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    contention.start()
    try:
        begin = last_report = clock()
        while True:
            t0 = clock()
            run()
            t1 = clock()
            samples.append(t1 - t0)
            n = len(samples)
            if count is not None and n >= count:
                stop = "iterations"
                break
            if time_limit_ns is not None and t1 - begin >= time_limit_ns and n >= MIN_ITERATIONS:
                stop = _time_stop(samples, duration_s, median_precision, t1 - begin >= 2 * time_limit_ns)
                if stop is not None:
                    break
            if progress is not None and t1 - last_report >= _PROGRESS_EVERY_NS:
                progress(n if count is not None else (t1 - begin) / 1e9, total)
                last_report = clock()
        load = contention.stop()
    finally:
        if gc_was_enabled:
            gc.enable()
    if progress is not None:
        progress(total, total)
    return LatencyStats.from_samples(batch_size(feeds), np.asarray(samples, np.int64), warm, warm_ns, keep_samples,
                                     stop=stop, contention=load)


def _time_stop(samples: list[int], duration_s: float | None, precision: float | None, hard_cap: bool) -> str | None:
    """Why a run whose time is up stops now, or None to go on until its median is precise enough."""
    if duration_s is not None:
        return "duration"
    if precision is None:
        return "time cap"
    if _median_within(samples, precision):
        return f"time cap, median within +-{precision:.0%}"
    return f"hard time cap, median not within +-{precision:.0%}" if hard_cap else None


def static_batch(session) -> int | None:
    """The batch size of an artifact whose inputs have a fixed one, else None."""
    return next((s.shape[0] for s in session.inputs if s.shape and isinstance(s.shape[0], int)), None)


def first_inference(load: Callable[[], object], feeds: Feeds,
                    check: Callable[[object], None] | None = None) -> tuple[object, dict]:
    """Load a session and run it once on ``feeds``: what a user waits for before the first answer.

    Returns the open session and ``{"load_ms", "first_run_ms", "first_inference_ms"}``; load
    includes whatever the runtime compiles at load time (OpenVINO's plugin compile, ORT's graph
    optimisation, a TensorRT engine deserialisation). ``check(session)`` runs untimed in between
    (an input check that should fail with a clear message before the runtime's own).
    """
    t0 = time.perf_counter_ns()
    session = load()
    t1 = time.perf_counter_ns()
    if check is not None:
        try:
            check(session)
        except BaseException:
            session.close()
            raise
    static, n = static_batch(session), batch_size(feeds)
    if static and static != n:  # a static-batch artifact: fill its batch with the same samples
        feeds = take(feeds, np.arange(static) % n)
    t2 = time.perf_counter_ns()
    session.run(feeds)
    t3 = time.perf_counter_ns()
    load_ms, run_ms = (t1 - t0) / 1e6, (t3 - t2) / 1e6
    return session, {"load_ms": load_ms, "first_run_ms": run_ms, "first_inference_ms": load_ms + run_ms}


# -- memory ------------------------------------------------------------------------------------------
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(key: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _maxrss_kib() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS, KiB on Linux


class MemoryProbe:
    """Peak resident memory of what runs between ``start()`` and ``stop()`` (see the module doc)."""

    def start(self) -> None:
        self.resettable = False
        try:
            _CLEAR_REFS.write_text("5")  # Linux >= 4.0: VmHWM := VmRSS
            self.resettable = _status_kib("VmHWM") is not None
        except OSError:
            pass
        self.baseline_kib = _status_kib("VmRSS") or _maxrss_kib()

    def stop(self) -> dict:
        if self.resettable:
            peak = _status_kib("VmHWM") or 0
            method = "VmHWM reset via /proc/self/clear_refs before load, read after the last run"
        else:
            peak = _maxrss_kib()
            method = "ru_maxrss (cannot be reset: includes everything the process did before the load)"
        return {
            "method": method,
            "baseline_mb": self.baseline_kib / 1024,
            "process_peak_mb": peak / 1024,
            "session_peak_mb": max(peak - self.baseline_kib, 0) / 1024,
        }
