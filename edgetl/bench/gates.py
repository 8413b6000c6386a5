"""Budgets as gates: a device profile's budgets turn each bench result into PASS, FAIL or UNDECIDED.

A budget is a list of goals (``edgetl.config.Goal``): a metric the run's task declares or the bench
measures (``edgetl.tasks``), a bound (max or min) and a value. Each goal is one check, evaluated by
the same rules whatever its metric; where a metric sits in a result document is ``_READINGS``.

A gate that cannot be evaluated (the budget is on batch-1 latency but batch 1 was not measured)
FAILS with the reason: a CI job that asked for a gate must never pass because it was skipped.
A target without budgets (a bare runtime name) gets ``n/a``.

An accuracy goal (the drop, top-1, ...) is decided on its 95% interval (``edgetl.bench.accuracy``), because a
validation split of 60 images moves top-1 by 1.7 pp per image: PASS when the whole interval is
within the budget, FAIL when the whole interval is above it, UNDECIDED when it straddles the budget
(too few samples to tell; the point estimate and the interval are in the reason). UNDECIDED does
not fail ``--check``, which prints it loudly instead: only a drop proven above the budget fails a
build, and nothing is called PASS that the data cannot support. A bundle benched on a device without
labelled images cannot measure the drop at all: that check is NOT_HERE ("not measured here"), shows
the workstation's measurement, and does not fail ``--check`` either.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgetl.config import Budgets, Goal, metric_table, unknown_metric
from edgetl.errors import ConfigError
from edgetl.tasks import DEFAULT_TASK, Metric

PASS, FAIL, NA = "PASS", "FAIL", "n/a"
UNDECIDED, NOT_HERE = "UNDECIDED", "not measured here"
_PRECEDENCE = (FAIL, UNDECIDED, NOT_HERE, PASS)  # the overall status is the first one any check has

# Below these a budget is a unit mistake (seconds for milliseconds, GB for MB), not a goal: no image
# classifier answers in 10 µs through a Python call, and no runtime loads in 1 MB.
_MIN_P90_MS = 0.01
_MIN_MEMORY_MB = 1.0


@dataclass(frozen=True)
class _Reading:
    """Where a metric's value sits in a bench result document."""

    section: str  # "accuracy", "latency" or "memory"
    key: str
    interval: str | None  # the key of its 95% interval, when the section has one
    missing: str  # why it can be absent: said when a goal cannot be evaluated
    phrase: str = ""  # how the workstation's value is named ("a drop of +0.40 pp")


# The bench's own metrics and the one task metric stored under another name. Any other task metric
# is read from the result's ``accuracy`` section under its own name, with ``<name>_ci`` its interval.
_READINGS = {
    "accuracy_drop_pp": _Reading("accuracy", "drop_pp", "drop_ci_pp", "no accuracy was evaluated", "drop"),
    "p90_latency_ms": _Reading("latency", "p90_ms", None, "the budget is on batch 1: add 1 to --batch"),
    "memory_mb": _Reading("memory", "session_peak_mb", None, "memory could not be read here"),
}


def _reading(metric: str) -> _Reading:
    return _READINGS.get(metric) or _Reading("accuracy", metric, f"{metric}_ci", "no accuracy was evaluated")


def _check_name(metric: Metric) -> str:
    """The name a check is reported under: the metric's without its unit (``p90_latency_ms`` -> ``p90_latency``)."""
    suffix = f"_{metric.unit.lower()}"
    return metric.name.removesuffix(suffix) if metric.unit else metric.name


def _unit(metric: Metric) -> str:
    return f" {metric.unit}" if metric.unit else ""


def _fmt(value: float, metric: Metric) -> str:
    return f"{value:+.2f}" if metric.unit == "pp" else f"{value:.3g}"


def validate_budgets(budgets: Budgets, where: str, task: str = DEFAULT_TASK) -> None:
    """Reject budgets that cannot mean what the user wants; ``where`` names the profile, ``task`` is the
    run's (a goal on a metric it does not declare would never be measured).

    The profile model already rejects negative, infinite and NaN values and names no profile knows;
    these are the values it accepts that no one can mean."""
    metrics = metric_table(task)
    for goal in budgets.as_goals():
        if goal.metric not in metrics:
            raise ConfigError(f"{where}: {goal.key}: task {task!r} measures no such metric: "
                              f"{unknown_metric(goal.metric, list(metrics))}")
        problem = _nonsense(goal, metrics[goal.metric])
        if problem:
            raise ConfigError(f"{where}: {goal.key} = {goal.value} {problem}")


