"""The latency harness on real sessions: counts, warm-up rule, statistics, memory probe."""

from __future__ import annotations

import numpy as np
import pytest

from edgetl.bench.latency import (
    MIN_ITERATIONS,
    MIN_WARMUP_ITERATIONS,
    LatencyStats,
    MemoryProbe,
    first_inference,
    measure_latency,
    median_interval,
)
from edgetl.tensors import TensorSpec


class CountingSession:
    """A real (numpy) model that counts its calls: the harness is what is under test."""

    inputs = (TensorSpec("input", "float32", ("batch", 3, 8, 8)),)
    outputs = (TensorSpec("logits", "float32", ("batch", 4)),)

    def __init__(self):
        self.calls = 0
        self.batches = []
        self.closed = False
        self.w = np.random.default_rng(0).standard_normal((3 * 8 * 8, 4)).astype(np.float32)

    def run(self, feeds):
        batch = feeds["input"]
        self.calls += 1
        self.batches.append(batch.shape[0])
        return {"logits": batch.reshape(batch.shape[0], -1) @ self.w}

    def close(self):
        self.closed = True


def test_warmup_is_at_least_50_iterations_and_200_ms_then_exact_iterations():
    session = CountingSession()
    stats = measure_latency(session, {"input": np.zeros((2, 3, 8, 8), np.float32)}, iterations=37)
    assert stats.iterations == 37
    assert stats.warmup_iterations >= 50
    assert stats.warmup_ms >= 200
    assert session.calls == stats.warmup_iterations + 37
    assert set(session.batches) == {2}
    assert len(stats.samples_ms) == 37


def test_statistics_are_consistent_with_the_samples(ort_session, tiny_inputs):
    stats = measure_latency(ort_session, {"input": tiny_inputs[:4]}, warmup_iters=5, warmup_s=0, iterations=60)
    s = np.array(stats.samples_ms)
    assert stats.batch == 4
    assert stats.min_ms <= stats.p50_ms <= stats.p90_ms <= stats.p99_ms <= stats.max_ms
    assert stats.p50_ms == pytest.approx(np.percentile(s, 50), rel=1e-3, abs=1e-3)
    assert stats.mean_ms == pytest.approx(s.mean(), rel=1e-3, abs=1e-3)
    # Serial single stream: throughput is images over the summed time.
    assert stats.throughput_ips == pytest.approx(4 * 1000 / stats.mean_ms, rel=1e-6)


def test_duration_mode_times_at_least_the_minimum_iterations():
    session = CountingSession()
    seen = []
    stats = measure_latency(session, {"input": np.zeros((1, 3, 8, 8), np.float32)}, warmup_iters=1, warmup_s=0,
                            duration_s=0.05, progress=lambda done, total: seen.append((done, total)))
    assert stats.iterations >= MIN_ITERATIONS
    assert sum(stats.samples_ms) > 0
    assert seen[-1] == (0.05, 0.05)  # the bar ends full


def test_progress_ends_complete_and_samples_can_be_left_out():
    seen = []
    stats = measure_latency(CountingSession(), {"input": np.zeros((1, 3, 8, 8), np.float32)}, warmup_iters=1, warmup_s=0,
                            iterations=15, progress=lambda d, t: seen.append((d, t)), keep_samples=False)
    assert seen[-1] == (15, 15)
    d = stats.to_dict()
    assert "samples_ms" not in d and d["iterations"] == 15
    assert set(d) >= {"batch", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "min_ms", "max_ms", "throughput_ips"}


def test_from_samples_percentiles_are_numpy_linear():
    samples_ns = np.arange(1, 101, dtype=np.int64) * 1_000_000  # 1..100 ms
    stats = LatencyStats.from_samples(1, samples_ns, 50, 200_000_000)
    assert stats.p50_ms == pytest.approx(50.5)
    assert stats.p90_ms == pytest.approx(90.1)
    assert stats.p99_ms == pytest.approx(99.01)
    assert (stats.min_ms, stats.max_ms) == (1.0, 100.0)


def test_first_inference_times_load_and_first_run_and_closes_on_failed_check():
    session, times = first_inference(CountingSession, {"input": np.zeros((1, 3, 8, 8), np.float32)})
    assert session.calls == 1
    assert times["first_inference_ms"] == pytest.approx(times["load_ms"] + times["first_run_ms"])
    made = []

    def load():
        made.append(CountingSession())
        return made[-1]

    def reject(_):
        raise ValueError("wrong shape")

    with pytest.raises(ValueError):
        first_inference(load, {"input": np.zeros((1, 3, 8, 8), np.float32)}, check=reject)
    assert made[0].closed and made[0].calls == 0


