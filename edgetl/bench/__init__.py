"""Benchmarking: latency harness, accuracy against FP32, budgets as gates, the system record.

The device-side pieces (``latency``, ``accuracy``, ``measure``, ``system``) need numpy only; the stage
that benches a run directory is ``edgetl.bench.run.bench`` (``edgetl.run_bench`` for notebooks).
Nothing is imported here, so ``import edgetl.bench.latency`` on a device stays light.
"""