def _nonsense(goal: Goal, metric: Metric) -> str | None:
    """Why ``goal`` is a unit mistake rather than a goal, by the metric's unit; None when it is sensible."""
    value = goal.value
    if metric.unit == "pp" and value >= 100:
        return "lets any accuracy pass (it is in percentage points, 0-100): use e.g. 1.0, or remove it"
    if metric.unit == "ms" and value < _MIN_P90_MS:
        return (f"is below {_MIN_P90_MS} ms, which no model reaches; the unit is milliseconds "
                f"(did you mean {value * 1000:g}?)")
    if metric.unit == "MB" and value < _MIN_MEMORY_MB:
        return f"is below {_MIN_MEMORY_MB} MB; the unit is megabytes (did you mean {value * 1024:g}?)"
    if metric.unit == "" and not 0 <= value <= 1:
        hint = f" (did you mean {value / 100:g}?)" if 1 < value <= 100 else ""
        return f"is outside 0-1: {metric.name} is a fraction, not a percentage{hint}"
    return None


def goal_text(goal: Goal) -> str:
    """A goal as the gates word it: ``p90_latency <= 50 ms``, ``top1 >= 0.9``."""
    metric = metric_table()[goal.metric]
    return f"{_check_name(metric)} {'<=' if goal.bound == 'max' else '>='} {goal.value:g}{_unit(metric)}"


def _met(value: float, goal: Goal) -> bool:
    return value <= goal.value if goal.bound == "max" else value >= goal.value


def _verdict(passed: bool, goal: Goal, metric: Metric) -> str:
    sign = ("<=" if passed else ">") if goal.bound == "max" else (">=" if passed else "<")
    return f"{sign} budget {goal.value:g}{_unit(metric)}"


def _base(goal: Goal, metric: Metric) -> dict:
    return {"name": _check_name(metric), "metric": goal.metric, "goal": goal.bound, "budget": goal.value}


def _not_measured(goal: Goal, metric: Metric, reading: _Reading) -> dict:
    name = _check_name(metric)
    return {**_base(goal, metric), "value": None, "unit": metric.unit, "status": FAIL,
            "reason": f"{name}: not measured ({reading.missing})"}


def _check(goal: Goal, metric: Metric, value: float) -> dict:
    passed = _met(value, goal)
    return {**_base(goal, metric), "value": value, "unit": metric.unit, "status": PASS if passed else FAIL,
            "reason": f"{_check_name(metric)} {value:.3g}{_unit(metric)} {_verdict(passed, goal, metric)}"}


def _check_interval(goal: Goal, metric: Metric, value: float, ci: list | None, n: int | None) -> dict:
    """A goal decided on the value's 95% interval (see the module doc)."""
    lo, hi = ci or (value, value)  # a result without an interval is decided on its point estimate
    if _met(lo, goal) and _met(hi, goal):
        status, verdict = PASS, _verdict(True, goal, metric)
    elif not _met(lo, goal) and not _met(hi, goal):
        status, verdict = FAIL, _verdict(False, goal, metric)
    else:
        status, verdict = UNDECIDED, (f"straddles budget {goal.value:g}{_unit(metric)}: too few samples to decide "
                                      "(use a larger validation split)")
    measured = f"{_check_name(metric)} {_fmt(value, metric)}{_unit(metric)}"
    if ci:
        measured += f" (n={n}: 95% CI {_fmt(lo, metric)}..{_fmt(hi, metric)})"
    return {**_base(goal, metric), "unit": metric.unit, "value": value, "interval": ci, "n": n,
            "status": status, "reason": f"{measured} {verdict}"}