def test_first_inference_fills_a_static_batch():
    class Static(CountingSession):
        inputs = (TensorSpec("input", "float32", (4, 3, 8, 8)),)

    session, _ = first_inference(Static, {"input": np.zeros((1, 3, 8, 8), np.float32)})
    assert session.batches == [4]


def test_memory_probe_sees_an_allocation_between_start_and_stop():
    probe = MemoryProbe()
    probe.start()
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, every page touched
    mem = probe.stop()
    del block
    assert mem["session_peak_mb"] >= 60
    assert mem["process_peak_mb"] >= mem["baseline_mb"] + 60
    assert mem["method"]


def test_max_s_ends_a_slow_run_early_but_never_below_the_minimum():
    class Slow(CountingSession):
        def run(self, feeds):
            import time

            time.sleep(0.002)
            return super().run(feeds)

    stats = measure_latency(Slow(), {"input": np.zeros((1, 3, 8, 8), np.float32)}, warmup_iters=1, warmup_s=0,
                            iterations=10_000, max_s=0.001)
    assert stats.iterations == MIN_ITERATIONS


class Sleepy(CountingSession):
    """Takes ``seconds()`` per call without using the CPU."""

    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds

    def run(self, feeds):
        import time

        time.sleep(self.seconds())
        return super().run(feeds)


def test_median_interval_uses_the_order_statistics_and_covers_the_median():
    assert median_interval(np.arange(1, 101)) == (41.0, 61.0)  # ranks 50 -+ 1.96 * 10 / 2
    rng = np.random.default_rng(0)
    true_median = np.log(2)  # of the unit exponential: skewed, like latencies
    covered = []
    for _ in range(400):
        lo, hi = median_interval(rng.exponential(size=51))
        covered.append(lo <= true_median <= hi)
    assert 0.92 <= np.mean(covered) <= 0.995  # a 95% interval, slightly conservative (discrete ranks)


def test_every_row_has_its_median_interval_and_the_rule_that_stopped_it():
    stats = measure_latency(CountingSession(), {"input": np.zeros((1, 3, 8, 8), np.float32)}, warmup_iters=1, warmup_s=0,
                            iterations=40)
    lo, hi = stats.p50_ci_ms
    assert lo <= stats.p50_ms <= hi and stats.stop == "iterations"
    assert stats.to_dict()["p50_ci_ms"] == [lo, hi]


def test_a_capped_run_goes_on_until_its_median_is_precise_enough():
    steady = measure_latency(Sleepy(lambda: 0.003), {"input": np.zeros((1, 3, 8, 8), np.float32)}, warmup_iters=1, warmup_s=0,
                             iterations=10_000, max_s=0.05, median_precision=1.0)
    assert steady.stop == "time cap, median within +-100%" and steady.iterations < 10_000
    rng = np.random.default_rng(0)
    noisy = measure_latency(Sleepy(lambda: rng.uniform(0.0005, 0.004)), {"input": np.zeros((1, 3, 8, 8), np.float32)},
                            warmup_iters=1, warmup_s=0, iterations=10_000, max_s=0.02, median_precision=0.0001)
    assert noisy.stop == "hard time cap, median not within +-0%" and noisy.iterations < 10_000


def test_warmup_max_s_caps_a_slow_warmup_but_keeps_a_minimum():
    stats = measure_latency(Sleepy(lambda: 0.002), {"input": np.zeros((1, 3, 8, 8), np.float32)}, warmup_iters=10_000,
                            warmup_s=0, warmup_max_s=0.001, iterations=3)
    assert stats.warmup_iterations == MIN_WARMUP_ITERATIONS


def test_other_processes_using_the_cpu_mark_the_row_busy():
    import os
    import subprocess
    import sys

    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
    try:
        stats = measure_latency(Sleepy(lambda: 0.01), {"input": np.zeros((1, 3, 8, 8), np.float32)}, warmup_iters=1,
                                warmup_s=0.3, iterations=30, threads=os.cpu_count())
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    assert stats.contention["busy"] is True and stats.busy
    assert stats.contention["method"]
    if "others_cores" in stats.contention:
        assert stats.contention["others_cores"] > 0.25
