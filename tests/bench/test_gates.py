"""Budgets as gates, and budgets that make no sense."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from edgetl.bench.gates import (
    FAIL,
    NA,
    NOT_HERE,
    PASS,
    UNDECIDED,
    evaluate_gates,
    goal_text,
    validate_budgets,
)
from edgetl.config import Budgets
from edgetl.errors import ConfigError

RESULT = {
    "latency": [{"batch": 1, "p90_ms": 12.0}, {"batch": 8, "p90_ms": 60.0}],
    "accuracy": {"drop_pp": 0.8},
    "memory": {"session_peak_mb": 150.0},
}


def test_no_budgets_is_not_applicable():
    assert evaluate_gates(None, RESULT)["status"] == NA
    assert evaluate_gates(Budgets(), RESULT)["status"] == NA


def test_all_budgets_met_pass():
    gates = evaluate_gates(Budgets(max_accuracy_drop_pp=1, p90_latency_ms=15, max_memory_mb=200), RESULT)
    assert gates["status"] == PASS and gates["failed"] == []
    assert [c["status"] for c in gates["checks"]] == [PASS, PASS, PASS]
    assert gates["budgets"] == {"max_accuracy_drop_pp": 1, "p90_latency_ms": 15, "max_memory_mb": 200}


def test_each_failing_budget_is_named_with_value_and_budget():
    gates = evaluate_gates(Budgets(max_accuracy_drop_pp=0.5, p90_latency_ms=10, max_memory_mb=100), RESULT)
    assert gates["status"] == FAIL
    assert len(gates["failed"]) == 3
    assert "p90_latency 12 ms > budget 10 ms" in gates["failed"][1]
    assert "accuracy_drop +0.80 pp > budget 0.5 pp" in gates["failed"][0]


def test_latency_budget_is_on_batch_one_and_fails_when_it_was_not_measured():
    result = {**RESULT, "latency": [{"batch": 8, "p90_ms": 1.0}]}
    gates = evaluate_gates(Budgets(p90_latency_ms=100), result)
    assert gates["status"] == FAIL
    assert "not measured" in gates["failed"][0] and "--batch" in gates["failed"][0]


@pytest.mark.parametrize("budgets, message", [
    (Budgets(max_accuracy_drop_pp=100), "lets any accuracy pass"),
    (Budgets(p90_latency_ms=0.005), "did you mean 5"),
    (Budgets(max_memory_mb=0.5), "megabytes"),
])
def test_budgets_that_make_no_sense_are_config_errors(budgets, message):
    with pytest.raises(ConfigError, match=message) as exc:
        validate_budgets(budgets, "target profile 'pi'")
    assert str(exc.value).startswith("target profile 'pi'")


def test_sensible_budgets_validate():
    validate_budgets(Budgets(max_accuracy_drop_pp=1.0, p90_latency_ms=20, max_memory_mb=256), "x")


@pytest.mark.parametrize("value", [-1.0, float("inf"), float("nan")])
def test_negative_and_infinite_budgets_are_rejected_by_the_profile_model(value):
    with pytest.raises(ValidationError):
        Budgets(p90_latency_ms=value)


def _drop(point, lo, hi, n=60):
    return {"accuracy": {"drop_pp": point, "drop_ci_pp": [lo, hi], "n": n}}


@pytest.mark.parametrize("point, lo, hi, status", [
    (0.2, -0.9, 0.9, PASS),         # the whole interval is within the budget
    (1.7, -1.5, 4.9, UNDECIDED),    # one image of 60 over the budget: the interval straddles it
    (-0.5, -3.0, 2.0, UNDECIDED),   # even a gain does not prove the budget holds
    (6.0, 2.5, 10.0, FAIL),         # the whole interval is above the budget
])
def test_the_accuracy_budget_is_decided_on_the_drop_interval(point, lo, hi, status):
    gates = evaluate_gates(Budgets(max_accuracy_drop_pp=1.0), _drop(point, lo, hi))
    assert gates["status"] == status and gates["checks"][0]["interval"] == [lo, hi]
    reason = gates["checks"][0]["reason"]
    assert f"n=60: 95% CI {lo:+.2f}..{hi:+.2f}" in reason
    assert (gates["failed"] == [reason]) == (status == FAIL)
    assert (gates["undecided"] == [reason]) == (status == UNDECIDED)
    if status == UNDECIDED:
        assert "too few samples to decide" in reason


def test_undecided_never_hides_a_failing_budget():
    result = {**_drop(1.7, -1.5, 4.9), "memory": {"session_peak_mb": 500.0}}
    assert evaluate_gates(Budgets(max_accuracy_drop_pp=1.0, max_memory_mb=100), result)["status"] == FAIL


def test_no_labelled_images_on_a_device_is_not_measured_here_with_the_workstation_value():
    workstation = {"drop_pp": 0.4, "n": 360}
    result = {"accuracy": None, "latency": [{"batch": 1, "p90_ms": 5.0}]}
    gates = evaluate_gates(Budgets(max_accuracy_drop_pp=1.0, p90_latency_ms=10), result, accuracy_elsewhere=workstation)
    assert gates["status"] == NOT_HERE and gates["failed"] == []
    assert gates["checks"][0]["workstation"] == workstation
    assert "not measured here" in gates["undecided"][0] and "+0.40 pp on 360 images" in gates["undecided"][0]
    # without a workstation value to show, a missing accuracy still fails: a gate is never skipped silently
    assert evaluate_gates(Budgets(max_accuracy_drop_pp=1.0), result)["status"] == FAIL


def test_a_device_without_labelled_images_shows_every_task_heads_workstation_value():
    workstation = {"drop_pp": 0.4, "n": 360, "heads": {"parity": {"drop_pp": 2.5, "n": 360}}}
    result = {"accuracy": None, "latency": [{"batch": 1, "p90_ms": 5.0}]}
    gates = evaluate_gates(Budgets(max_accuracy_drop_pp=1.0), result, accuracy_elsewhere=workstation)
    head = next(c for c in gates["checks"] if c.get("head") == "parity")
    assert head["metric"] == "accuracy_drop_pp[parity]" and head["status"] == NOT_HERE
    assert head["workstation"] == workstation["heads"]["parity"] and "+2.50 pp on 360 images" in head["reason"]
    # measured on the device, a head is gated on its own numbers
    measured = {**result, "accuracy": {**_drop(0.2, -0.1, 0.5)["accuracy"], "heads": {"parity": _drop(3.0, 2.0, 4.0)["accuracy"]}}}
    checks = evaluate_gates(Budgets(max_accuracy_drop_pp=1.0), measured, accuracy_elsewhere=workstation)["checks"]
    assert next(c for c in checks if c.get("head") == "parity")["status"] == FAIL


# -- goals on any metric the task declares or the bench measures ------------------------------------
def _goals(**goals) -> Budgets:
    return Budgets.model_validate({"goals": goals})


def test_the_named_budgets_are_goals_on_metrics():
    budgets = Budgets(max_accuracy_drop_pp=1, p90_latency_ms=15, max_memory_mb=200)
    assert [(g.metric, g.bound, g.value) for g in budgets.as_goals()] == [
        ("accuracy_drop_pp", "max", 1), ("p90_latency_ms", "max", 15), ("memory_mb", "max", 200)]
    assert [goal_text(g) for g in budgets.as_goals()] == ["accuracy_drop <= 1 pp", "p90_latency <= 15 ms",
                                                         "memory <= 200 MB"]
    assert goal_text(_goals(top1={"min": 0.9}).as_goals()[0]) == "top1 >= 0.9"
    # the general form gives the same checks, with the same words
    general = _goals(accuracy_drop_pp={"max": 1}, p90_latency_ms={"max": 15}, memory_mb={"max": 200})
    same = [{k: c[k] for k in ("name", "status", "reason")} for c in evaluate_gates(general, RESULT)["checks"]]
    assert same == [{k: c[k] for k in ("name", "status", "reason")} for c in evaluate_gates(budgets, RESULT)["checks"]]


@pytest.mark.parametrize("ci, status, verdict", [
    ([0.91, 0.99], PASS, ">= budget 0.9"),
    ([0.70, 0.85], FAIL, "< budget 0.9"),
    ([0.85, 0.97], UNDECIDED, "straddles budget 0.9: too few samples to decide"),
])
def test_a_min_goal_on_top1_is_decided_on_its_interval(ci, status, verdict):
    gates = evaluate_gates(_goals(top1={"min": 0.9}), {"accuracy": {"top1": 0.93, "top1_ci": ci, "n": 60}})
    check = gates["checks"][0]
    assert gates["status"] == status and check["name"] == "top1" and check["goal"] == "min"
    assert check["reason"] == f"top1 0.93 (n=60: 95% CI {ci[0]:.3g}..{ci[1]:.3g}) {verdict}" + (
        " (use a larger validation split)" if status == UNDECIDED else "")
    assert gates["budgets"] == {"goals": {"top1": {"min": 0.9}}}


def test_a_goal_without_an_interval_is_decided_on_its_value_and_a_missing_one_fails():
    gates = evaluate_gates(_goals(agreement={"min": 0.99}), {"accuracy": {"agreement": 0.95}})
    assert gates["status"] == FAIL and gates["failed"] == ["agreement 0.95 < budget 0.99"]
    missing = evaluate_gates(_goals(top1={"min": 0.9}), {"accuracy": None})
    assert missing["status"] == FAIL and missing["failed"] == ["top1: not measured (no accuracy was evaluated)"]
    elsewhere = evaluate_gates(_goals(top1={"min": 0.9}), {"accuracy": None},
                               accuracy_elsewhere={"top1": 0.95, "n": 360})
    assert elsewhere["status"] == NOT_HERE and "the workstation measured a top1 of 0.95 on 360 images" in \
        elsewhere["undecided"][0]


@pytest.mark.parametrize("goals, message", [
    ({"top5": {"min": 0.9}}, "unknown metric 'top5'. Did you mean 'top1'? Valid: accuracy_drop_pp, agreement, "
                             "false_accept_rate, macro_f1, memory_mb, p90_latency_ms, top1"),
    ({"top1": {"max": 0.9}}, "top1 is better higher: give it a min (top1 = { min = VALUE })"),
    ({"p90_latency_ms": {"min": 5}}, "p90_latency_ms is better lower: give it a max"),
    ({"top1": {"min": 0.9, "max": 1.0}}, "give one bound"),
])
def test_a_goal_on_an_unknown_metric_or_the_wrong_side_is_a_config_error(goals, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        Budgets.model_validate({"goals": goals})


def test_the_same_goal_twice_is_refused():
    with pytest.raises(ValidationError, match="max_memory_mb and goals.memory_mb set the same goal: keep one"):
        Budgets.model_validate({"max_memory_mb": 100.0, "goals": {"memory_mb": {"max": 200.0}}})


@pytest.mark.parametrize("goals, message", [
    ({"top1": {"min": 90.0}}, "goals.top1 = 90.0 is outside 0-1: top1 is a fraction, not a percentage (did you mean 0.9?)"),
    ({"p90_latency_ms": {"max": 0.002}}, "goals.p90_latency_ms = 0.002 is below 0.01 ms"),
    ({"accuracy_drop_pp": {"max": 150.0}}, "goals.accuracy_drop_pp = 150.0 lets any accuracy pass"),
])
def test_goals_in_the_wrong_unit_are_config_errors(goals, message):
    with pytest.raises(ConfigError) as exc:
        validate_budgets(_goals(**goals), "target profile 'pi'")
    assert str(exc.value).startswith(f"target profile 'pi': {message}")