def _elsewhere(goal: Goal, metric: Metric, reading: _Reading, elsewhere: dict) -> dict:
    """An accuracy goal on a device without labelled images: the workstation's value, not a verdict."""
    seen, what = elsewhere.get(reading.key), reading.phrase or _check_name(metric)
    where = (f"the workstation measured a {what} of {_fmt(seen, metric)}{_unit(metric)} on {elsewhere.get('n', '?')} images"
             if seen is not None else f"the workstation measured no {what}")
    return {**_base(goal, metric), "unit": metric.unit, "value": None, "status": NOT_HERE, "workstation": elsewhere,
            "reason": f"{_check_name(metric)}: not measured here (no labelled images: pass --data FOLDER); {where}"}


def _goal_check(goal: Goal, metric: Metric, result: dict, elsewhere: dict | None) -> dict:
    reading = _reading(goal.metric)
    if reading.section == "accuracy":
        accuracy = result.get("accuracy") or {}
        if accuracy.get(reading.key) is None:
            if elsewhere is None:
                return _not_measured(goal, metric, reading)
            return _elsewhere(goal, metric, reading, elsewhere)
        return _check_interval(goal, metric, accuracy[reading.key], accuracy.get(reading.interval), accuracy.get("n"))
    if reading.section == "latency":
        row = next((r for r in result.get("latency") or [] if r.get("batch") == 1), None)
        value = row and row.get(reading.key)
    else:
        value = (result.get(reading.section) or {}).get(reading.key)
    return _not_measured(goal, metric, reading) if value is None else _check(goal, metric, value)


def evaluate_gates(budgets: Budgets | None, result: dict, *, accuracy_elsewhere: dict | None = None) -> dict:
    """Gates for one bench result (the ``latency``/``accuracy``/``memory`` sections of its JSON): one
    check per goal of ``budgets``, in ``Budgets.as_goals`` order.

    ``accuracy_elsewhere``: the workstation's accuracy of this artifact, for a device that has no
    labelled images; without it a missing accuracy FAILS the accuracy goals."""
    goals = budgets.as_goals() if budgets is not None else []
    if not goals:
        return {"status": NA, "budgets": {}, "checks": [], "failed": [], "undecided": []}
    metrics = metric_table()
    checks = [_goal_check(goal, metrics[goal.metric], result, accuracy_elsewhere) for goal in goals]
    checks += _head_checks(goals, metrics, result, accuracy_elsewhere)
    statuses = {c["status"] for c in checks}
    return {
        "status": next(s for s in _PRECEDENCE if s in statuses),
        "budgets": budgets.model_dump(),
        "checks": checks,
        "failed": [c["reason"] for c in checks if c["status"] == FAIL],
        "undecided": [c["reason"] for c in checks if c["status"] in (UNDECIDED, NOT_HERE)],
    }


def _head_checks(goals, metrics, result: dict, accuracy_elsewhere: dict | None) -> list[dict]:
    """The accuracy goals applied to every extra task head (``accuracy["heads"]``, ``--task-head``
    runs): a check per head and goal, the head's name in its metric (``accuracy_drop_pp[colour]``).
    A device without labelled images gates each head on the workstation's accuracy of it, as it
    does the primary head."""
    here = (result.get("accuracy") or {}).get("heads") or {}
    elsewhere = (accuracy_elsewhere or {}).get("heads") or {}
    checks = []
    for name in here or elsewhere:
        for goal in goals:
            if _reading(goal.metric).section != "accuracy":
                continue
            check = _goal_check(goal, metrics[goal.metric], {"accuracy": here.get(name)}, elsewhere.get(name))
            check.update(metric=f"{goal.metric}[{name}]", head=name, reason=f"head {name}: {check['reason']}")
            checks.append(check)
    return checks


def estimates_missing(budgets: Budgets | None, estimate: dict | None) -> list[str]:
    """The accuracy goals that the compile stage's point estimate (an artifact that cannot run here,
    checked on a stand-in) already misses, e.g. "estimated drop +28.33 pp is over its 1 pp budget"."""
    metrics, out = metric_table(), []
    for goal in budgets.as_goals() if budgets is not None else []:
        reading, metric = _reading(goal.metric), metrics[goal.metric]
        value = (estimate or {}).get(reading.key) if reading.section == "accuracy" else None
        if value is not None and not _met(value, goal):
            side = "over" if goal.bound == "max" else "under"
            out.append(f"estimated {reading.phrase or _check_name(metric)} {_fmt(value, metric)}{_unit(metric)} "
                       f"is {side} its {goal.value:g}{_unit(metric)} budget")
    return out
