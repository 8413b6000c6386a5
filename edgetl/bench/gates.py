"""Budgets as gates: a device profile's budgets turn each bench result into PASS, FAIL or UNDECIDED.

A gate that cannot be evaluated (the budget is on batch-1 latency but batch 1 was not measured)
FAILS with the reason: a CI job that asked for a gate must never pass because it was skipped.
A target without budgets (a bare runtime name) gets ``n/a``.

The accuracy budget is decided on the drop's 95% interval (``edgetl.bench.accuracy``), because a
validation split of 60 images moves top-1 by 1.7 pp per image: PASS when the whole interval is
within the budget, FAIL when the whole interval is above it, UNDECIDED when it straddles the budget
(too few images to tell; the point estimate and the interval are in the reason). UNDECIDED does
not fail ``--check``, which prints it loudly instead: only a drop proven above the budget fails a
build, and nothing is called PASS that the data cannot support. A bundle benched on a device without
labelled images cannot measure the drop at all: that check is NOT_HERE ("not measured here"), shows
the workstation's measurement, and does not fail ``--check`` either.
"""

from __future__ import annotations

from edgetl.config import Budgets
from edgetl.errors import ConfigError

PASS, FAIL, NA = "PASS", "FAIL", "n/a"
UNDECIDED, NOT_HERE = "UNDECIDED", "not measured here"
_PRECEDENCE = (FAIL, UNDECIDED, NOT_HERE, PASS)  # the overall status is the first one any check has

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


def _interval(lo: float, hi: float) -> str:
    return f"95% CI {lo:+.2f}..{hi:+.2f}"


def _check_drop(budget: float, accuracy: dict | None, elsewhere: dict | None) -> dict:
    """The accuracy budget on the drop's interval (see the module doc)."""
    base = {"name": "accuracy_drop", "budget": budget, "unit": "pp"}
    if not accuracy or accuracy.get("drop_pp") is None:
        if elsewhere is None:
            return _check("accuracy_drop", budget, None, "pp", "no accuracy was evaluated")
        seen = elsewhere.get("drop_pp")
        where = (f"the workstation measured a drop of {seen:+.2f} pp on {elsewhere.get('n', '?')} images"
                 if seen is not None else "the workstation measured no drop")
        return {**base, "value": None, "status": NOT_HERE, "workstation": elsewhere,
                "reason": f"accuracy_drop: not measured here (no labelled images: pass --data FOLDER); {where}"}
    drop, n, ci = accuracy["drop_pp"], accuracy.get("n"), accuracy.get("drop_ci_pp")
    lo, hi = ci or (drop, drop)  # a result without an interval is decided on its point estimate
    if hi <= budget:
        status, verdict = PASS, f"<= budget {budget:g} pp"
    elif lo > budget:
        status, verdict = FAIL, f"> budget {budget:g} pp"
    else:
        status, verdict = UNDECIDED, (f"straddles budget {budget:g} pp: too few images to decide "
                                      "(use a larger validation split)")
    measured = f"accuracy_drop {drop:+.2f} pp" + (f" (n={n}: {_interval(lo, hi)})" if ci else "")
    return {**base, "value": drop, "interval": ci, "n": n, "status": status, "reason": f"{measured} {verdict}"}


def evaluate_gates(budgets: Budgets | None, result: dict, *, accuracy_elsewhere: dict | None = None) -> dict:
    """Gates for one bench result (the ``latency``/``accuracy``/``memory`` sections of its JSON).

    ``accuracy_elsewhere``: the workstation's accuracy of this artifact, for a device that has no
    labelled images; without it a missing accuracy FAILS the accuracy budget."""
    if budgets is None or all(v is None for v in budgets.model_dump().values()):
        return {"status": NA, "budgets": {}, "checks": [], "failed": [], "undecided": []}
    checks = []
    if budgets.max_accuracy_drop_pp is not None:
        checks.append(_check_drop(budgets.max_accuracy_drop_pp, result.get("accuracy"), accuracy_elsewhere))
    if budgets.p90_latency_ms is not None:
        b1 = next((row for row in result.get("latency") or [] if row.get("batch") == 1), None)
        checks.append(_check("p90_latency", budgets.p90_latency_ms, b1 and b1["p90_ms"], "ms",
                             "the budget is on batch 1: add 1 to --batch"))
    if budgets.max_memory_mb is not None:
        mem = (result.get("memory") or {}).get("session_peak_mb")
        checks.append(_check("memory", budgets.max_memory_mb, mem, "MB", "memory could not be read here"))
    statuses = {c["status"] for c in checks}
    return {
        "status": next(s for s in _PRECEDENCE if s in statuses),
        "budgets": budgets.model_dump(exclude_none=True),
        "checks": checks,
        "failed": [c["reason"] for c in checks if c["status"] == FAIL],
        "undecided": [c["reason"] for c in checks if c["status"] in (UNDECIDED, NOT_HERE)],
    }
