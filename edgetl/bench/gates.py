"""Budgets as gates: a device profile's budgets turn each bench result into PASS or FAIL.

A gate that cannot be evaluated (the budget is on batch-1 latency but batch 1 was not measured)
FAILS with the reason: a CI job that asked for a gate must never pass because it was skipped.
A target without budgets (a bare runtime name) gets ``n/a``.
"""

from __future__ import annotations

from edgetl.config import Budgets
from edgetl.errors import ConfigError

PASS, FAIL, NA = "PASS", "FAIL", "n/a"

# Below these a budget is a unit mistake (seconds for milliseconds, GB for MB), not a goal: no image
# classifier answers in 10 µs through a Python call, and no runtime loads in 1 MB.
_MIN_P90_MS = 0.01
_MIN_MEMORY_MB = 1.0


def validate_budgets(budgets: Budgets, where: str) -> None:
    """Reject budgets that cannot mean what the user wants; ``where`` names the profile.

    The profile model already rejects negative, infinite and NaN values; these are the values it
    accepts that no one can mean."""
    drop, p90, mem = budgets.max_accuracy_drop_pp, budgets.p90_latency_ms, budgets.max_memory_mb
    if drop is not None and drop >= 100:
        raise ConfigError(
            f"{where}: max_accuracy_drop_pp = {drop} lets any accuracy pass (it is in percentage points, "
            "0-100): use e.g. 1.0, or remove it"
        )
    if p90 is not None and p90 < _MIN_P90_MS:
        raise ConfigError(
            f"{where}: p90_latency_ms = {p90} is below {_MIN_P90_MS} ms, which no model reaches; "
            f"the unit is milliseconds (did you mean {p90 * 1000:g}?)"
        )
    if mem is not None and mem < _MIN_MEMORY_MB:
        raise ConfigError(
            f"{where}: max_memory_mb = {mem} is below {_MIN_MEMORY_MB} MB; the unit is megabytes "
            f"(did you mean {mem * 1024:g}?)"
        )


def _check(name: str, budget: float, value: float | None, unit: str, missing: str) -> dict:
    if value is None:
        return {"name": name, "budget": budget, "value": None, "unit": unit, "status": FAIL,
                "reason": f"{name}: not measured ({missing})"}
    passed = value <= budget
    return {"name": name, "budget": budget, "value": value, "unit": unit, "status": PASS if passed else FAIL,
            "reason": f"{name} {value:.3g} {unit} {'<=' if passed else '>'} budget {budget:g} {unit}"}


def evaluate_gates(budgets: Budgets | None, result: dict) -> dict:
    """Gates for one bench result (the ``latency``/``accuracy``/``memory`` sections of its JSON)."""
    if budgets is None or all(v is None for v in budgets.model_dump().values()):
        return {"status": NA, "budgets": {}, "checks": [], "failed": []}
    checks = []
    if budgets.max_accuracy_drop_pp is not None:
        drop = (result.get("accuracy") or {}).get("drop_pp")
        checks.append(_check("accuracy_drop", budgets.max_accuracy_drop_pp, drop, "pp",
                             "no accuracy was evaluated"))
    if budgets.p90_latency_ms is not None:
        b1 = next((row for row in result.get("latency") or [] if row.get("batch") == 1), None)
        checks.append(_check("p90_latency", budgets.p90_latency_ms, b1 and b1["p90_ms"], "ms",
                             "the budget is on batch 1: add 1 to --batch"))
    if budgets.max_memory_mb is not None:
        mem = (result.get("memory") or {}).get("session_peak_mb")
        checks.append(_check("memory", budgets.max_memory_mb, mem, "MB", "memory could not be read here"))
    failed = [c["reason"] for c in checks if c["status"] == FAIL]
    return {
        "status": FAIL if failed else PASS,
        "budgets": budgets.model_dump(exclude_none=True),
        "checks": checks,
        "failed": failed,
    }
